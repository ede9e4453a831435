"""Checkpoints: in-memory snapshot, background write, manifest-last commit, verified load, retention.

Layout: <root>/<run>/checkpoints/step-00000120/{model,optim,rng}.safetensors, state.json, manifest.json.
A checkpoint exists only once manifest.json (names, sizes, sha256 of every file) is written, last.
Only safetensors and JSON are ever read back: nothing from a bucket is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from spotrun.storage import Storage

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PREFIX = "step-"


class CorruptCheckpoint(Exception):
    pass


class CheckpointStore:
    """Committed checkpoints of one run under `<root>/<run>/checkpoints/`."""

    def __init__(self, storage: Storage, run_name: str):
        self.storage = storage
        self.root = storage.path(run_name, "checkpoints")

    def dir_for(self, step: int) -> str:
        return f"{self.root}/{PREFIX}{step:08d}"

    def steps(self) -> list[int]:
        """Steps of every checkpoint folder, committed or not, oldest first."""
        names = self.storage.listdir(self.root)
        return sorted(
            int(n[len(PREFIX) :]) for n in names if n.startswith(PREFIX) and n[len(PREFIX) :].isdigit()
        )

    def committed_steps(self) -> list[int]:
        return [s for s in self.steps() if self.storage.exists(f"{self.dir_for(s)}/{MANIFEST}")]

    def write(self, step: int, files: dict[str, bytes]) -> int:
        """Write data files, then the manifest. Returns the bytes written."""
        folder = self.dir_for(step)
        manifest = {"step": step, "created": time.time(), "files": {}}
        for name, data in files.items():
            self.storage.write_bytes(f"{folder}/{name}", data)
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.storage.write_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        return sum(len(d) for d in files.values())

    def read(self, step: int, verify: bool = True) -> dict[str, bytes]:
        """Every file of a committed checkpoint; raises CorruptCheckpoint on any mismatch."""
        folder = self.dir_for(step)
        try:
            manifest = json.loads(self.storage.read_bytes(f"{folder}/{MANIFEST}"))
            files = {name: self.storage.read_bytes(f"{folder}/{name}") for name in manifest["files"]}
        except (OSError, ValueError, KeyError) as e:
            raise CorruptCheckpoint(f"{folder}: unreadable ({e})") from e
        for name, meta in manifest["files"].items():
            data = files[name]
            if len(data) != meta["bytes"] or (verify and hashlib.sha256(data).hexdigest() != meta["sha256"]):
                raise CorruptCheckpoint(f"{folder}/{name}: size or sha256 differs from the manifest")
        return files

    def load_latest(self, verify: bool = True, on_skip: Callable[[int, str], None] | None = None):
        """(step, files) of the newest checkpoint that verifies, or None. Bad ones are skipped."""
        for step in reversed(self.committed_steps()):
            try:
                return step, self.read(step, verify)
            except CorruptCheckpoint as e:
                log.warning("skipping checkpoint: %s", e)
                if on_skip:
                    on_skip(step, str(e))
        return None

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` committed checkpoints (and older uncommitted leftovers)."""
        committed = self.committed_steps()
        if len(committed) <= keep:
            return []
        oldest_kept = committed[-keep]
        doomed = [s for s in self.steps() if s < oldest_kept]
        for step in doomed:
            try:
                self.storage.delete_dir(self.dir_for(step))
            except OSError as e:  # never fatal: the next prune retries
                log.warning("could not delete checkpoint step %d: %s", step, e)
        return doomed


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()})


def bytes_to_tensors(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


class AsyncCheckpointer:
    """Blocks the training loop only for a copy into reused buffers; writes in a background thread.

    One write in flight at a time: a new save waits for the previous one to finish first.
    """

    def __init__(self, store: CheckpointStore, keep: int, on_commit: Callable[[dict], None] | None = None):
        self.store, self.keep, self.on_commit = store, keep, on_commit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotrun-ckpt")
        self._buffers: dict[str, dict[str, torch.Tensor]] = {}
        self._inflight: Future | None = None
        self._lock = threading.Lock()
        self.last_committed: int | None = None

    def _snapshot(self, group: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bufs = self._buffers.setdefault(group, {})
        for name, t in tensors.items():
            t = t.detach()
            buf = bufs.get(name)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                bufs[name] = buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            buf.copy_(t)
        for stale in set(bufs) - set(tensors):
            del bufs[stale]
        return bufs

    def save(
        self, step: int, groups: dict[str, dict[str, torch.Tensor]], json_files: dict[str, dict]
    ) -> float:
        """Snapshot `groups` (file stem -> tensors) and queue the write. Returns seconds blocked."""
        t0 = time.perf_counter()
        self.wait()
        snap = {f"{g}.safetensors": self._snapshot(g, ts) for g, ts in groups.items()}
        blocked = time.perf_counter() - t0
        payload = {name: json.dumps(obj, sort_keys=True).encode() for name, obj in json_files.items()}
        self._inflight = self._pool.submit(self._write, step, snap, payload, blocked)
        return blocked

    def _write(
        self, step: int, snap: dict[str, dict[str, torch.Tensor]], payload: dict[str, bytes], blocked: float
    ):
        t0 = time.perf_counter()
        files = {name: tensors_to_bytes(ts) for name, ts in snap.items()} | payload
        nbytes = self.store.write(step, files)
        info = {
            "step": step,
            "bytes": nbytes,
            "blocked_s": round(blocked, 4),
            "write_s": round(time.perf_counter() - t0, 4),
        }
        with self._lock:
            self.last_committed = step
        self.store.prune(self.keep)
        if self.on_commit:
            self.on_commit(info)
        return info

    def wait(self) -> dict | None:
        """Block until the in-flight write (if any) is committed; re-raises its error."""
        fut, self._inflight = self._inflight, None
        return fut.result() if fut else None

    def close(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)
