"""The local spot market end to end: the real pipeline reclaimed on a schedule and relaunched by
`spotrun chaos`, then checked against the uninterrupted reference run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, args_for, assert_identical, events, pipeline_env

pytestmark = pytest.mark.slow


def chaos(args: list[str], overrides: list[str], log, timeout: float = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spotrun.ops.cli", "chaos", "--log", str(log), *args, "--", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=timeout)


def tails(r: subprocess.CompletedProcess, log) -> str:
    """What a failed chaos run printed, and the end of its pipelines' log."""
    return r.stdout[-2000:] + r.stderr[-2000:] + log.read_text()[-3000:]


@pytest.mark.timeout(2400)  # seven launches and the shared reference run, on a possibly loaded host
def test_every_kind_of_reclaim_in_one_run_loses_nothing(storage, reference):
    """One run reclaimed six ways, relaunched after each: a VM shutdown (SIGTERM to every process:
    driver, Ray's daemons, the Train workers) during start-up, mid-write and mid-run; a hard kill
    mid-run and mid-write; a cloud metadata notice. Each notice ends in exit 75 with what it
    committed said; nothing committed is lost; the last relaunch ends bit-identical."""
    kinds = "group-start,group-ckpt,group,hard,ckpt,metadata"
    r = chaos(
        [
            "--schedule",
            # group-start: 1 s after the attempt's launch (before any step); the mid-write kinds (0)
            # take the first write of their attempt; the others 2 s after its first step
            "at:1,0,2,2,0,2",
            "--kinds",
            kinds,
            "--max-reclaims",
            "6",
            "--no-verify",
            "--grace-s",
            "25",
        ],
        # at most ~3 steps/s on any machine, so every reclaim lands well before step 40 (CI once
        # finished the run before a mid-write kill found a write); writes held 2 s to be hit mid-write
        args_for(storage, "chaos", ["debug.step_sleep_s=0.3", "debug.write_sleep_s=2"]),
        storage / "log.txt",
        timeout=2000,
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    ev = events(storage / "chaos")
    assert [e["reclaim"] for e in ev if e["kind"] == "reclaim"] == kinds.split(","), ev
    ends = [ln.rsplit(" ", 1)[-1] for ln in r.stdout.splitlines() if "attempt ended with exit" in ln]
    assert len(ends) == 7 and ends[-1] == "0", r.stdout[-2000:]
    for kind, end in zip(kinds.split(","), ends[:-1], strict=True):
        if kind.startswith("group") or kind == "metadata":  # a notice: exit 75, relaunch me
            assert end == "75", (kind, r.stdout[-2000:])
    assert not [e for e in ev if e["kind"] in ("failed", "preempted_timeout")]
    # nothing committed is lost: every resume starts from the newest checkpoint committed before it
    committed = -1
    for e in ev:
        if e["kind"] == "checkpoint":
            committed = max(committed, e["step"])
        if e["kind"] == "resume":
            assert e["step"] == committed, (e, committed)
    assert [e["source"] for e in ev if e["kind"] == "preemption_notice"] == ["sigterm"] * 3 + ["gcp"]
    start_up, mid_write, mid_run, metadata = [e for e in ev if e["kind"] == "preempted"]
    assert start_up["saved"] is False and start_up["committed"] is None  # nothing to save yet
    for notice in (mid_write, mid_run, metadata):  # each notice ended in a durable checkpoint
        assert notice["saved"] is True and notice["step"] > 0, notice
    log = (storage / "log.txt").read_text()
    # the start-up notice came while Ray was starting: recorded, and the attempt exited at once
    assert "preempted during start-up; nothing new to save; newest commit: none yet; exit 75" in log
    assert f"preempted; checkpoint at step {mid_write['step']} committed; exit 75" in log
    resumes = [e for e in ev if e["kind"] == "resume"]
    assert resumes[0]["step"] == mid_write["step"]  # the relaunch starts from the notice's commit
    # the report: a notice loses at most one step; a kill at most the checkpoint interval (8 steps)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("goodput=") and "reclaims=6" in last, last
    from spotrun.recovery.history import summarize

    s = summarize("chaos", ev)
    for restart in s.restarts:
        notice = restart["kind"].startswith("group") or restart["kind"] == "metadata"
        limit = 1 if notice else 8 + 8  # + the steps of an unfinished write
        assert restart["lost_steps"] <= limit, restart
    assert (storage / "chaos" / "report" / "timeline.png").stat().st_size > 1000
    assert_identical(storage / "chaos", reference)


def _stages(ev: list[dict]) -> list[bool]:
    return [e["spot"] for e in ev if e["kind"] == "launch"]


def test_after_a_reclaim_the_run_moves_to_on_demand_and_finishes_bit_identical(storage, reference):
    """cloud.fallback.after_reclaims=1 as SkyPilot's spot -> on-demand chain (chaos plays the
    controller): the spot attempt is killed, its relaunch hands over before starting Ray (exit 0),
    and the on-demand task resumes from the last commit and finishes."""
    # commits every 4 steps (the cadence changes no weight), so the kill 7 s in comes after one
    extra = ["debug.step_sleep_s=0.3", "checkpoint.every_steps=4", "cloud.fallback.after_reclaims=1"]
    r = chaos(
        ["--schedule", "at:7", "--kinds", "hard", "--max-reclaims", "1", "--no-verify"],
        args_for(storage, "floor", extra),
        storage / "log.txt",
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    assert "the spot stage handed over; starting the on-demand stage" in r.stdout
    ev = events(storage / "floor")
    assert _stages(ev) == [True, False]  # the spot attempt, then on-demand (the hand-over starts no Ray)
    [fb] = [e for e in ev if e["kind"] == "fallback"]
    assert fb["reason"] == "1 interrupted spot attempts >= cloud.fallback.after_reclaims=1"
    kill = next(e["ts"] for e in ev if e["kind"] == "reclaim")
    committed = max(e["step"] for e in ev if e["kind"] == "checkpoint" and e["ts"] < kill)
    assert [e["step"] for e in ev if e["kind"] == "resume"] == [committed]
    assert any(e["kind"] == "finish" and e["step"] == 40 for e in ev)
    assert_identical(storage / "floor", reference)
    from spotrun.core import cost
    from spotrun.recovery.history import summarize

    c = summarize("floor", ev, cost.load_prices()).cost
    assert c["on_demand_fallback_hours"] > 0 and c["cost_usd"] > c["spot_cost_usd"]


def test_a_deadline_the_spot_run_would_miss_moves_it_to_on_demand_mid_run(storage, reference):
    """The projected spot finish passes cloud.fallback.deadline: rank 0 posts the deadline notice,
    the loop commits a checkpoint at once, the spot stage exits 0, on-demand resumes from it."""
    import datetime as dt

    # At >= 1 s/step the 37 steps after step 3 (the first the projection reads) take >= 37 s: past a
    # deadline 50 s from now once start-up takes 13 s or more (25-35 s here, 60-100 s in CI), while the
    # driver's own check, before Ray starts (~10 s in here, ~30 s on a loaded CI machine), still finds
    # the deadline ahead: the hand-over comes from the projection mid-run, never from the start-up path.
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=50)).isoformat(timespec="seconds")
    extra = ["debug.step_sleep_s=1.0", f"cloud.fallback.deadline={deadline}"]
    r = chaos(
        ["--max-reclaims", "0", "--no-verify"], args_for(storage, "deadline", extra), storage / "log.txt"
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    ev = events(storage / "deadline")
    assert _stages(ev) == [True, False]
    [fb] = [e for e in ev if e["kind"] == "fallback"]
    assert (
        fb["reason"].startswith("projected spot finish ") and "passes cloud.fallback.deadline" in fb["reason"]
    )
    [notice] = [e for e in ev if e["kind"] == "preemption_notice"]
    assert notice["source"] == "deadline" and notice["step"] < 40
    [resume] = [e for e in ev if e["kind"] == "resume"]
    assert resume["step"] == notice["step"]  # the handover lost no step
    assert_identical(storage / "deadline", reference)


def test_node_loss_shrinks_the_group_and_the_run_finishes(storage):
    """Two one-CPU worker nodes in a local multi-node Ray cluster; one is removed mid-run. Elastic
    training ([1, 2] workers) restarts on the node that is left, in the same driver, and finishes."""
    # >= 1 s a step: the node goes 8 s after the first step, mid-run on any machine
    extra = ["trainer.num_workers=[1,2]", "checkpoint.every_steps=2", "trainer.max_steps=16"]
    extra.append("debug.step_sleep_s=1.0")
    r = chaos(
        ["--schedule", "at:8", "--kinds", "node", "--max-reclaims", "1", "--no-verify"],
        args_for(storage, "node", extra),
        storage / "log.txt",
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    ev = events(storage / "node")
    assert [e["reclaim"] for e in ev if e["kind"] == "reclaim"] == ["node"]
    assert len({e["pid"] for e in ev if e["kind"] == "launch"}) == 1  # one driver: Ray Train recovered
    lost_at = next(e["ts"] for e in ev if e["kind"] == "reclaim")
    before = [e["world_size"] for e in ev if e["kind"] in ("start", "resume") and e["ts"] < lost_at]
    after = [e["world_size"] for e in ev if e["kind"] in ("start", "resume") and e["ts"] > lost_at]
    assert before == [2] and after and after[-1] == 1, (before, after)
    assert any(e["kind"] == "finish" and e["step"] == 16 for e in ev)
