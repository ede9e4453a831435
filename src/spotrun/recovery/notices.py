"""Preemption notices: a source (SIGTERM, or a cloud's metadata endpoint: AWS, GCP, Azure) sets a
flag on a named Ray actor, the NoticeBoard; rank 0 of the training loop polls it without blocking each step,
and every rank agrees on the step to stop at through one tiny all-reduce.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import ray

NAMESPACE = "spotrun"
log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class NoticeBoard:
    """Holds the first preemption notice of a run: where it came from and when."""

    def __init__(self):
        self.notice: dict | None = None

    def post(self, source: str, deadline_s: float, reason: str | None = None) -> bool:
        if self.notice is None:
            self.notice = {"source": source, "ts": time.time(), "deadline_s": deadline_s, "reason": reason}
        return True

    def get(self) -> dict | None:
        return self.notice


def board_name(run_name: str) -> str:
    return f"notices-{run_name}"


def create_board(run_name: str):
    """The run's board, on the driver's own node: a worker node that is lost must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return NoticeBoard.options(
        name=board_name(run_name), namespace=NAMESPACE, lifetime=None, scheduling_strategy=here
    ).remote()


class BoardPoller:
    """Polls the board from the training loop: never blocks, at most one request in flight, and
    at most one request per `interval_s` (a notice gives tens of seconds; a step costs far less)."""

    def __init__(self, run_name: str, interval_s: float = 1.0):
        self._board = ray.get_actor(board_name(run_name), namespace=NAMESPACE)
        self._pending = self._board.get.remote()
        self._interval_s, self._next = interval_s, 0.0
        self.notice: dict | None = None

    def check_now(self) -> dict | None:
        """One blocking look at the board (at start-up, before the first step)."""
        if self.notice is None:
            self.notice = ray.get(self._board.get.remote(), timeout=10)
        return self.notice

    def poll(self) -> dict | None:
        now = time.monotonic()
        if self.notice is None and now >= self._next:
            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                self.notice = ray.get(ready[0])
                if self.notice is None:
                    self._pending, self._next = self._board.get.remote(), now + self._interval_s
        return self.notice


def install_sigterm(
    board, grace_s: float, on_notice: Callable[[], None], on_deadline: Callable[[], None]
) -> None:
    """On SIGTERM: post the notice, call `on_notice`, and if the job has not exited within `grace_s`,
    call `on_deadline` (which should exit with the preempted code). Replaces Ray's own handler,
    which exits at once and saves nothing."""

    def handler(signum, frame):
        if getattr(handler, "fired", False):
            return
        handler.fired = True
        board.post.remote("sigterm", grace_s)
        on_notice()
        timer = threading.Timer(grace_s, on_deadline)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)


# ----- cloud metadata notices -----
# Each source answers one question, "has this VM been told it will be reclaimed?", the way its
# provider documents it. SkyPilot 0.14 does not watch these on VM clouds; without them a job only
# learns of a reclaim when it is killed.

DEFAULT_ENDPOINTS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
DEFAULT_POLL_S = {"aws": 5.0, "gcp": 1.0, "azure": 1.0}  # AWS asks for ~5 s; the others are cheap


def _http(method: str, url: str, headers: dict, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class AwsNotice:
    """EC2 spot `instance-action` through IMDSv2 (a session token first). 404 until a notice."""

    name = "aws"

    def __init__(self, endpoint: str):
        self.base, self._token = endpoint.rstrip("/"), None

    def check(self) -> str | None:
        if self._token is None:
            ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
            status, body = _http("PUT", f"{self.base}/latest/api/token", ttl)
            if status != 200:
                raise OSError(f"IMDSv2 token: HTTP {status}")
            self._token = body.decode()
        url = f"{self.base}/latest/meta-data/spot/instance-action"
        status, body = _http("GET", url, {"X-aws-ec2-metadata-token": self._token})
        if status == 401:  # token expired: fetch a new one next time
            self._token = None
        if status == 200 and json.loads(body).get("action") in ("terminate", "stop", "hibernate"):
            return body.decode()
        return None


class GcpNotice:
    """GCE `instance/preempted`: "TRUE" once the Spot VM is being preempted (30 s notice)."""

    name = "gcp"

    def __init__(self, endpoint: str):
        self.url = endpoint.rstrip("/") + "/computeMetadata/v1/instance/preempted"

    def check(self) -> str | None:
        status, body = _http("GET", self.url, {"Metadata-Flavor": "Google"})
        return "preempted=TRUE" if status == 200 and body.strip().upper() == b"TRUE" else None


class AzureNotice:
    """Azure Scheduled Events: a `Preempt` event (>= 30 s before eviction)."""

    name = "azure"

    def __init__(self, endpoint: str):
        self.url = endpoint.rstrip("/") + "/metadata/scheduledevents?api-version=2020-07-01"

    def check(self) -> str | None:
        status, body = _http("GET", self.url, {"Metadata": "true"})
        if status != 200:
            return None
        events = [e for e in json.loads(body).get("Events", []) if e.get("EventType") == "Preempt"]
        return json.dumps(events[0]) if events else None


SOURCES = {"aws": AwsNotice, "gcp": GcpNotice, "azure": AzureNotice}


def metadata_source(preemption, cloud_name: str):
    """The metadata notice source the config asks for (`auto`: the cloud's own), or None."""
    kind = cloud_name if preemption.source == "auto" else preemption.source
    if kind not in SOURCES:
        return None
    return SOURCES[kind](preemption.endpoint or DEFAULT_ENDPOINTS[kind])


def watch_metadata(source, board, notice_s: float, poll_s: float, stop: threading.Event) -> threading.Thread:
    """Poll `source` in a daemon thread; post the first notice to the board. Errors (no metadata
    server, a timeout) are logged once and polling goes on: a missed poll must not end the job."""

    def loop():
        warned = False
        while not stop.is_set():
            try:
                detail = source.check()
            except (OSError, ValueError) as e:
                detail = None
                if not warned:
                    log.warning(
                        "preemption notices: %s metadata unreachable (%s); still polling", source.name, e
                    )
                    warned = True
            if detail:
                log.warning("preemption notice from %s metadata: %s", source.name, detail[:200])
                ray.get(board.post.remote(source.name, notice_s))
                return
            stop.wait(poll_s)

    thread = threading.Thread(target=loop, name=f"notice-{source.name}", daemon=True)
    thread.start()
    return thread
