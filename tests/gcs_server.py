"""gcp-storage-emulator, as `gcp-storage-emulator start -H HOST --port PORT -q` starts it, with one
difference: each file it writes (an object, or `.meta`, its index of every bucket and object) is
replaced atomically, as GCS's own state never tears. The emulator rewrites `.meta` in place; the
outage tests SIGKILL it mid-upload, and a kill inside that write left half a JSON file that the
restarted emulator could not read: it exited at start and the bucket never came back (a CI run).

    python tests/gcs_server.py start -H HOST --port PORT -q
"""

from __future__ import annotations

import os
import sys
import tempfile

from gcp_storage_emulator import storage
from gcp_storage_emulator.__main__ import main

_write_in_place = storage._FileStore.write_bytes


def write_whole_or_not_at_all(self, rel: str, content: bytes) -> None:
    if self._use_memory:
        return _write_in_place(self, rel, content)
    path = self._disk_path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


storage._FileStore.write_bytes = write_whole_or_not_at_all

if __name__ == "__main__":
    main(sys.argv[1:])
