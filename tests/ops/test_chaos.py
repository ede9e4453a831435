"""The local spot market end to end: the real pipeline reclaimed on a schedule and relaunched by
`spotrun chaos`, then checked against the uninterrupted reference run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from conftest import REPO, args_for, assert_identical, events, pipeline_env

pytestmark = pytest.mark.slow


def chaos(args: list[str], overrides: list[str], log, timeout: float = 1200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spotrun.ops.cli", "chaos", "--log", str(log), *args, "--", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=timeout)


def tails(r: subprocess.CompletedProcess, log) -> str:
    """What a failed chaos run printed, and the end of its pipelines' log."""
    return r.stdout[-2000:] + r.stderr[-2000:] + log.read_text()[-3000:]


def _stages(ev: list[dict]) -> list[bool]:
    return [e["spot"] for e in ev if e["kind"] == "launch"]


@pytest.mark.timeout(2400)  # eight attempts and the shared reference run, on a possibly loaded host
def test_every_kind_of_reclaim_in_one_run_loses_nothing_then_the_run_moves_to_on_demand(storage, reference):
    """One run reclaimed six ways, relaunched after each: a VM shutdown (SIGTERM to every process:
    driver, Ray's daemons, the Train workers) during start-up, mid-write and mid-run; a cloud metadata
    notice; a hard kill mid-write and mid-run. Each notice ends in exit 75 with what it committed
    said; nothing committed is lost. Then cloud.fallback.after_reclaims=6, as SkyPilot's spot ->
    on-demand chain (chaos plays the controller): the next spot attempt hands over before starting
    Ray (exit 0), and the on-demand task resumes from the last commit and ends bit-identical."""
    kinds = "group-start,group-ckpt,group,metadata,ckpt,hard"
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
        # at most 2 steps/s on any machine: a notice attempt takes ~8 steps (2 s, the second it takes
        # to see the first step, the stop), so the hard kills, after three of them, still land well
        # before step 40; writes held 2 s to be hit mid-write
        args_for(
            storage,
            "chaos",
            ["debug.step_sleep_s=0.5", "debug.write_sleep_s=2", "cloud.fallback.after_reclaims=6"],
        ),
        storage / "log.txt",
        timeout=2000,
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    ev = events(storage / "chaos")
    assert [e["reclaim"] for e in ev if e["kind"] == "reclaim"] == kinds.split(","), ev
    ends = [ln.rsplit(" ", 1)[-1] for ln in r.stdout.splitlines() if "attempt ended with exit" in ln]
    # six reclaimed spot attempts, the spot attempt that hands over, the on-demand attempt
    assert len(ends) == 8 and ends[-2:] == ["0", "0"], r.stdout[-2000:]
    for kind, end in zip(kinds.split(","), ends[:6], strict=True):
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
    # the start-up notice, 1-2 s after the attempt's `launch`: Ray now starts in ~1.5 s, so it lands
    # either while Ray starts (the driver says "preempted during start-up; ...") or just after the
    # hand-over to Ray Train (the loop stops before its first step: "preempted; ..."). Either way
    # nothing was new and it exits 75; the driver's start-up path alone, deterministically:
    # tests/recovery/test_startup_notice.py.
    assert "; nothing new to save; newest commit: none yet; exit 75" in log
    assert f"preempted; checkpoint at step {mid_write['step']} committed; exit 75" in log
    resumes = [e for e in ev if e["kind"] == "resume"]
    assert resumes[0]["step"] == mid_write["step"]  # the relaunch starts from the notice's commit
    # the hand-over: six spot attempts, then on-demand (the hand-over itself starts no Ray)
    assert "the spot stage handed over; starting the on-demand stage" in r.stdout
    assert _stages(ev) == [True] * 6 + [False]
    [fb] = [e for e in ev if e["kind"] == "fallback"]
    assert fb["reason"] == "6 interrupted spot attempts >= cloud.fallback.after_reclaims=6"
    last_kill = [e["ts"] for e in ev if e["kind"] == "reclaim"][-1]
    newest = max(e["step"] for e in ev if e["kind"] == "checkpoint" and e["ts"] < last_kill)
    assert resumes[-1]["step"] == newest and resumes[-1]["ts"] > fb["ts"]  # on-demand resumed it
    assert any(e["kind"] == "finish" and e["step"] == 40 for e in ev)
    # the report: a notice loses at most one step; a kill at most the checkpoint interval (8 steps)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("goodput=") and "reclaims=6" in last, last
    from spotrun.core import cost
    from spotrun.recovery.history import summarize

    s = summarize("chaos", ev, cost.load_prices())
    for restart in s.restarts:
        notice = restart["kind"].startswith("group") or restart["kind"] == "metadata"
        limit = 1 if notice else 8 + 8  # + the steps of an unfinished write
        assert restart["lost_steps"] <= limit, restart
    assert s.cost["on_demand_fallback_hours"] > 0 and s.cost["cost_usd"] > s.cost["spot_cost_usd"]
    assert (storage / "chaos" / "report" / "timeline.png").stat().st_size > 1000
    assert_identical(storage / "chaos", reference)


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


def test_node_loss_shrinks_the_group_and_every_sample_is_seen_once_per_epoch(storage):
    """Two one-CPU worker nodes in a local multi-node Ray cluster; one is removed mid-run. Elastic
    training ([1, 2] workers) restarts on the node that is left, in the same driver, resumes from its
    checkpoint at world size 1, and finishes; across the resize every sample of the data is seen
    exactly once per epoch."""
    rows = [json.loads(x) for x in (REPO / "data/stdlib_pairs/train.jsonl").read_text().splitlines()[:60]]
    data = storage / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # >= 0.5 s a step: the node goes 4 s after the first step (step ~8 of 30), mid-run on any machine
    extra = ["trainer.num_workers=[1,2]", "checkpoint.every_steps=2", "trainer.max_steps=30"]
    extra += ["debug.step_sleep_s=0.5", f"data.train_files={data}", "debug.trace_samples=true"]
    r = chaos(
        ["--schedule", "at:4", "--kinds", "node", "--max-reclaims", "1", "--no-verify"],
        args_for(storage, "node", extra),
        storage / "log.txt",
    )
    assert r.returncode == 0, tails(r, storage / "log.txt")
    run_dir = storage / "node"
    ev = events(run_dir)
    assert [e["reclaim"] for e in ev if e["kind"] == "reclaim"] == ["node"]
    assert len({e["pid"] for e in ev if e["kind"] == "launch"}) == 1  # one driver: Ray Train recovered
    lost_at = next(e["ts"] for e in ev if e["kind"] == "reclaim")
    before = [e["world_size"] for e in ev if e["kind"] in ("start", "resume") and e["ts"] < lost_at]
    after = [e for e in ev if e["kind"] in ("start", "resume") and e["ts"] > lost_at]
    assert before == [2] and after and after[-1]["world_size"] == 1, (before, after)
    assert any(e["kind"] == "finish" and e["step"] == 30 for e in ev)
    resume = after[-1]
    assert resume["kind"] == "resume" and resume["step"] > 0, resume

    latest: dict[tuple, dict] = {}  # (world, step, rank) -> the last write wins (replayed steps)
    for trace in (run_dir / "trace").glob("rank*.jsonl"):
        rank = int(trace.stem[4:])
        for line in trace.read_text().splitlines():
            rec = json.loads(line)
            latest[(rec["world"], rec["step"], rank)] = rec
    by_epoch = defaultdict(Counter)
    for (world, step, _), rec in latest.items():
        if (world == 2 and step <= resume["step"]) or (world == 1 and step > resume["step"]):
            by_epoch[rec["epoch"]].update(rec["ids"])
    complete = [e for e in by_epoch if e < max(by_epoch)]
    assert len(complete) >= 2  # the resize happened inside epoch 0 or 1; both are complete
    for epoch in complete:
        assert sorted(by_epoch[epoch]) == list(range(60)), epoch
        assert set(by_epoch[epoch].values()) == {1}, epoch
