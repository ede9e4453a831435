"""The on-demand floor's decisions (spotrun.recovery.fallback) and what it costs in the report: config in,
decision out, no cluster. The end-to-end chain runs in test_chaos.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from spotrun.core.config import ConfigError, check_fallback
from spotrun.recovery import fallback
from spotrun.recovery.history import summarize

T0 = 1_800_000_000.0


def cfg(after=None, deadline=None, spot=True):
    return OmegaConf.create(
        {"cloud": {"use_spot": spot, "fallback": {"after_reclaims": after, "deadline": deadline}}}
    )


def launch(ts, spot=True):
    return {
        "kind": "launch",
        "ts": ts,
        "started_ts": ts,
        "spot": spot,
        "cloud": "local",
        "accelerator": "cpu",
    }


@pytest.fixture
def chained(monkeypatch):
    monkeypatch.setenv(fallback.STAGE_ENV, "1")


def test_after_n_reclaims_the_next_spot_attempt_hands_over(chained):
    c = cfg(after=2)
    assert fallback.reason_at_start(c, [launch(T0)], T0 + 100) is None
    reason = fallback.reason_at_start(c, [launch(T0), launch(T0 + 50)], T0 + 100)
    assert reason == "2 interrupted spot attempts >= cloud.fallback.after_reclaims=2"
    # a notice that announces the 2nd reclaim hands over at once: no spot relaunch is spent on it
    sigterm = {"source": "sigterm", "ts": T0 + 90}
    assert fallback.reason_at_notice(c, sigterm, [launch(T0)]) is None
    assert (
        fallback.reason_at_notice(c, sigterm, [launch(T0), launch(T0 + 50)])
        == "reclaim 2 >= cloud.fallback.after_reclaims=2"
    )
    # on-demand attempts are not spot reclaims
    assert fallback.spot_attempts([launch(T0), launch(T0 + 50, spot=False)]) == 1


def test_nothing_hands_over_without_an_on_demand_stage_after_it(monkeypatch):
    """A plain `sky jobs launch sky/finetune.yaml`, or a local run: exit 0 would end the job unfinished."""
    monkeypatch.delenv(fallback.STAGE_ENV, raising=False)
    history = [launch(T0), launch(T0 + 50), launch(T0 + 90)]
    assert fallback.reason_at_start(cfg(after=1), history, T0 + 100) is None
    assert fallback.reason_at_notice(cfg(after=1), {"source": "deadline", "ts": T0}, history) is None
    monkeypatch.setenv(fallback.STAGE_ENV, "1")
    assert fallback.reason_at_start(cfg(after=1, spot=False), history, T0 + 100) is None  # on-demand stage


def test_deadline_projection_uses_the_runs_goodput(chained):
    deadline = fallback.parse_deadline("2027-01-15T08:00:00+00:00")
    now = deadline - 1000
    # 100 steps left at 5 s: 500 s of compute; at goodput 1 it finishes in time, at 0.4 it does not
    assert fallback.reason_at_deadline(deadline, now, 900, 1000, 5.0, 1.0) is None
    late = fallback.reason_at_deadline(deadline, now, 900, 1000, 5.0, 0.4)
    assert late.startswith("projected spot finish 2027-01-15T08:04:10+00:00 (goodput 0.40)")
    assert fallback.reason_at_start(cfg(deadline="2027-01-15T08:00:00Z"), [], deadline + 1).endswith(
        "has passed"
    )
    assert fallback.reason_at_notice(cfg(deadline="x"), {"source": "deadline", "reason": late}, []) == late


@pytest.mark.parametrize(
    "after,deadline,key",
    [
        (0, None, "cloud.fallback.after_reclaims=0: expected an int >= 1"),
        ("3", None, "cloud.fallback.after_reclaims='3'"),
        (None, "tomorrow", "cloud.fallback.deadline='tomorrow': expected an ISO 8601 time with a timezone"),
        (None, "2027-01-15T08:00:00", "cloud.fallback.deadline='2027-01-15T08:00:00'"),  # no timezone
    ],
)
def test_bad_fallback_config_is_one_line(after, deadline, key):
    with pytest.raises(ConfigError) as e:
        check_fallback(cfg(after, deadline))
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_report_bills_the_on_demand_stage_at_the_on_demand_rate():
    from spotrun.core import cost

    events = [
        launch(T0),
        {"kind": "first_step", "ts": T0 + 100, "step": 1, "step_s": 1.0},
        {"kind": "heartbeat", "ts": T0 + 1099, "step": 1000},
        {"kind": "fallback", "ts": T0 + 1100, "reason": "r"},
        launch(T0 + 1200, spot=False),
        {"kind": "resume", "ts": T0 + 1300, "step": 1000},
        {"kind": "heartbeat", "ts": T0 + 2300, "step": 2000},
        {"kind": "finish", "ts": T0 + 2300, "step": 2000},
    ]
    s = summarize("r", events, cost.load_prices())
    c = s.cost  # local cpu: spot 0.03 $/h, on-demand 0.10 $/h
    assert c["on_demand_fallback_hours"] == pytest.approx(1100 / 3600, abs=1e-4)
    assert c["spot_cost_usd"] == pytest.approx(1100 / 3600 * 0.03, abs=1e-4)
    assert c["cost_usd"] == pytest.approx(1100 / 3600 * 0.13, abs=1e-4)
    assert s.fallback == "r"
    p = cost.Price(0.03, 0.10)
    expected = cost.effective_saving(p, 1100 / 3600, (s.useful_s + s.startup_s) / 3600, 1100 / 3600)
    assert c["effective_saving"] == pytest.approx(expected, abs=1e-3)
