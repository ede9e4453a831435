"""Goodput, lost work and cost arithmetic; the Young/Daly interval."""

from __future__ import annotations

import math

import pytest

from spotrun.core import cost
from spotrun.ops.report import markdown
from spotrun.recovery.history import observed_mtbr, summarize


def test_worked_example_70_percent_discount_10_percent_lost_saves_about_67_percent():
    p = cost.Price(spot=0.30, on_demand=1.00)
    assert p.discount == pytest.approx(0.70)
    assert cost.effective_saving(p, billed_h=1.0 / 0.9, uninterrupted_h=1.0) == pytest.approx(
        0.667, abs=0.001
    )


def test_every_price_in_the_table_is_a_discount():
    table = cost.load_prices()
    for cloud, row in table["clouds"].items():
        assert row["mtbr_s"] > 0
        for acc in row["prices"]:
            p = cost.price_for(table, cloud, acc)
            assert 0 < p.spot < p.on_demand, (cloud, acc)
    with pytest.raises(KeyError, match="the table has"):
        cost.price_for(table, "gcp", "TPU-v9")


def test_young_daly_interval_and_its_bounds():
    assert cost.young_daly(0.5, 3600, 1, 10_000) == pytest.approx(math.sqrt(3600))
    assert cost.young_daly(0.001, 3600, 10, 1800) == 10  # too cheap to matter: the floor
    assert cost.young_daly(100, 36000, 10, 1800) == 1800
    iv = cost.CheckpointInterval("auto", 10, 1800, 7200)
    assert iv.seconds == 10  # before any measurement: checkpoint often
    assert iv.observe(2.0) and iv.seconds == pytest.approx(math.sqrt(2 * 2.0 * 7200))
    assert not iv.observe(2.05)  # moved by less than 10 %: no event
    fixed = cost.CheckpointInterval(600.0, 10, 1800, 7200)
    assert not fixed.observe(5.0) and fixed.seconds == 600


def _run_with_one_hard_kill() -> list[dict]:
    """Steps take 1 s; killed at t=30 (step 20 reached, step 16 committed); resumed 10 s later."""
    ev = [{"ts": 0.0, "kind": "launch", "started_ts": 0.0, "cloud": "aws", "accelerator": "A100", "units": 1}]
    ev += [{"ts": 10.0 + s, "kind": "first_step" if s == 1 else "heartbeat", "step": s} for s in range(1, 21)]
    ev += [{"ts": 27.0, "kind": "checkpoint", "step": 16, "blocked_s": 0.1}]
    ev += [{"ts": 30.0, "kind": "reclaim", "reclaim": "hard"}]
    ev += [
        {"ts": 31.0, "kind": "launch", "started_ts": 31.0, "cloud": "aws", "accelerator": "A100", "units": 1}
    ]
    ev += [{"ts": 38.0, "kind": "resume", "step": 16}]
    ev += [
        {"ts": 40.0 + s - 16, "kind": "first_step" if s == 17 else "heartbeat", "step": s}
        for s in range(17, 41)
    ]
    ev += [{"ts": 65.0, "kind": "finish", "step": 40, "steps_run": 24, "loop_s": 24.0}]
    return ev


def test_summary_of_a_run_with_one_hard_kill():
    s = summarize("r", _run_with_one_hard_kill(), cost.load_prices())
    assert s.finished and s.final_step == 40 and s.reclaims == 1
    assert s.step_s == pytest.approx(1.0)
    (r,) = s.restarts
    assert (r["from_step"], r["resumed_step"], r["lost_steps"], r["kind"]) == (20, 16, 4, "hard")
    assert r["restart_s"] == pytest.approx(11.0)  # reclaim at 30 -> first step after resume at 41
    assert s.lost_s == pytest.approx(15.0)
    assert s.goodput == pytest.approx(40 / 65, abs=1e-4)
    assert s.checkpoint_blocked_s == pytest.approx(0.1)
    assert s.billed_s == pytest.approx(30 + 34)
    c = s.cost
    assert c["accelerator"] == "A100" and c["spot_cost_usd"] == pytest.approx(64 / 3600 * 1.5, rel=1e-3)
    assert 0 < c["effective_saving"] < c["discount"]
    assert observed_mtbr(_run_with_one_hard_kill()) == pytest.approx(64.0)
    assert "| 1 | hard | 20 | 16 | 4 |" in markdown(s)


def test_a_reclaim_during_start_up_counts_and_the_next_one_keeps_its_own_kind():
    """A VM reclaimed before its first step (nothing trained): one restart, 0 steps lost; the later
    mid-run reclaim is reported as itself, not as the start-up one."""
    ev = [
        {"ts": 0.0, "kind": "launch", "started_ts": 0.0},
        {"ts": 2.0, "kind": "reclaim", "reclaim": "group-start"},
        {"ts": 3.0, "kind": "preemption_notice", "source": "sigterm"},
        {"ts": 3.1, "kind": "preempted", "saved": False},
        {"ts": 10.0, "kind": "launch"},
        {"ts": 20.0, "kind": "start", "step": 0},
        {"ts": 21.0, "kind": "first_step", "step": 1},
        {"ts": 28.0, "kind": "checkpoint", "step": 8, "blocked_s": 0.0},
        {"ts": 30.0, "kind": "reclaim", "reclaim": "hard"},
        {"ts": 35.0, "kind": "launch"},
        {"ts": 45.0, "kind": "resume", "step": 8},
        {"ts": 46.0, "kind": "first_step", "step": 9},
        {"ts": 77.0, "kind": "finish", "step": 40},
    ]
    s = summarize("r", ev)
    assert s.reclaims == 2
    start_up, hard = s.restarts
    assert (start_up["kind"], start_up["lost_steps"], start_up["restart_s"]) == ("group-start", 0, 19.0)
    assert (hard["kind"], hard["resumed_step"]) == ("hard", 8)


def test_a_start_up_reclaim_the_loop_saw_is_one_restart_not_two():
    """The start-up SIGTERM can land just after the hand-over to Ray Train: the reclaimed attempt's
    loop records its own `start`, then the notice. That start is the reclaimed attempt's, not a
    restart (the chaos run once reported reclaims=7 for six); the next attempt's start is one."""
    ev = [
        {"ts": 0.0, "kind": "launch", "started_ts": 0.0},
        {"ts": 1.5, "kind": "reclaim", "reclaim": "group-start"},
        {"ts": 22.9, "kind": "start", "step": 0},
        {"ts": 22.91, "kind": "preemption_notice", "source": "sigterm", "step": 0},
        {"ts": 22.92, "kind": "preempted", "saved": False, "step": 0},
        {"ts": 32.0, "kind": "launch"},
        {"ts": 56.0, "kind": "start", "step": 0},
        {"ts": 56.4, "kind": "first_step", "step": 1},
        {"ts": 80.0, "kind": "finish", "step": 40},
    ]
    s = summarize("r", ev)
    assert s.reclaims == 1, s.restarts
    (r,) = s.restarts
    assert (r["kind"], r["lost_steps"], r["restart_s"]) == ("group-start", 0, 54.9)


def test_a_node_lost_before_the_first_commit_restarts_the_group_in_the_same_attempt():
    """Elastic training: a node goes before any checkpoint; Ray Train starts the group again in the
    same driver. That second start is a restart."""
    ev = [
        {"ts": 0.0, "kind": "launch", "started_ts": 0.0},
        {"ts": 20.0, "kind": "start", "step": 0},
        {"ts": 20.5, "kind": "first_step", "step": 1},
        {"ts": 24.0, "kind": "reclaim", "reclaim": "node"},
        {"ts": 50.0, "kind": "start", "step": 0},
        {"ts": 50.5, "kind": "first_step", "step": 1},
        {"ts": 80.0, "kind": "finish", "step": 30},
    ]
    s = summarize("r", ev)
    assert s.reclaims == 1 and s.restarts[0]["kind"] == "node", s.restarts


def _phased(events: list[dict], offsets: list[dict]) -> list[dict]:
    """The run above, each attempt's first_step carrying its restart budget (seconds from its start)."""
    firsts = iter(offsets)
    return [{**e, "phases": next(firsts)} if e["kind"] == "first_step" else e for e in events]


def test_restart_budget_per_attempt_and_in_total_next_to_lost_work():
    fresh = {"config": 1.0, "ray": 4.0, "fit": 4.5, "workers": 6.0, "model": 8.0, "first_step": 10.0}
    # the relaunch: marks out of order by clock skew clamp to 0; an unknown mark is ignored
    again = {"config": 0.5, "ray": 3.0, "workers": 2.5, "restored": 6.0, "first_step": 9.0, "odd": 1.0}
    s = summarize("r", _phased(_run_with_one_hard_kill(), [fresh, again]))
    a1, a2 = s.attempts
    assert a1["phases"] == {
        "config": 1.0,
        "ray": 3.0,
        "fit": 0.5,
        "workers": 1.5,
        "model": 2.0,
        "first_step": 2.0,
    }
    assert a2["phases"] == {"config": 0.5, "ray": 2.5, "workers": 0.0, "restored": 3.0, "first_step": 3.0}
    assert sum(a1["phases"].values()) == pytest.approx(a1["to_first_step_s"]) == 10.0
    assert sum(a2["phases"].values()) == pytest.approx(a2["to_first_step_s"]) == 9.0
    assert a1["resumed_step"] is None and "lost_steps" not in a1
    assert (a2["resumed_step"], a2["lost_steps"], a2["restart_s"]) == (16, 4, 11.0)
    assert s.phases_total == {
        "config": 1.5,
        "ray": 5.5,
        "fit": 0.5,
        "workers": 1.5,
        "model": 2.0,
        "restored": 3.0,
        "first_step": 5.0,
    }
    md = markdown(s)
    assert "| Ray up | 3.0 | 2.5 | 5.5 |" in md
    assert "| checkpoint found, verified, loaded |  | 3.0 | 3.0 |" in md
    assert "| **start -> first step** | 10.0 | 9.0 | 19.0 |" in md
    assert "| steps lost (recomputed) |  | 4 | 4 |" in md


def test_attempts_without_phases_print_no_budget():
    s = summarize("r", _run_with_one_hard_kill())
    assert [a.get("phases") for a in s.attempts] == [None, None] and s.phases_total == {}
    assert "phase (s)" not in markdown(s)
