"""Waiting for processes to end, where a zombie counts as ended. A killed process whose parent died
first (a raylet's workers, a SIGKILLed driver's Ray daemons) goes to the init process, which reaps it
when it will; a container's may not for many seconds. psutil's own wait would run to its timeout on
such a zombie. psutil only: the chaos market and the tests' kill helpers use it without importing Ray."""

from __future__ import annotations

import time

import psutil


def still_running(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for `procs` to end; those still running then (zombies count as ended)."""
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        _, procs = psutil.wait_procs(procs, timeout=0.05)
        procs = [p for p in procs if not _ended(p)]
    return procs


def _ended(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True
