"""Preemption notices: a source (SIGTERM today; cloud metadata endpoints later) sets a flag on a
named Ray actor, the NoticeBoard; rank 0 of the training loop polls it without blocking each step,
and every rank agrees on the step to stop at through one tiny all-reduce.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import ray

NAMESPACE = "spotrun"


@ray.remote(num_cpus=0)
class NoticeBoard:
    """Holds the first preemption notice of a run: where it came from and when."""

    def __init__(self):
        self.notice: dict | None = None

    def post(self, source: str, deadline_s: float) -> bool:
        if self.notice is None:
            self.notice = {"source": source, "ts": time.time(), "deadline_s": deadline_s}
        return True

    def get(self) -> dict | None:
        return self.notice


def board_name(run_name: str) -> str:
    return f"notices-{run_name}"


def create_board(run_name: str):
    return NoticeBoard.options(name=board_name(run_name), namespace=NAMESPACE, lifetime=None).remote()


class BoardPoller:
    """Polls the board from the training loop: never blocks, at most one request in flight, and
    at most one request per `interval_s` (a notice gives tens of seconds; a step costs far less)."""

    def __init__(self, run_name: str, interval_s: float = 1.0):
        self._board = ray.get_actor(board_name(run_name), namespace=NAMESPACE)
        self._pending = self._board.get.remote()
        self._interval_s, self._next = interval_s, 0.0
        self.notice: dict | None = None

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
