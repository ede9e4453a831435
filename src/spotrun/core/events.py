"""The run's events.jsonl: one JSON object per line, the record that reports and tests read.

Kinds written by spotrun: launch (one per attempt, with where it runs), start, resume, first_step,
heartbeat, checkpoint, checkpoint_interval, checkpoint_skipped, preemption_notice, preempted,
preempted_timeout, reclaim (from `spotrun chaos`), finish, failed. Every event carries `ts` (unix seconds), `kind`, `source` and `pid`.
"""

from __future__ import annotations

import json
import os
import posixpath
import threading
import time
from typing import Any

from spotrun.core.storage import Storage

FILENAME = "events.jsonl"


class EventLog:
    """Appends events for one run. Safe to use from several threads and processes on one disk."""

    def __init__(self, storage: Storage, run_name: str, source: str):
        self.storage = storage
        self.path = storage.path(run_name, FILENAME)
        self.source = source
        self._lock = threading.RLock()  # re-entrant: a signal handler may emit mid-emit

    def emit(self, kind: str, **fields: Any) -> dict:
        event = {
            "ts": round(time.time(), 3),
            "kind": kind,
            "source": self.source,
            "pid": os.getpid(),
            **fields,
        }
        line = json.dumps(event, sort_keys=True) + "\n"
        with self._lock:
            if self.storage.is_local:
                os.makedirs(posixpath.dirname(self.path), exist_ok=True)
                # One write() of a short line with O_APPEND: lines from several processes never interleave.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            else:  # object stores cannot append: rewrite the whole (small) object. One writer per
                # run at a time (rank 0; the driver only once the workers are gone), so no lost update.
                old = self.storage.read_bytes(self.path) if self.storage.exists(self.path) else b""
                self.storage.write_bytes(self.path, old + line.encode())
        return event


def read_events(storage: Storage, run_name: str) -> list[dict]:
    path = storage.path(run_name, FILENAME)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_bytes(path).decode().splitlines() if line.strip()]
