"""Two live attempts of one fine-tune run on the S3 server: the older stops, the newer finishes.

What a managed-job controller does after losing touch with a VM that in fact still runs: it launches
the same run again. The older attempt must stop (exit 76) and write nothing after the newer one took
the lease (bar its one `superseded` event, in its own events object); the newer one finishes with
the weights of an uninterrupted run.

The spot contract takes the lease at launch and hands its epoch to the Train workers; rank 0 finds
the newer epoch at its next step and every rank stands down. The lease's create-if-absent on each
backend (S3's If-None-Match, GCS's ifGenerationMatch, local O_EXCL) is raced in test_lease.py; the
attempt-level behaviour above is the same code for all of them, so it runs on S3 alone.
"""

from __future__ import annotations

import pytest
from conftest import args_for, assert_identical, kill_tree, launch, wait_for

from spotrun.core.events import read_events
from spotrun.core.storage import open_storage
from spotrun.recovery.checkpoint import CheckpointStore
from spotrun.recovery.history import summarize
from spotrun.recovery.lease import MAX_AGE_S, read_leases

pytestmark = pytest.mark.slow
SLACK_S = 2.0  # a write whose fence answer came just before the newer lease appeared


@pytest.mark.timeout(1800)
def test_two_live_attempts_older_stops_newer_finishes_identical(s3_server, reference, tmp_path, monkeypatch):
    srv = s3_server
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    storage, name = open_storage(srv.root), "two-attempts"
    store = CheckpointStore(storage, name)
    args = args_for(srv.root, name)
    # the older runs slowly (same numbers): still training when the newer, at full speed, takes the lease
    old = launch([*args, "debug.step_sleep_s=1.0"], tmp_path / "old.txt", srv.env())
    new = None
    try:
        wait_for(lambda: store.committed_steps(), old, timeout=300, what="the older attempt's first commit")
        new = launch(args, tmp_path / "new.txt", srv.env())
        assert old.wait(timeout=300) == 76, (tmp_path / "old.txt").read_text()[-3000:]
        assert new.wait(timeout=400) == 0, (tmp_path / "new.txt").read_text()[-3000:]
    finally:
        kill_tree(old)
        if new is not None:
            kill_tree(new)
    leases = read_leases(storage, name)
    assert [x["epoch"] for x in leases] == [1, 2]
    taken = leases[1]["ts"]
    ev = read_events(storage, name)
    late = [e for e in ev if e.get("epoch") == 1 and e["ts"] > taken + SLACK_S and e["kind"] != "superseded"]
    assert all(e["kind"] != "checkpoint" for e in late), late  # commits ask the lease afresh
    assert all(e["ts"] <= taken + MAX_AGE_S + SLACK_S for e in late), late
    assert [e["epoch"] for e in ev if e["kind"] == "finish"] == [2]
    assert [e["epoch"] for e in ev if e["kind"] == "superseded"] == [1]
    assert [x["epoch"] for x in summarize(name, ev).superseded] == [1]
    run_dir = tmp_path / name / "final"
    run_dir.mkdir(parents=True)
    blob = storage.read_bytes(storage.path(name, "final", "model.safetensors"))
    (run_dir / "model.safetensors").write_bytes(blob)
    assert_identical(reference, tmp_path / name)
