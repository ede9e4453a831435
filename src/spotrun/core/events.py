"""The run's events: one JSON object per line, the record that reports and tests read.

Kinds written by spotrun: launch (one per attempt, with where it runs), start, resume, first_step,
heartbeat, checkpoint, checkpoint_interval, checkpoint_skipped, preemption_notice, preempted,
preempted_timeout, reclaim (from `spotrun chaos`), superseded, finish, failed. Every event carries
`ts` (unix seconds), `kind`, `source` and `pid`, and `epoch` when its writer holds a lease.

Where they live: on local disk every writer appends to `<run>/events.jsonl` (one O_APPEND write a
line, so writers never lose each other's lines). An object store cannot append, and two writers
rewriting one object lose each other's events, so there each writer owns one object,
`<run>/events/<epoch>-<source>-<pid>-<id>.jsonl`, and rewrites only that. `read_events` merges them
(and a bucket run's old single events.jsonl), sorted by ts.
"""

from __future__ import annotations

import json
import os
import posixpath
import threading
import time
import uuid
from typing import Any

from spotrun.core.storage import Storage

FILENAME = "events.jsonl"
FOLDER = "events"  # one object per writer, on object stores


class EventLog:
    """Appends events for one run. Safe to use from several threads and processes.

    A fenced storage (`Storage.fenced`) is checked before every write: a superseded attempt's
    emit raises the fence's error (spotrun.recovery.lease.Superseded) and writes nothing."""

    def __init__(self, storage: Storage, run_name: str, source: str):
        self.storage, self.source = storage, source
        self.epoch = storage.fence.epoch if storage.fence is not None else None
        if storage.is_local:
            self.path = storage.path(run_name, FILENAME)
        else:
            writer = f"{self.epoch or 0:08d}-{source}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.path = storage.path(run_name, FOLDER, f"{writer}.jsonl")
        self._lines: list[bytes] = []  # this writer's own object, rewritten whole (buckets)
        self._lock = threading.RLock()  # re-entrant: a signal handler may emit mid-emit

    def emit(self, kind: str, **fields: Any) -> dict:
        with self._lock:
            self.storage.check_fence()
            return self._write(kind, fields)

    def last_word(self, kind: str, **fields: Any) -> dict:
        """The one event a fenced-off writer still writes (`superseded`): appended to its own
        object (a line on disk), it overwrites nothing of the attempt that holds the run."""
        with self._lock:
            return self._write(kind, fields)

    def _write(self, kind: str, fields: dict) -> dict:
        event = {"ts": round(time.time(), 3), "kind": kind, "source": self.source, "pid": os.getpid()}
        event.update(fields)
        if self.epoch is not None:  # the lease's epoch; no field may stand in for it
            event["epoch"] = self.epoch
        line = (json.dumps(event, sort_keys=True) + "\n").encode()
        if self.storage.is_local:
            os.makedirs(posixpath.dirname(self.path), exist_ok=True)
            # One write() of a short line with O_APPEND: lines from several processes never interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        else:
            self._lines.append(line)
            self.storage.write_bytes(self.path, b"".join(self._lines))
        return event


def _parse(data: bytes) -> list[dict]:
    out = []
    for line in data.decode().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:  # a half-written last line (a writer killed mid-append)
                continue
    return out


def read_events(storage: Storage, run_name: str) -> list[dict]:
    """Every event of the run from every writer, sorted by ts (each writer's order kept on ties)."""
    single, folder = storage.path(run_name, FILENAME), storage.path(run_name, FOLDER)
    paths = [single] if storage.exists(single) else []  # local runs, and bucket runs made before
    paths += [f"{folder}/{rel}" for rel in storage.list_files(folder) if rel.endswith(".jsonl")]
    found = [e for path in paths for e in _parse(storage.read_bytes(path))]
    return sorted(found, key=lambda e: e["ts"])
