"""SIGTERM as a spot VM's shutdown delivers it: to every process of the job at once.

A provider reclaims a VM by shutting it down, and the OS then sends SIGTERM to every process, not only
the job's driver: Ray's daemons (GCS, raylet) and every Train worker get it too. Ray's daemons exit on it
and take the workers with them, so the checkpoint the notice asks for would never be written.

The shield: the driver blocks SIGTERM first thing (`arm`), before any thread or child exists, so every
thread and every process it starts -- Ray's daemons, and every worker the raylet starts later --
inherits a blocked SIGTERM. A blocked signal stays pending: the daemons keep running until the VM
powers off (or SIGKILL), and a worker sees the notice by asking `sigterm_pending()` once a step. In
the driver one thread waits for it (`sigwait`) and sets NOTICE: no handler of Ray's (`ray.init` sets
one that exits, its core worker one that aborts) ever sees it, whichever thread it would reach.

While the job is still starting there is nothing to commit, and start-up can take long on a busy VM
(imports, config, input checks, Ray's start): a SIGTERM then ends the process at once, exit 75. Until
the contract takes the run's lease, nothing of the attempt exists and nothing is written; from the
lease until the work starts, the contract records the notice first (`NOTICE.while_starting`).

`python -m spotrun.recovery.shield CMD ...` runs CMD with SIGTERM blocked: the SkyPilot run script
starts `ray start` through it on every node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

_TERM = {signal.SIGTERM}


class Notice:
    """The driver's record of a SIGTERM: when it came, and who to tell."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ts: float | None = None
        self._listeners: list[Callable[[float], None]] = []
        self._lock = threading.Lock()
        self.armed = False
        # armed and still starting: what a notice does instead of being recorded (it ends the process)
        self._starting: Callable[[float], None] | None = _exit_before_the_job

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        with self._lock:
            if self.event.is_set():
                return
            if self.armed and self._starting is not None:
                self._starting(time.time())  # holding the lock: the work cannot start meanwhile
            self.ts = time.time()
            self.event.set()
            listeners = list(self._listeners)
        for fn in listeners:
            fn(self.ts)

    def while_starting(self, exit_now: Callable[[float], None] | None) -> None:
        """What a notice does from now until the next call: `exit_now(notice_ts)` ends the process
        (nothing to commit yet); None, once the work has started: the notice is recorded and the
        listeners are told. Blocks while an exit is under way."""
        with self._lock:
            self._starting = exit_now

    def on_notice(self, fn: Callable[[float], None]) -> None:
        """Call `fn(notice_ts)` at the notice, or now if it already came."""
        with self._lock:
            self._listeners.append(fn)
            ts = self.ts if self.event.is_set() else None
        if ts is not None:
            fn(ts)


EXIT_PREEMPTED = 75  # spotrun.core.errors.EXIT_PREEMPTED (this module imports nothing of spotrun's)


def _exit_before_the_job(notice_ts: float) -> None:
    sys.stdout.write(
        f"spotrun: preempted during start-up, before the job started; nothing new; exit {EXIT_PREEMPTED}\n"
    )
    sys.stdout.flush()
    os._exit(EXIT_PREEMPTED)


NOTICE = Notice()  # one per driver process: SIGTERM reaches a process, not a job


def _wait_for_sigterm() -> None:
    signal.sigwait(_TERM)
    NOTICE.set()  # the listeners may write events: in this thread, never in a signal handler


def arm() -> Notice:
    """Take SIGTERM as the notice for this process and everything it starts. Call first, before any
    thread exists: a thread started earlier does not inherit the block and could still die of it."""
    with NOTICE._lock:
        if NOTICE.armed:
            return NOTICE
        NOTICE.armed = True
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERM)
    threading.Thread(target=_wait_for_sigterm, name="spotrun-sigterm", daemon=True).start()
    return NOTICE


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Block SIGTERM in this thread while it starts child processes (they inherit the mask); a
    SIGTERM that arrives meanwhile is delivered when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TERM)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def sigterm_pending() -> bool:
    """In a shielded process (a Ray worker): has this process or its VM been told to shut down?"""
    return signal.SIGTERM in signal.sigpending()


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m spotrun.recovery.shield CMD [ARG ...]")
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERM)
    os.execvp(argv[0], argv)  # the mask survives exec: CMD and all it starts are shielded


if __name__ == "__main__":
    main(sys.argv[1:])
