"""The on-demand floor: when spot stops being worth it for a deadline-bound run, finish on on-demand.

`cloud.fallback.after_reclaims: N` and/or `cloud.fallback.deadline: "2026-12-01T18:00:00Z"` make
`spotrun launch` submit a two-task SkyPilot chain: the job on spot, then the same job on on-demand.
The spot task hands over (checkpoint committed, `fallback` event, exit 0) when

- it starts after N interrupted spot attempts (N reclaims or crashes so far), or
- a preemption notice arrives and would be the Nth reclaim (no spot relaunch is spent on it), or
- the projected finish on spot passes the deadline: now + remaining steps x step time / goodput,
  the goodput observed in the run so far (1.0 before its first reclaim).

The on-demand task resumes from the same checkpoint (same run name: the chain's first task id) and
runs to the end; after a spot task that finished the run it only sees `final/` and exits. A task
hands over only when SPOTRUN_ON_DEMAND_STAGE=1 says an on-demand stage follows it (the rendered
chain and `spotrun chaos` set it); otherwise it stays on spot, whatever the config says.
"""

from __future__ import annotations

import datetime as dt
import os

from spotrun.core.config import parse_deadline  # noqa: F401 - the chain renders with it
from spotrun.recovery.history import summarize

STAGE_ENV = "SPOTRUN_ON_DEMAND_STAGE"
DEADLINE_SOURCE = "deadline"  # the NoticeBoard source rank 0 posts when the deadline projection fails


def enabled(cfg) -> bool:
    f = cfg.cloud.fallback
    return bool(cfg.cloud.use_spot) and (f.after_reclaims is not None or f.deadline not in (None, ""))


def active(cfg) -> bool:
    """Configured, on spot, and an on-demand stage follows this one."""
    return enabled(cfg) and os.environ.get(STAGE_ENV) == "1"


def spot_attempts(history: list[dict]) -> int:
    """Earlier spot attempts of this run: each `launch` on spot that did not finish it."""
    return sum(1 for e in history if e["kind"] == "launch" and e.get("spot", True))


def reason_at_start(cfg, history: list[dict], now: float) -> str | None:
    """Why this spot attempt hands over before it starts Ray, or None."""
    if not active(cfg):
        return None
    n, attempts = cfg.cloud.fallback.after_reclaims, spot_attempts(history)
    if n is not None and attempts >= n:
        return f"{attempts} interrupted spot attempts >= cloud.fallback.after_reclaims={n}"
    deadline = parse_deadline(cfg.cloud.fallback.deadline)
    if deadline is not None and now >= deadline:
        return f"cloud.fallback.deadline {cfg.cloud.fallback.deadline} has passed"
    return None


def reason_at_notice(cfg, notice: dict | None, history: list[dict]) -> str | None:
    """Why this notice ends the spot stage instead of asking for a spot relaunch, or None: the
    deadline projection posted it, or it announces the Nth reclaim (`history` holds this attempt's
    own `launch`, so this attempt counts)."""
    if not active(cfg):
        return None
    if (notice or {}).get("source") == DEADLINE_SOURCE:
        return notice.get("reason") or "the projected spot finish passes cloud.fallback.deadline"
    n = cfg.cloud.fallback.after_reclaims
    if n is not None and spot_attempts(history) >= n:
        return f"reclaim {spot_attempts(history)} >= cloud.fallback.after_reclaims={n}"
    return None


def projected_finish(now: float, step: int, max_steps: int, step_s: float, goodput: float) -> float:
    """When the run ends on spot at this pace: remaining compute stretched by the goodput so far."""
    return now + max(max_steps - step, 0) * step_s / max(goodput, 1e-3)


def history_goodput(history: list[dict]) -> float:
    """The run's goodput so far (useful step time / wall time) once it has been reclaimed, else 1."""
    if not any(e["kind"] == "resume" for e in history):
        return 1.0
    return summarize("run", history).goodput or 1.0


def reason_at_deadline(
    deadline: float | None, now: float, step: int, max_steps: int, step_s: float, goodput: float
):
    """Why the loop should hand over now (the projected spot finish passes the deadline), or None."""
    if deadline is None or step_s <= 0:
        return None
    finish = projected_finish(now, step, max_steps, step_s, goodput)
    if finish <= deadline:
        return None
    late = dt.datetime.fromtimestamp(finish, dt.timezone.utc).isoformat(timespec="seconds")
    return f"projected spot finish {late} (goodput {goodput:.2f}) passes cloud.fallback.deadline"
