"""moto's S3 API server, as `moto_server -H HOST -p PORT` starts it, with one difference: a
conditional PUT (`If-None-Match: *`) is atomic, as on S3. moto checks that the key is absent and then
writes it, unlocked, on a threaded server, so two racing creates could both succeed; the lease's
create-if-absent (tests/recovery/test_lease.py) needs the guarantee S3 gives.

    python tests/s3_server.py HOST PORT
"""

from __future__ import annotations

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def conditional_writes_one_at_a_time(app):
    lock = threading.Lock()

    def guarded(environ, start_response):
        if environ.get("REQUEST_METHOD") == "PUT" and environ.get("HTTP_IF_NONE_MATCH"):
            with lock:  # the check and the write, then the whole answer, before the next one
                return list(app(environ, start_response))
        return app(environ, start_response)

    return guarded


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host, port, conditional_writes_one_at_a_time(app), threaded=True, request_handler=MotoRequestHandler
    )
