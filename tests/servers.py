"""Real bucket API servers on 127.0.0.1 for the tests: moto's S3 server (tests/s3_server.py) and
gcp-storage-emulator (tests/gcs_server.py).

The tests start and stop them by pid, so `make test` needs nothing running beforehand.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SECRET = "spotrun-test-secret-DO-NOT-LOG-7f3a"  # must never appear in anything spotrun writes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(
    port: int, timeout: float = 20, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Until something listens on `port`; fails at once, with the end of its log, if `proc` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server on port {port} exited ({proc.returncode}) at start:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


class BucketServer:
    """One emulator process; `stop()` and `start()` again model an outage (GCS keeps its data on disk)."""

    def __init__(self, kind: str, workdir: Path):
        self.kind, self.workdir, self.port = kind, workdir, free_port()
        self.proc: subprocess.Popen | None = None
        self.bucket = "spotrun-test"
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> BucketServer:
        if self.kind == "s3":
            cmd = [sys.executable, str(Path(__file__).with_name("s3_server.py")), "127.0.0.1", str(self.port)]
        else:
            cmd = [
                sys.executable,
                str(Path(__file__).with_name("gcs_server.py")),
                "start",
                "-H",
                "127.0.0.1",
                "--port",
                str(self.port),
                "-q",
            ]
        env = {**os.environ, "STORAGE_BASE": str(self.workdir)}
        log = self.workdir / f"{self.kind}-server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)
        wait_port(self.port, proc=self.proc, log=log)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def create_bucket(self) -> None:
        if self.kind == "s3":
            req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        else:
            body = json.dumps({"name": self.bucket}).encode()
            req = urllib.request.Request(
                f"{self.endpoint}/storage/v1/b?project=test",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
        urllib.request.urlopen(req, timeout=10).read()

    @property
    def root(self) -> str:
        return f"{self.kind}://{self.bucket}/runs"

    def env(self) -> dict[str, str]:
        if self.kind == "s3":
            return {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        return {"STORAGE_EMULATOR_HOST": self.endpoint}
