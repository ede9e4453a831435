"""The real pipeline with its storage root on real S3 and GCS API servers (127.0.0.1).

S3: the spot notice (SIGTERM) uploads the final checkpoint before exit; then the newest checkpoint is
corrupted and a pickle is planted, and the relaunch skips the bad one and still ends bit-identical.
`spotrun runs` lists the run as running, preempted, then finished with one reclaim survived.
GCS: the server dies mid-upload and comes back; the pipeline is SIGKILLed mid-upload; the relaunch
ends bit-identical. No secret reaches anything spotrun writes.
"""

from __future__ import annotations

import json
import pickle
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    args_for,
    assert_identical,
    check_prometheus,
    kill_tree,
    launch,
    run,
    spotrun_runs,
    states,
    wait_for,
)
from servers import SECRET

from spotrun.core.paths import scratch_dir
from spotrun.core.storage import open_storage
from spotrun.ops import runs
from spotrun.recovery.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow


def download_run(server, name: str, dest: Path) -> Path:
    """Copy a run folder out of the bucket (events, final/) so local helpers can read it."""
    storage = open_storage(server.root)
    per_writer = [f"events/{rel}" for rel in storage.list_files(storage.path(name, "events"))]
    for rel in ("events.jsonl", *per_writer, "final/model.safetensors", "final/metrics.json"):
        if storage.exists(storage.path(name, rel)):
            (dest / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / name / rel).write_bytes(storage.read_bytes(storage.path(name, rel)))
    return dest / name


def bucket_events(server, name: str) -> list[dict]:
    from spotrun.core.events import read_events

    return read_events(open_storage(server.root), name)


def committed(server, name: str) -> list[int]:
    return CheckpointStore(open_storage(server.root), name).committed_steps()


def test_s3_notice_uploads_before_exit_and_a_corrupt_newest_is_skipped(
    reference, s3_server, tmp_path, monkeypatch
):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    log, name = tmp_path / "log.txt", "s3-notice"
    # S3 on AWS: a 2-minute notice; slower steps (same numbers) so the notice lands mid-run
    args = args_for(s3_server.root, name, ["cloud=aws", "debug.step_sleep_s=0.3"])
    proc = launch(args, log, s3_server.env())
    try:
        wait_for(lambda: any(s >= 8 for s in committed(s3_server, name)), proc, what="first commit in S3")
        seen = {r.run: r for r in runs.collect(open_storage(s3_server.root))}[name]  # `spotrun runs`' rows
        assert seen.state == "running" and seen.checkpoint_age_s is not None, seen
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        kill_tree(proc)
    assert code == 75, log.read_text()[-3000:]  # inside the wait: the notice's deadline is 25 s
    p = spotrun_runs(s3_server.root, env=s3_server.env())
    assert p.returncode == 0 and states(p.stdout)[name][2] == "preempted", p.stdout + p.stderr
    (pre,) = [e for e in bucket_events(s3_server, name) if e["kind"] == "preempted"]
    assert pre["step"] in committed(s3_server, name) and 0 < pre["durable_s"] < 60  # uploaded before exit

    store = CheckpointStore(open_storage(s3_server.root), name)
    newest, previous = store.committed_steps()[-1], store.committed_steps()[-2]
    path = f"{store.dir_for(newest)}/model.safetensors"
    data = bytearray(store.storage.read_bytes(path))
    data[len(data) // 2] ^= 0x01  # one flipped bit in the newest checkpoint
    store.storage.write_bytes(path, bytes(data))
    store.storage.write_bytes(f"{store.dir_for(previous)}/optim.pt", pickle.dumps({"planted": True}))

    assert run(args[:-1], log, env=s3_server.env()) == 0, log.read_text()[-3000:]  # at full speed
    ev = bucket_events(s3_server, name)
    assert [e["step"] for e in ev if e["kind"] == "checkpoint_skipped"] == [newest]
    assert [e["step"] for e in ev if e["kind"] == "resume"] == [previous]
    assert_identical(reference, download_run(s3_server, name, tmp_path))
    prom = tmp_path / "s3.prom"
    p = spotrun_runs(s3_server.root, "--prometheus", str(prom), env=s3_server.env())
    line = states(p.stdout)[name]
    assert line[2:5] == ["finished", "40/40", "1"], p.stdout  # one reclaim survived
    assert line[-1] == "100%", p.stdout  # the one relaunch reached a first step
    check_prometheus(prom, {name: "finished"}, exact=False)  # the bucket holds other tests' runs too
    # The secret key was in the environment of every process; it is in nothing spotrun wrote.
    storage = open_storage(s3_server.root)
    written = [json.dumps(bucket_events(s3_server, name)).encode(), log.read_bytes()]
    for step in store.committed_steps():
        written.append(storage.read_bytes(f"{store.dir_for(step)}/state.json"))
    scratch = Path(scratch_dir(str(REPO), storage.uri, name))  # this machine's scratch folder of the run
    assert scratch.is_dir()
    written += [p.read_bytes() for p in scratch.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in blob for blob in written)


def test_gcs_outage_and_kill_mid_upload_then_resume_bit_identical(
    reference, gs_server, tmp_path, monkeypatch
):
    for k, v in gs_server.env().items():
        monkeypatch.setenv(k, v)
    log, name = tmp_path / "log.txt", "gcs-outage"
    args = args_for(gs_server.root, name, ["debug.step_sleep_s=0.5"])  # slower steps, same numbers
    staging = Path(scratch_dir(str(REPO), open_storage(gs_server.root).uri, name)) / "staging"

    def uploading() -> bool:
        return staging.exists() and any(staging.rglob("*.safetensors"))

    proc = launch(args, log, gs_server.env())
    wait_for(lambda: committed(gs_server, name), proc, what="first commit in GCS", interval=1.0)
    wait_for(uploading, proc, what="an upload in progress", interval=0.05)  # tiny checkpoints upload fast
    gs_server.stop()  # the bucket disappears mid-upload ...
    time.sleep(6)  # 12 steps: a checkpoint falls due during the outage
    gs_server.start()  # ... and comes back with its data
    assert proc.poll() is None  # training went on through the outage
    wait_for(uploading, proc, what="an upload in progress after the outage")
    kill_tree(proc)  # reclaimed mid-upload: that checkpoint never gets a manifest
    at_kill = committed(gs_server, name)
    assert run(args[:-1], log, env=gs_server.env()) == 0, log.read_text()[-3000:]  # at full speed
    ev = bucket_events(gs_server, name)
    assert [e["step"] for e in ev if e["kind"] == "resume"] == [at_kill[-1]]
    assert_identical(reference, download_run(gs_server, name, tmp_path))
