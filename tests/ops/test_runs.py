"""`spotrun runs`: runs of the real tiny fine-tune that finished, were preempted and are running,
listed from their events on local disk and on the S3 server; the Prometheus file parses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, events, kill_tree, launch, run, wait_for
from prometheus_client.parser import text_string_to_metric_families

from spotrun.core.storage import open_storage
from spotrun.ops import runs

FAST = [*TINY, "trainer.max_steps=12", "checkpoint.every_steps=4"]
SLOW = [*FAST, "debug.step_sleep_s=0.5"]  # room to act mid-run


def spotrun_runs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spotrun", "runs", "--plain", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def states(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in table.splitlines()[2:]}


def preempt(args: list[str], committed, log, env: dict | None = None) -> None:
    """Start a run, let it commit, SIGTERM its whole process group (a VM shutdown): exit 75."""
    proc = launch(args, log, env)
    try:
        wait_for(committed, proc, what="a committed checkpoint", interval=1.0)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    finally:
        kill_tree(proc)


def check_prometheus(path, expected: dict[str, str]) -> None:
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    info = {s.labels["run"]: s.labels["state"] for s in families["spotrun_run_info"].samples}
    assert info == expected
    assert {"spotrun_run_goodput_ratio", "spotrun_run_checkpoint_age_seconds"} <= set(families)
    assert not list(path.parent.glob("*.tmp"))  # written whole, then renamed


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_local_finished_preempted_running_then_lost(storage, tmp_path):
    log = tmp_path / "log.txt"
    assert run([*FAST, f"storage.root={storage}", "run.name=done"], log) == 0, log.read_text()[-3000:]
    preempt(
        [*SLOW, f"storage.root={storage}", "run.name=cut"],
        lambda: events(storage / "cut") and any(e["kind"] == "checkpoint" for e in events(storage / "cut")),
        log,
    )
    live = launch([*SLOW, "trainer.max_steps=400", f"storage.root={storage}", "run.name=live"], log)
    try:
        wait_for(
            lambda: any(e["kind"] == "first_step" for e in events(storage / "live")), live, what="step 1"
        )
        prom = tmp_path / "prom" / "spotrun.prom"
        prom.parent.mkdir()
        p = spotrun_runs(str(storage), "--prometheus", str(prom))
        assert p.returncode == 0, p.stderr
        rows = states(p.stdout)
        assert rows["done"][1:4] == ["finetune", "finished", "12/12"], p.stdout
        assert rows["cut"][2] == "preempted" and rows["live"][2] == "running", p.stdout
        check_prometheus(prom, {"done": "finished", "cut": "preempted", "live": "running"})
    finally:
        kill_tree(live)  # SIGKILL: no terminal event, the heartbeats stop
    later = {r.run: r for r in runs.collect(open_storage(str(storage)), now=time.time() + 3600)}
    assert later["live"].state == "lost" and later["done"].state == "finished"
    assert later["done"].cost_usd is not None and later["done"].goodput > 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_s3_running_preempted_then_finished_after_a_resume(s3_server, tmp_path):
    env = s3_server.env()
    name = f"s3run-{int(time.time())}"
    # 30 steps: the reclaim lands mid-run even when listing the bucket is slow
    args = [*SLOW, "trainer.max_steps=30", f"storage.root={s3_server.root}", f"run.name={name}"]
    storage = open_storage(s3_server.root, endpoint=s3_server.endpoint)
    log = tmp_path / "log.txt"

    def row():
        listed = {r.run: r for r in runs.collect(storage)}
        return listed.get(name)

    def committed():
        r = row()
        return r is not None and r.checkpoint_age_s is not None and r.state == "running"

    preempt(args, committed, log, env)  # seen running with a commit, then reclaimed
    p = spotrun_runs(s3_server.root, env=env)
    assert p.returncode == 0 and states(p.stdout)[name][2] == "preempted", p.stdout + p.stderr

    assert run(args, log, env=env) == 0, log.read_text()[-3000:]  # the relaunch resumes and finishes
    p = spotrun_runs(s3_server.root, "--prometheus", str(tmp_path / "s3.prom"), env=env)
    line = states(p.stdout)[name]
    assert line[2:5] == ["finished", "30/30", "1"], p.stdout  # one reclaim survived
    assert line[-1] == "100%", p.stdout  # the one relaunch reached a first step
    check_prometheus(tmp_path / "s3.prom", {name: "finished"})


def test_watch_refreshes(storage, tmp_path):
    """--watch prints the table again every --every seconds until interrupted."""
    (storage / "r" / "events.jsonl").parent.mkdir()
    (storage / "r" / "events.jsonl").write_text(
        json.dumps({"ts": time.time(), "kind": "launch", "source": "driver", "pid": 1}) + "\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotrun", "runs", str(storage), "--watch", "--every", "1", "--plain"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)  # start-up on a loaded machine, then a few refreshes
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.count("spotrun runs under") >= 2, out
