"""The real pipeline with its storage root on real S3 and GCS API servers (127.0.0.1).

S3: the spot notice (SIGTERM) uploads the final checkpoint before exit; then the newest checkpoint is
corrupted and a pickle is planted, and the relaunch skips the bad one. While it trains, a newer
attempt of the same run starts (two live attempts): the older stops (exit 76) and writes nothing
more, the newer finishes bit-identical. `spotrun runs` lists the run as running, preempted, then
finished with two reclaims survived. The lease's create-if-absent on each backend (S3's
If-None-Match, GCS's ifGenerationMatch, local O_EXCL) is raced in tests/recovery/test_lease.py; the
attempt-level behaviour is the same code for all of them, so it runs on S3 alone.
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
from spotrun.recovery.history import summarize
from spotrun.recovery.lease import MAX_AGE_S, read_leases

pytestmark = pytest.mark.slow
SLACK_S = 2.0  # a write whose fence answer came just before the newer lease appeared


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


@pytest.mark.timeout(1800)  # three attempts and the shared reference run, on a possibly loaded host
def test_s3_notice_uploads_before_exit_a_corrupt_newest_is_skipped_and_a_stale_attempt_stands_down(
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

    # Two live attempts (what a managed-job controller does after losing touch with a VM that in fact
    # still runs: it launches the run again). The relaunch (epoch 2) skips the corrupt newest, resumes
    # and trains slowly; once it has committed, a newer attempt (epoch 3, full speed) takes the lease:
    # the older stops (exit 76) and writes nothing after that bar its `superseded` event; the newer
    # finishes with the weights of an uninterrupted run.
    old = launch([*args[:-1], "debug.step_sleep_s=1.0"], tmp_path / "old.txt", s3_server.env())
    new = None
    try:
        wait_for(
            lambda: any(
                e["kind"] == "checkpoint" and e.get("epoch") == 2 for e in bucket_events(s3_server, name)
            ),
            old,
            timeout=400,
            what="the relaunch's first commit",
            interval=1.0,
        )
        new = launch(args[:-1], log, s3_server.env())  # at full speed
        assert old.wait(timeout=300) == 76, (tmp_path / "old.txt").read_text()[-3000:]
        assert new.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(old)
        if new is not None:
            kill_tree(new)
    ev = bucket_events(s3_server, name)
    assert [e["step"] for e in ev if e["kind"] == "checkpoint_skipped"] == [newest]
    resumes = [e for e in ev if e["kind"] == "resume"]
    assert [(e["epoch"], e["step"]) for e in resumes][0] == (2, previous)  # past the corrupt newest
    leases = read_leases(store.storage, name)
    assert [x["epoch"] for x in leases] == [1, 2, 3]
    taken = leases[2]["ts"]
    late = [e for e in ev if e.get("epoch") == 2 and e["ts"] > taken + SLACK_S and e["kind"] != "superseded"]
    assert all(e["kind"] != "checkpoint" for e in late), late  # commits ask the lease afresh
    assert all(e["ts"] <= taken + MAX_AGE_S + SLACK_S for e in late), late
    assert [e["epoch"] for e in ev if e["kind"] == "finish"] == [3]
    assert [e["epoch"] for e in ev if e["kind"] == "superseded"] == [2]
    assert [x["epoch"] for x in summarize(name, ev).superseded] == [2]
    assert_identical(reference, download_run(s3_server, name, tmp_path))
    prom = tmp_path / "s3.prom"
    p = spotrun_runs(s3_server.root, "--prometheus", str(prom), env=s3_server.env())
    line = states(p.stdout)[name]
    assert line[2:5] == ["finished", "40/40", "2"], p.stdout  # the notice and the takeover survived
    assert line[-1] == "100%", p.stdout  # both relaunches reached a first step
    check_prometheus(prom, {name: "finished"}, exact=False)  # the bucket holds other tests' runs too
    # The secret key was in the environment of every process; it is in nothing spotrun wrote.
    storage = open_storage(s3_server.root)
    written = [json.dumps(ev).encode(), log.read_bytes(), (tmp_path / "old.txt").read_bytes()]
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
