"""Fencing stale attempts: one lease per attempt, the newest epoch owns the run.

A managed-job controller can give up on an attempt that is in fact still running and launch
another; both would write the same run. At launch each attempt creates `<run>/lease/<epoch:08d>`
with the store's create-if-absent (Storage.create_exclusive), one epoch above every earlier one, so
no two attempts ever hold the same epoch. Every writer of the run (checkpoint commit and prune,
events, final/) calls the lease first (`Storage.fenced(lease)`): once a newer epoch exists it raises
`Superseded`, the attempt writes nothing more and exits EXIT_SUPERSEDED (76).

A check is one listing of the small lease/ prefix. Writers call it with fresh=False and get an
answer at most `max_age_s` old (the events path); commits ask with fresh=True right before the
manifest, so a stale attempt never commits after the newer lease was visible.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from spotrun.core.errors import EXIT_SUPERSEDED
from spotrun.core.storage import Storage

LEASE_DIR = "lease"
JOB_KEY = "lease_epoch"  # the key of the epoch in the job dict a driver hands to its workers
MAX_AGE_S = 5.0  # events are fenced with an answer at most this old: one LIST per 5 s, not per line
TRIES = 50  # attempts launched at the same moment each take the next free epoch


class Superseded(Exception):  # noqa: N818 - the state, not an error: exit 76 is the expected end
    """A newer attempt holds the run's lease: stop, write nothing more, exit 76."""

    exit_code = EXIT_SUPERSEDED

    def __init__(self, run_name: str, epoch: int, newer: int):
        super().__init__(f"run {run_name!r}: attempt {epoch} superseded by attempt {newer}")
        self.run_name, self.epoch, self.newer = run_name, epoch, newer


def epochs(storage: Storage, run_name: str) -> list[int]:
    """Every epoch ever taken for the run, oldest first (one listing)."""
    names = storage.list_files(storage.path(run_name, LEASE_DIR))
    return sorted(int(n) for n in names if n.isdigit())


def read_leases(storage: Storage, run_name: str) -> list[dict]:
    """Every lease record of the run (epoch, holder, ts), oldest first: for the report."""
    out = []
    for e in epochs(storage, run_name):
        try:
            out.append(json.loads(storage.read_bytes(_path(storage, run_name, e))))
        except (OSError, ValueError):
            out.append({"epoch": e})
    return out


def _path(storage: Storage, run_name: str, epoch: int) -> str:
    return storage.path(run_name, LEASE_DIR, f"{epoch:08d}")


class Lease:
    """This attempt's epoch and its checks; a Storage fence (`storage.fenced(lease)`)."""

    def __init__(self, storage: Storage, run_name: str, epoch: int, max_age_s: float = MAX_AGE_S):
        self.storage, self.run_name, self.epoch, self.max_age_s = storage, run_name, epoch, max_age_s
        self.newer: int | None = None  # sticky: once superseded, always superseded
        self._checked = float("-inf")

    @classmethod
    def acquire(cls, storage: Storage, run_name: str, holder: str) -> Lease:
        """Take the next epoch: list, create max+1 exclusively, on a lost race list again."""
        for _ in range(TRIES):
            epoch = max(epochs(storage, run_name), default=0) + 1
            record = {
                "epoch": epoch,
                "holder": holder,
                "ts": round(time.time(), 3),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "nonce": uuid.uuid4().hex,  # makes a retried create recognise its own object
            }
            data = json.dumps(record, sort_keys=True).encode()
            if storage.create_exclusive(_path(storage, run_name, epoch), data):
                lease = cls(storage, run_name, epoch)
                lease._checked = time.monotonic()
                return lease
        raise RuntimeError(f"run {run_name!r}: no lease epoch after {TRIES} tries")

    @classmethod
    def attach(cls, storage: Storage, run_name: str, epoch: int) -> Lease:
        """A worker's handle on the epoch its driver acquired (passed in the job dict)."""
        return cls(storage, run_name, int(epoch))

    def check(self, max_age_s: float = 0.0) -> None:
        """Raise Superseded when a newer epoch exists; an answer up to `max_age_s` old will do."""
        if self.newer is None and time.monotonic() - self._checked >= max_age_s:
            newest = max(epochs(self.storage, self.run_name), default=self.epoch)
            self._checked = time.monotonic()
            if newest > self.epoch:
                self.newer = newest
        if self.newer is not None:
            raise Superseded(self.run_name, self.epoch, self.newer)

    def __call__(self, fresh: bool = False) -> None:
        """The Storage fence: fresh before a commit, else at most `max_age_s` old."""
        self.check(0.0 if fresh else self.max_age_s)

    def current(self, max_age_s: float | None = None) -> bool:
        """False once a newer epoch exists (for a per-step check; rate-limited by `max_age_s`)."""
        try:
            self.check(self.max_age_s if max_age_s is None else max_age_s)
        except Superseded:
            return False
        return True


def worker_storage(storage: Storage, run_name: str, job: dict) -> Storage:
    """A Train worker's storage, fenced by the epoch its driver put in the job dict (`JOB_KEY`);
    unfenced when the driver took no lease."""
    epoch = job.get(JOB_KEY)
    return storage if epoch is None else storage.fenced(Lease.attach(storage, run_name, epoch))


def stand_down(lease: Lease, events, step: int | None = None) -> int:
    """The superseded attempt's end (driver side): its one last event, to its own events object
    (EventLog.last_word), a line on stderr, and the exit code 76."""
    import sys

    events.last_word("superseded", newer=lease.newer, step=step)
    print(
        f"spotrun: run {lease.run_name!r}: attempt {lease.epoch} superseded by attempt "
        f"{lease.newer}; it writes nothing more, exit {EXIT_SUPERSEDED}",
        file=sys.stderr,
    )
    return EXIT_SUPERSEDED
