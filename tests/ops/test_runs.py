"""`spotrun runs`: runs of the real tiny fine-tune that finished, are running and were lost, listed
from their events on local disk (preempted and resumed, on the S3 server:
tests/core/test_storage_buckets.py); the Prometheus file parses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    REPO,
    TINY,
    check_prometheus,
    events,
    kill_tree,
    launch,
    spotrun_runs,
    states,
    wait_for,
)

from spotrun.core.storage import open_storage
from spotrun.ops import runs

FAST = [*TINY, "trainer.max_steps=12", "checkpoint.every_steps=4"]
SLOW = [*FAST, "debug.step_sleep_s=0.5"]  # room to act mid-run


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_local_finished_running_then_lost(storage, reference, tmp_path):
    log = tmp_path / "log.txt"
    shutil.copytree(reference, storage / "done")  # the shared uninterrupted run: finished, 40 steps
    # (a preempted run's row, and a resumed one's: the S3 run of tests/core/test_storage_buckets.py)
    live_args = [*SLOW, "trainer.max_steps=400", "trainer.num_workers=1"]  # one worker is enough to list
    live = launch([*live_args, f"storage.root={storage}", "run.name=live"], log)
    try:
        wait_for(
            lambda: any(e["kind"] == "first_step" for e in events(storage / "live")), live, what="step 1"
        )
        prom = tmp_path / "prom" / "spotrun.prom"
        prom.parent.mkdir()
        p = spotrun_runs(str(storage), "--prometheus", str(prom))
        assert p.returncode == 0, p.stderr
        rows = states(p.stdout)
        assert rows["done"][1:4] == ["finetune", "finished", "40/40"], p.stdout
        assert rows["live"][2] == "running", p.stdout
        check_prometheus(prom, {"done": "finished", "live": "running"})
    finally:
        kill_tree(live)  # SIGKILL: no terminal event, the heartbeats stop
    later = {r.run: r for r in runs.collect(open_storage(str(storage)), now=time.time() + 3600)}
    assert later["live"].state == "lost" and later["done"].state == "finished"
    assert later["done"].cost_usd is not None and later["done"].goodput > 0


# Running on S3 with a commit, preempted, then finished after a resume (one reclaim survived):
# tests/core/test_storage_buckets.py lists its S3 run with `spotrun runs` at each of those points.


def test_watch_refreshes(storage, tmp_path):
    """--watch prints the table again every --every seconds until interrupted."""
    (storage / "r" / "events.jsonl").parent.mkdir()
    (storage / "r" / "events.jsonl").write_text(
        json.dumps({"ts": time.time(), "kind": "launch", "source": "driver", "pid": 1}) + "\n"
    )
    # Ctrl-C as from a terminal: a child inherits an ignored SIGINT (and Python then never raises
    # KeyboardInterrupt), so this process holds a handler while it starts the child (reset at exec)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotrun", "runs", str(storage), "--watch", "--every", "1", "--plain"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, before)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    out = []
    try:
        for line in proc.stdout:  # until the second table (the first refresh) is printed
            out.append(line)
            if sum("spotrun runs under" in x for x in out) >= 2:
                break
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit on SIGINT (ours: {before}, blocked here: {blocked})") from None
    finally:
        proc.kill()
    text = "".join(out) + rest
    assert proc.returncode == 0 and text.count("spotrun runs under") >= 2, (text, before, blocked)
