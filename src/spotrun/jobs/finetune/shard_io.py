"""FSDP's DCP shards through the storage layer, so `trainer.parallel=fsdp` runs on a bucket root.

DCP writes and reads files on a filesystem. On local storage the shards go straight into the step's
`dcp/` folder. On a bucket every rank writes its shards to local staging, uploads the files it wrote
(`__<rank>_<n>.distcp`; rank 0 also `.metadata`), and rank 0 commits the checkpoint only once every
file the metadata names is in the bucket at full size: the manifest then hashes them all, as any
other checkpoint's files. A resume downloads the step's `dcp/` to local disk and loads from there,
through the same restricted metadata reader.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor

from spotrun.core.storage import Storage
from spotrun.jobs.finetune.fsdp import read_metadata_files

UPLOAD_WAIT_S = 600.0  # rank 0 waits this long for the other ranks' uploads before it fails the save


class ShardIO:
    def __init__(self, storage: Storage, staging_dir: str, rank: int):
        self.storage, self.staging, self.rank = storage, staging_dir, rank
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotrun-shards")

    def save(self, task, step_dir: str, opt) -> Future:
        """Start the sharded save of this step; the future completes once it is where it must be."""
        if self.storage.is_local:
            return task.save_sharded(f"{step_dir}/dcp", opt)
        local = os.path.join(self.staging, f"dcp-{os.path.basename(step_dir)}")
        written = task.save_sharded(local, opt)
        return self._pool.submit(self._publish, written, local, f"{step_dir}/dcp")

    def _publish(self, written: Future, local: str, remote: str) -> None:
        written.result()
        mine = [n for n in sorted(os.listdir(local)) if n.startswith(f"__{self.rank}_")]
        mine += [".metadata"] if self.rank == 0 else []
        for name in mine:
            self.storage.upload_file(os.path.join(local, name), f"{remote}/{name}")
        if self.rank == 0:  # every rank's files, at their full size, before the manifest
            self._wait_for(remote, read_metadata_files(os.path.join(local, ".metadata")))
        for name in mine:
            os.remove(os.path.join(local, name))

    def _wait_for(self, remote: str, sizes: dict[str, int]) -> None:
        deadline = time.monotonic() + UPLOAD_WAIT_S
        while time.monotonic() < deadline:
            missing = [n for n, size in sizes.items() if self._size(f"{remote}/{n}") < size]
            if not missing:
                return
            time.sleep(0.2)
        raise TimeoutError(f"DCP shards not uploaded after {UPLOAD_WAIT_S:.0f} s: {missing[:3]}")

    def _size(self, path: str) -> int:
        info = self.storage.fs.get_file_info(path)
        return info.size if info.size is not None else -1

    def load(self, task, step_dir: str, opt) -> None:
        """Every rank loads its shards of this step (a collective)."""
        if self.storage.is_local:
            return task.load_sharded(f"{step_dir}/dcp", opt)
        local = os.path.join(self.staging, f"restore-{os.path.basename(step_dir)}-rank{self.rank}")
        shutil.rmtree(local, ignore_errors=True)
        for rel in self.storage.list_files(f"{step_dir}/dcp"):
            self.storage.download_file(f"{step_dir}/dcp/{rel}", os.path.join(local, rel))
        try:
            task.load_sharded(local, opt)
        finally:
            shutil.rmtree(local, ignore_errors=True)
