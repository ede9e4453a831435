"""The checkpoint store: manifest-last commit, verified load, skip-on-corruption, no pickle, retention."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
import uuid

import pytest
import torch

from spotrun.core.storage import open_storage
from spotrun.recovery.checkpoint import (
    WRITER_NICE,
    AsyncCheckpointer,
    CheckpointStore,
    CorruptCheckpoint,
    bytes_to_tensors,
)


@pytest.fixture(params=["local", "s3", "gs"])
def store(request, tmp_path, monkeypatch):
    """The same store on local disk and on real S3 and GCS API servers."""
    if request.param == "local":
        return CheckpointStore(open_storage(str(tmp_path)), "run")
    server = request.getfixturevalue(f"{request.param}_server")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    run = f"run-{uuid.uuid4().hex[:8]}"
    return CheckpointStore(open_storage(server.root), run, staging_dir=str(tmp_path / "staging"))


def _corrupt(store, step: int, name: str, data: bytes | None = None) -> None:
    path = f"{store.dir_for(step)}/{name}"
    if data is None:
        data = bytearray(store.storage.read_bytes(path))
        data[-1] ^= 0xFF  # a flipped bit, same size
    store.storage.write_bytes(path, bytes(data))


def _files(v: float) -> dict[str, bytes]:
    from spotrun.recovery.checkpoint import tensors_to_bytes

    return {"model.safetensors": tensors_to_bytes({"w": torch.full((4,), v)}), "state.json": b'{"v": %f}' % v}


def test_uncommitted_folder_is_invisible(store):
    store.write(1, _files(1.0))
    store.storage.write_bytes(
        f"{store.dir_for(2)}/model.safetensors", b"partial"
    )  # killed before the manifest
    assert store.committed_steps() == [1]
    step, files = store.load_latest()
    assert step == 1 and bytes_to_tensors(files["model.safetensors"])["w"][0] == 1.0


def test_corrupt_latest_is_skipped_for_previous(store):
    store.write(1, _files(1.0))
    store.write(2, _files(2.0))
    _corrupt(store, 2, "model.safetensors")
    skipped = []
    step, _ = store.load_latest(on_skip=lambda s, why: skipped.append((s, why)))
    assert step == 1 and skipped and skipped[0][0] == 2 and "sha256" in skipped[0][1]
    with pytest.raises(CorruptCheckpoint):
        store.read(2)


def test_torn_manifest_is_skipped(store):
    store.write(1, _files(1.0))
    store.write(2, _files(2.0))
    _corrupt(store, 2, "manifest.json", b'{"step": 2, "fil')
    assert store.load_latest()[0] == 1


def test_planted_pickle_is_never_loaded(store, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    store.write(1, _files(1.0))
    payload = pickle.dumps(Evil())
    _corrupt(store, 1, "model.pt", payload)
    manifest = json.loads(store.storage.read_bytes(f"{store.dir_for(1)}/manifest.json"))
    manifest["files"]["model.pt"] = {"bytes": len(payload), "sha256": "x" * 64}
    _corrupt(store, 1, "manifest.json", json.dumps(manifest).encode())
    assert store.load_latest() is None  # listed but unverifiable: skipped, never unpickled
    assert not marker.exists()


def test_retention_keeps_newest(store):
    for s in range(1, 6):
        store.write(s, _files(float(s)))
    store.storage.write_bytes(f"{store.dir_for(0)}/model.safetensors", b"x")  # an orphan older than all kept
    assert store.prune(2) == [0, 1, 2, 3]
    assert store.committed_steps() == [4, 5]
    assert not store.storage.exists(f"{store.dir_for(0)}/model.safetensors")  # the orphan went too


def test_async_checkpointer_snapshots_then_writes(store):
    committed = []
    ck = AsyncCheckpointer(store, keep=2, on_commit=committed.append)
    w = torch.zeros(1000)
    for step in range(1, 4):
        w.fill_(step)
        assert ck.save(step, {"model": {"w": w}}, {"state.json": {"step": step}}) >= 0
        w.fill_(-1)  # mutating after save() must not change what gets written
        ck.wait()
    # the writer runs at the lowest CPU priority, the caller (the training loop) keeps its own
    assert os.getpriority(os.PRIO_PROCESS, ck._thread.native_id) == WRITER_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < WRITER_NICE
    ck.close()
    assert [c["step"] for c in committed] == [1, 2, 3] and store.committed_steps() == [2, 3]
    step, files = store.load_latest()
    assert step == 3 and torch.equal(
        bytes_to_tensors(files["model.safetensors"])["w"], torch.full((1000,), 3.0)
    )


def test_bucket_outage_is_ridden_out_in_the_background(gs_server, tmp_path, monkeypatch):
    """The GCS server dies mid-run for 3 s: save() still returns at once; the write lands afterwards."""
    for k, v in gs_server.env().items():
        monkeypatch.setenv(k, v)
    store = CheckpointStore(open_storage(gs_server.root), f"outage-{uuid.uuid4().hex[:6]}", str(tmp_path))
    ck = AsyncCheckpointer(store, keep=3)
    ck.save(1, {"model": {"w": torch.ones(10)}}, {"state.json": {"step": 1}})
    ck.wait()
    gs_server.stop()
    try:
        t0 = time.perf_counter()
        ck.save(2, {"model": {"w": torch.full((10,), 2.0)}}, {"state.json": {"step": 2}})
        assert time.perf_counter() - t0 < 1.0
        time.sleep(3)
        assert ck.last_committed == 1  # still retrying
    finally:
        gs_server.start()
    ck.wait(timeout=120)
    assert store.committed_steps() == [1, 2] and store.load_latest()[0] == 2


class SlowStore(CheckpointStore):
    """A bucket that takes 0.5 s per checkpoint."""

    def write(self, step, files, shards=None):
        time.sleep(0.5)
        return super().write(step, files, shards)


def test_slow_writes_never_block_and_newer_snapshots_supersede(tmp_path):
    store = SlowStore(open_storage(str(tmp_path)), "run")
    ck = AsyncCheckpointer(store, keep=10)
    w = torch.zeros(10)
    t0 = time.perf_counter()
    for step in range(1, 6):  # five saves while the first write is still sleeping
        w.fill_(step)
        ck.save(step, {"model": {"w": w}}, {"state.json": {"step": step}})
    assert time.perf_counter() - t0 < 0.4  # the loop was never held by the slow store
    ck.wait()
    committed = store.committed_steps()  # the first write, if it had started, then only the newest
    assert committed[-1] == 5 and len(committed) <= 2 and ck.superseded == 5 - len(committed)
    assert torch.equal(bytes_to_tensors(store.read(5)["model.safetensors"])["w"], torch.full((10,), 5.0))


def _plant_entry(store, step: int, name: str, meta: dict) -> None:
    """Add one entry to a committed checkpoint's manifest (what a planted bucket object would say)."""
    path = f"{store.dir_for(step)}/manifest.json"
    manifest = json.loads(store.storage.read_bytes(path))
    manifest["files"][name] = meta
    store.storage.write_bytes(path, json.dumps(manifest).encode())


def _meta(data: bytes) -> dict:
    import hashlib

    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/hostname",
        "../step-00000001/model.safetensors",
        "/etc/hostname",
        "a\0b",
        "sub/x",
        "dcp/../x",
        "..",
    ],
)
def test_manifest_names_outside_the_step_folder_are_refused(store, name):
    """Names that lead out of the step folder are refused even when size and sha256 match the
    file they point at (here: step 1's own model file, a perfect match)."""
    store.write(1, _files(1.0))
    store.write(2, _files(2.0))
    target = store.storage.read_bytes(f"{store.dir_for(1)}/model.safetensors")
    _plant_entry(store, 2, name, _meta(target))
    skipped = []
    assert store.load_latest(on_skip=lambda s, why: skipped.append((s, why)))[0] == 1
    assert skipped[0][0] == 2 and "plain name" in skipped[0][1]


def test_a_file_larger_than_its_manifest_entry_is_never_read(store, tmp_path):
    store.write(1, _files(1.0))
    store.write(2, _files(2.0))
    path = f"{store.dir_for(2)}/model.safetensors"
    if store.storage.is_local:  # 64 GiB, sparse: reading it whole would exhaust this machine's memory
        with open(path, "r+b") as f:
            f.truncate(64 << 30)
    else:
        store.storage.write_bytes(path, b"x" * (2 << 20))
    skipped = []
    assert store.load_latest(on_skip=lambda s, why: skipped.append((s, why)))[0] == 1
    assert "the manifest says a file of" in skipped[0][1]


def test_a_fifo_named_in_the_manifest_is_never_opened(tmp_path):
    """A FIFO would block the first read forever: the stat before any open refuses it."""
    import os
    import threading

    store = CheckpointStore(open_storage(str(tmp_path)), "run")
    store.write(1, _files(1.0))
    store.write(2, _files(2.0))
    path = f"{store.dir_for(2)}/model.safetensors"
    size = os.path.getsize(path)
    os.unlink(path)
    os.mkfifo(path)
    _plant_entry(store, 2, "model.safetensors", {"bytes": size, "sha256": "0" * 64})
    found, skipped = [], []
    t = threading.Thread(
        target=lambda: found.append(store.load_latest(on_skip=lambda s, why: skipped.append(why))),
        daemon=True,
    )
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "load_latest opened the FIFO and hung"
    assert found[0][0] == 1 and "Unknown" in skipped[0]


def test_dcp_shards_are_hashed_into_the_manifest_and_a_planted_one_is_skipped(tmp_path):
    """FSDP's DCP shards (dcp/ in the step folder) are in the manifest; a planted `.metadata`
    (a pickle that would create a marker file) fails its sha256 and the previous checkpoint loads."""
    import torch.distributed.checkpoint as dcp

    store = CheckpointStore(open_storage(str(tmp_path)), "run")
    for step in (1, 2):
        dcp.save(
            {"w": torch.full((4,), float(step))}, checkpoint_id=f"{store.dir_for(step)}/dcp", no_dist=True
        )
        store.write(step, _files(float(step)), shards="dcp")
    manifest = json.loads(store.storage.read_bytes(f"{store.dir_for(2)}/manifest.json"))
    shards = {n for n in manifest["files"] if n.startswith("dcp/")}
    assert "dcp/.metadata" in shards and any(n.endswith(".distcp") for n in shards)
    assert store.load_latest()[0] == 2 and "dcp/.metadata" not in store.read(2)  # verified, not returned
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _corrupt(store, 2, "dcp/.metadata", pickle.dumps(Evil()))
    skipped = []
    assert store.load_latest(on_skip=lambda s, why: skipped.append((s, why)))[0] == 1
    assert skipped[0][0] == 2 and "dcp/.metadata" in skipped[0][1] and not marker.exists()
