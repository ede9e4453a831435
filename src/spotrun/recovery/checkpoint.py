"""Checkpoints: in-memory snapshot, background write, manifest-last commit, verified load, retention.

Layout: <root>/<run>/checkpoints/step-00000120/{model,optim,rng}.safetensors, state.json, manifest.json.
A checkpoint exists only once manifest.json (names, sizes, sha256 of every file) is written, last.
Only safetensors and JSON are ever read back: nothing from a bucket is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from spotrun.core.storage import Storage, _retry

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PREFIX = "step-"
SHARDS = "dcp"  # FSDP: each rank's DCP shards, in this subfolder of the step folder
MAX_MANIFEST_BYTES = 4 << 20  # far more than any real manifest; a bigger one is never read
CHUNK = 8 << 20  # streamed hashing: one read per 8 MB


def plain_name(name) -> bool:
    """A file name a manifest may list: `name` or `dcp/name`, never a path out of the step folder."""
    if not isinstance(name, str) or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == SHARDS:
        parts = parts[1:]
    return len(parts) == 1 and parts[0] not in ("", ".", "..") and parts[0] != MANIFEST


class CorruptCheckpoint(Exception):
    pass


class CheckpointStore:
    """Committed checkpoints of one run under `<root>/<run>/checkpoints/`."""

    def __init__(self, storage: Storage, run_name: str, staging_dir: str | None = None):
        self.storage = storage
        self.root = storage.path(run_name, "checkpoints")
        self.staging_dir = staging_dir  # bucket roots: files land on local disk first, then upload
        self.hold_s = 0.0  # seconds each write waits before its manifest (tests of mid-write reclaims)

    def dir_for(self, step: int) -> str:
        return f"{self.root}/{PREFIX}{step:08d}"

    def _scan(self) -> dict[int, bool]:
        """step -> committed (its folder holds a manifest), for every checkpoint folder, in one listing."""
        found: dict[int, bool] = {}
        for rel in self.storage.list_files(self.root):
            folder, _, name = rel.partition("/")
            if folder.startswith(PREFIX) and folder[len(PREFIX) :].isdigit():
                step = int(folder[len(PREFIX) :])
                found[step] = found.get(step, False) or name == MANIFEST
        return found

    def committed_steps(self) -> list[int]:
        return sorted(s for s, committed in self._scan().items() if committed)

    def write(self, step: int, files: dict[str, bytes], shards: str | None = None) -> int:
        """Write data files, then the manifest. Returns the bytes written. `shards`: a subfolder
        already written by others (FSDP's DCP shards), hashed into the manifest too.
        A fenced storage is asked afresh before the first file (a stale attempt writes nothing)
        and again right before the manifest (a lease taken mid-upload still stops the commit)."""
        self.storage.check_fence(fresh=True)
        folder = self.dir_for(step)
        manifest = {"step": step, "created": time.time(), "files": {}}
        staged = None
        if self.staging_dir and not self.storage.is_local:
            staged = os.path.join(self.staging_dir, f"{PREFIX}{step:08d}")
            os.makedirs(staged, exist_ok=True)
        for name, data in files.items():
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if staged:
                with open(os.path.join(staged, name), "wb") as f:
                    f.write(data)
                self.storage.upload_file(os.path.join(staged, name), f"{folder}/{name}")
            else:
                self.storage.write_bytes(f"{folder}/{name}", data)
        if shards:
            manifest["files"].update(self._hash_shards(folder, shards))
        if self.hold_s:  # debug.write_sleep_s: a write stays open, so a test can reclaim mid-write
            time.sleep(self.hold_s)
        self.storage.check_fence(fresh=True)
        self.storage.write_bytes(f"{folder}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
        return sum(len(d) for d in files.values())

    def _hash_shards(self, folder: str, sub: str) -> dict[str, dict]:
        entries = {}
        for rel in self.storage.list_files(f"{folder}/{sub}"):
            path = f"{folder}/{sub}/{rel}"
            size, digest = self._sha256(path, limit=None)
            entries[f"{sub}/{rel}"] = {"bytes": size, "sha256": digest}
        return entries

    def _sha256(self, path: str, limit: int | None) -> tuple[int, str]:
        """(bytes, sha256) of a file, streamed; stops past `limit` bytes (a file that grew)."""
        h, size = hashlib.sha256(), 0
        with self.storage.fs.open_input_stream(path) as f:
            while (limit is None or size <= limit) and (chunk := f.read(CHUNK)):
                h.update(chunk)
                size += len(chunk)
        return size, h.hexdigest()

    def _stat(self, path: str, expected: int) -> None:
        """The file is a regular file of the manifest's size, checked before anything opens it: a
        FIFO or device is never opened, a file larger than listed is never read."""
        info = _retry(self.storage.fs.get_file_info)(path)
        if info.type != pafs.FileType.File or info.size != expected:
            kind = f"{info.size} bytes" if info.type == pafs.FileType.File else f"a {info.type.name}"
            raise CorruptCheckpoint(f"{path}: {kind}, the manifest says a file of {expected} bytes")

    def _manifest(self, folder: str) -> dict[str, dict]:
        """The manifest's entries, each name a plain file name in the step folder (or in its DCP
        shard subfolder) with an int size and a hex sha256. Raises CorruptCheckpoint."""
        path = f"{folder}/{MANIFEST}"
        size = _retry(self.storage.fs.get_file_info)(path).size or 0
        if size > MAX_MANIFEST_BYTES:
            raise CorruptCheckpoint(f"{path}: {size} bytes, more than any manifest ({MAX_MANIFEST_BYTES})")
        entries = json.loads(self.storage.read_bytes(path))["files"]
        for name, meta in entries.items():
            if not plain_name(name):
                raise CorruptCheckpoint(f"{path}: file name {name!r} is not a plain name in the step folder")
            ok = isinstance(meta["bytes"], int) and meta["bytes"] >= 0 and isinstance(meta["sha256"], str)
            if not ok:
                raise CorruptCheckpoint(f"{path}: entry {name!r} has no valid size and sha256")
        return entries

    def read(self, step: int, verify: bool = True) -> dict[str, bytes]:
        """Every top-level file of a committed checkpoint (DCP shards are verified, not returned:
        each rank reads its own); raises CorruptCheckpoint on any mismatch."""
        folder = self.dir_for(step)
        files = {}
        try:
            for name, meta in self._manifest(folder).items():
                path = f"{folder}/{name}"
                self._stat(path, meta["bytes"])
                if name.startswith(SHARDS + "/"):
                    size, digest = self._sha256(path, meta["bytes"]) if verify else (meta["bytes"], None)
                else:
                    data = files[name] = self.storage.read_bytes(path)
                    size, digest = len(data), hashlib.sha256(data).hexdigest() if verify else None
                if size != meta["bytes"] or (verify and digest != meta["sha256"]):
                    raise CorruptCheckpoint(f"{path}: size or sha256 differs from the manifest")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpoint(f"{folder}: unreadable ({e})") from e
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
        scan = self._scan()
        committed = sorted(s for s, ok in scan.items() if ok)
        if len(committed) <= keep:
            return []
        oldest_kept = committed[-keep]
        doomed = sorted(s for s in scan if s < oldest_kept)
        self.storage.check_fence()  # never delete what the attempt holding the run resumes from
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


WRITER_NICE = 19  # the writer thread's nice value: the lowest CPU priority


def _yield_cpu() -> None:
    """Give this thread alone the lowest CPU priority (on Linux each thread has its own nice value).
    On a host whose cores the ranks keep busy (a CPU run), the write then takes the time the loop
    leaves idle, such as its all-reduce waits, instead of slowing one rank and through it every
    rank's step. A notice's last write runs while the loop waits for it, so it is not held back."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
    except (AttributeError, OSError) as e:  # not Linux: the writer keeps the process's priority
        log.debug("checkpoint writer keeps its priority: %s", e)


class AsyncCheckpointer:
    """Blocks the training loop only for a copy into reused buffers; a background thread writes.

    One write in flight at a time. A save that arrives while one is in flight becomes the pending
    one, replacing an older pending snapshot (supersede): the loop never waits for a slow or
    unreachable bucket. Two buffer sets alternate between "being written" and "pending".
    """

    def __init__(self, store: CheckpointStore, keep: int, on_commit: Callable[[dict], None] | None = None):
        self.store, self.keep, self.on_commit = store, keep, on_commit
        self._sets: list[dict[str, dict[str, torch.Tensor]]] = [{}, {}]
        self._cv = threading.Condition()
        self._pending: tuple | None = None  # (step, buffer set index, json payload, blocked_s, after)
        self._writing: int | None = None  # index of the buffer set being written
        self._error: BaseException | None = None
        self._last_info: dict | None = None
        self.last_committed: int | None = None
        self.superseded = 0
        self._thread = threading.Thread(target=self._run, name="spotrun-ckpt", daemon=True)
        self._thread.start()

    def _snapshot(self, bufs: dict, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy every tensor into this set's host buffers. A GPU tensor's buffer is pinned: the copies
        run at the link's full speed and are all queued before one wait per device (a pageable
        buffer makes each copy a synchronous, staged transfer)."""
        devices = set()
        for group, tensors in groups.items():
            dst = bufs.setdefault(group, {})
            for name, t in tensors.items():
                t = t.detach()
                buf = dst.get(name)
                if (
                    buf is None
                    or buf.shape != t.shape
                    or buf.dtype != t.dtype
                    or buf.is_pinned() != t.is_cuda
                ):
                    dst[name] = buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                buf.copy_(t, non_blocking=t.is_cuda)
                if t.is_cuda:
                    devices.add(t.device)
            for stale in set(dst) - set(tensors):
                del dst[stale]
        for stale in set(bufs) - set(groups):
            del bufs[stale]
        for device in devices:  # the buffers hold the step's values before the loop goes on
            torch.cuda.synchronize(device)

    def save(
        self,
        step: int,
        groups: dict[str, dict[str, torch.Tensor]],
        json_files: dict[str, dict],
        after: Future | None = None,
    ) -> float:
        """Snapshot `groups` (file stem -> tensors) and queue the write. Returns seconds blocked.
        `after`: a write that must complete before this checkpoint commits (FSDP's sharded DCP save
        into the same folder)."""
        t0 = time.perf_counter()
        payload = {name: json.dumps(obj, sort_keys=True).encode() for name, obj in json_files.items()}
        with self._cv:
            self._raise_error()
            idx = 1 - self._writing if self._writing is not None else 0
            if self._pending is not None:
                self.superseded += 1
                log.warning(
                    "checkpoint step %d superseded by step %d (previous write still running)",
                    self._pending[0],
                    step,
                )
            self._snapshot(self._sets[idx], groups)
            blocked = time.perf_counter() - t0
            self._pending = (step, idx, payload, blocked, after)
            self._cv.notify_all()
        return blocked

    def _run(self) -> None:
        _yield_cpu()
        while True:
            with self._cv:
                while self._pending is None:
                    self._cv.wait()
                step, idx, payload, blocked, after = self._pending
                self._pending, self._writing = None, idx
            try:
                if after is not None:
                    after.result()
                info = self._write(step, self._sets[idx], payload, blocked, sharded=after is not None)
            except BaseException as e:  # noqa: BLE001 - surfaced to the loop on its next save/wait
                log.error("checkpoint step %d failed: %s", step, e)
                info, err = None, e
            else:
                err = None
            with self._cv:
                self._writing = None
                if err is not None:
                    self._error = err
                else:
                    self.last_committed, self._last_info = step, info
                self._cv.notify_all()

    def _write(self, step: int, bufs: dict, payload: dict[str, bytes], blocked: float, sharded=False) -> dict:
        t0 = time.perf_counter()
        files = {f"{group}.safetensors": tensors_to_bytes(ts) for group, ts in bufs.items()} | payload
        nbytes = self.store.write(step, files, shards=SHARDS if sharded else None)  # DCP shards hashed too
        info = {
            "step": step,
            "bytes": nbytes,
            "blocked_s": round(blocked, 4),
            "write_s": round(time.perf_counter() - t0, 4),
        }
        self.store.prune(self.keep)
        if self.on_commit:
            self.on_commit(info)
        return info

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def wait(self, timeout: float | None = None) -> dict | None:
        """Block until nothing is pending or being written; returns the newest commit's info."""
        with self._cv:
            done = self._cv.wait_for(lambda: self._pending is None and self._writing is None, timeout)
            self._raise_error()
            if not done:
                raise TimeoutError(f"checkpoint not durable within {timeout}s")
            return self._last_info

    def close(self) -> None:
        self.wait()
