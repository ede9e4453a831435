"""A cloud metadata server on 127.0.0.1 that answers like AWS, GCP and Azure before and after a
spot reclaim notice. `spotrun chaos` and the tests point `preemption.endpoint` at it.

    server = MetadataServer().start()        # http://127.0.0.1:<port>
    server.reclaim()                         # from now on every cloud's endpoint reports a notice
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _State:
    def __init__(self):
        self.notice_ts: float | None = None
        self.tokens: set[str] = set()


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args):  # quiet: the tests read events, not access logs
        pass

    def _send(self, status: int, body: str = "", ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):  # AWS IMDSv2 session token
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._send(400, "missing X-aws-ec2-metadata-token-ttl-seconds")
        token = secrets.token_urlsafe(16)
        self.state.tokens.add(token)
        self._send(200, token)

    def do_GET(self):
        notice = self.state.notice_ts
        if self.path == "/latest/meta-data/spot/instance-action":
            if self.headers.get("X-aws-ec2-metadata-token") not in self.state.tokens:
                return self._send(401, "IMDSv2 token required")
            if notice is None:
                return self._send(404, "Not Found")
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice + 120))
            return self._send(200, json.dumps({"action": "terminate", "time": when}), "application/json")
        if self.path == "/computeMetadata/v1/instance/preempted":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header")
            return self._send(200, "TRUE" if notice is not None else "FALSE")
        if self.path.startswith("/metadata/scheduledevents"):
            if self.headers.get("Metadata") != "true":
                return self._send(400, json.dumps({"error": "Bad request. Required metadata header"}))
            events = [] if notice is None else [_azure_preempt(notice)]
            doc = {"DocumentIncarnation": 1 + (notice is not None), "Events": events}
            return self._send(200, json.dumps(doc), "application/json")
        self._send(404, "Not Found")


def _azure_preempt(notice_ts: float) -> dict:
    return {
        "EventId": "602d9444-d2cd-49c7-8624-8643e7171297",
        "EventStatus": "Scheduled",
        "EventType": "Preempt",
        "ResourceType": "VirtualMachine",
        "Resources": ["spotrun-vm"],
        "NotBefore": formatdate(notice_ts + 30, usegmt=True),
        "Description": "Spot eviction",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


class MetadataServer:
    """Serves the three providers' notice endpoints at once, on 127.0.0.1."""

    def __init__(self, port: int = 0):
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> MetadataServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def reclaim(self) -> None:
        """Post a reclaim notice (every provider's endpoint reports it from now on)."""
        self.state.notice_ts = time.time()

    def clear(self) -> None:
        """A new VM: no notice."""
        self.state.notice_ts = None

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
