"""A run's history, from its events.jsonl alone: attempts, restarts, lost work, goodput and cost.

Attempts start at `launch` events (one per pipeline start). A restart is a `resume` event; the
work it lost is the steps between the furthest step seen before it and the step it resumed from,
plus the seconds from the reclaim (or the last sign of life) to the next first step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from spotrun.core import cost

PROGRESS = ("first_step", "heartbeat")  # steps reached, timed right at the step
REACHED = (*PROGRESS, "checkpoint", "preempted", "finish")
# An attempt's restart budget, in order: each phase ends at its mark, recorded as seconds from the
# attempt's start in its `first_step` event's `phases` (the driver's marks travel to rank 0 with the job).
PHASES = (
    ("config", "compose + check the config"),
    ("prepared", "preflight: model + data found"),
    ("lease", "lease + launch event"),
    ("ray", "Ray up"),
    ("fit", "notice board + job handed to Ray Train"),
    ("workers", "Train controller + worker processes"),
    ("imports", "worker imports (torch, transformers, spotrun)"),
    ("loop", "Ray Train worker set-up (process group)"),
    ("model", "task + model + optimizer built"),
    ("restored", "checkpoint found, verified, loaded"),
    ("ready", "logger, start/resume event, DDP wrap, notice check"),
    ("first_step", "the first step"),
)


@dataclass
class Restart:
    at_ts: float  # the reclaim (or the last sign of life before it)
    from_step: int  # the furthest step seen before the restart
    resumed_step: int
    restart_s: float = 0.0  # reclaim -> next first step
    kind: str = "unknown"
    attempt: int = 0  # the attempt (1 = the first launch) that resumed

    @property
    def lost_steps(self) -> int:
        return max(0, self.from_step - self.resumed_step)


@dataclass
class RunSummary:
    run: str
    finished: bool
    final_step: int
    wall_s: float
    billed_s: float
    step_s: float
    useful_s: float
    goodput: float
    reclaims: int
    lost_s: float
    lost_steps: int
    checkpoint_blocked_s: float
    checkpoints: int
    resume_s: float
    startup_s: float
    fallback: str | None = None  # why the run moved to on-demand (spotrun.recovery.fallback), if it did
    superseded: list[dict] = field(default_factory=list)  # stale attempts fenced off (recovery.lease)
    restarts: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)  # per attempt: its phases (seconds each)
    phases_total: dict = field(default_factory=dict)  # seconds per phase, over all attempts
    cost: dict = field(default_factory=dict)


def _step_seconds(events: list[dict]) -> float:
    """Mean seconds per step from consecutive progress marks with no restart in between."""
    dt = dsteps = 0.0
    prev = None
    for e in events:
        if e["kind"] in ("launch", "resume", "start"):
            prev = None
        elif e["kind"] in PROGRESS:
            if prev and e["step"] > prev[1]:
                dt, dsteps = dt + e["ts"] - prev[0], dsteps + e["step"] - prev[1]
            prev = (e["ts"], e["step"])
    if dsteps:
        return dt / dsteps
    done = [e for e in events if e["kind"] == "finish" and e.get("steps_run")]  # runs without heartbeats
    return sum(e["loop_s"] for e in done) / sum(e["steps_run"] for e in done) if done else 0.0


def _restarts(events: list[dict]) -> list[Restart]:
    out: list[Restart] = []
    furthest, last_ts, reclaim, pending, attempt = 0, None, None, None, 0
    started = False  # this attempt's loop has started (a later start in it is Ray Train's retry)
    unstarted = None  # the attempt a pending reclaim came to before its loop started, if it did
    for e in events:
        k = e["kind"]
        if k == "launch":
            attempt, started = attempt + 1, False
        if k in ("reclaim", "preemption_notice") and reclaim is None:
            # a reclaim in start-up whose attempt still reaches its own first `start` (the notice
            # landed after the hand-over to Ray Train) is restarted by the next attempt, not by that
            reclaim, unstarted = e, None if started else attempt
        elif k == "resume" or (
            k == "start"
            and ((reclaim is not None and unstarted != attempt) or (last_ts is not None and furthest > 0))
        ):
            # a resume; a start over after progress (lost before the first checkpoint committed); or
            # a start over after a reclaim in start-up (nothing trained yet: it cost the restart only)
            e = {**e, "step": e.get("step", 0)}
            at = reclaim["ts"] if reclaim else (last_ts or e["ts"])
            kind = reclaim.get("reclaim", reclaim.get("source", "notice")) if reclaim else "unannounced"
            pending = Restart(at, furthest, e["step"], kind=kind, attempt=attempt)
            out.append(pending)
            furthest, reclaim = e["step"], None
        elif k == "first_step" and pending is not None:
            pending.restart_s, pending = round(e["ts"] - pending.at_ts, 3), None
        started = started or k in ("start", "resume")
        if k in REACHED:
            furthest = max(furthest, e.get("step", 0))  # a notice at start-up has no step
        if k != "reclaim":
            last_ts = e["ts"]
    return out


def phase_seconds(offsets: dict[str, float]) -> dict[str, float]:
    """Seconds spent in each phase, from the marks' offsets (phases not recorded are skipped)."""
    out, prev = {}, 0.0
    for name, _ in PHASES:
        if name in offsets:
            out[name] = round(max(0.0, offsets[name] - prev), 3)
            prev = max(prev, offsets[name])
    return out


def _attempts(events: list[dict], restarts: list[Restart]) -> list[dict]:
    """One row per launch: its phases up to the first step, and what its restart lost."""
    rows: list[dict] = []
    for e in events:
        if e["kind"] == "launch":
            rows.append({"attempt": len(rows) + 1, "epoch": e.get("epoch"), "resumed_step": None})
        elif rows and e["kind"] == "resume":
            rows[-1]["resumed_step"] = e.get("step")
        elif rows and e["kind"] == "first_step" and "phases" in e and "phases" not in rows[-1]:
            rows[-1]["phases"] = phase_seconds(e["phases"])
            rows[-1]["to_first_step_s"] = e["phases"].get("first_step")
    for r in restarts:
        if 0 < r.attempt <= len(rows):
            rows[r.attempt - 1].update(lost_steps=r.lost_steps, restart_s=r.restart_s)
    return rows


def _phase_totals(attempts: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for a in attempts:
        for k, v in a.get("phases", {}).items():
            total[k] = round(total.get(k, 0.0) + v, 3)
    return total


def _billed_s(events: list[dict]) -> float:
    """Sum of attempt durations: each launch until the last event before the next launch."""
    return sum(_billed_split(events))


def _billed_split(events: list[dict]) -> tuple[float, float]:
    """(spot seconds, on-demand seconds): each attempt billed at the rate its `launch` names."""
    total, start, last, spot = [0.0, 0.0], None, None, True
    for e in events:
        if e["kind"] == "launch":
            if start is not None:
                total[0 if spot else 1] += last - start
            start, spot = e.get("started_ts", e["ts"]), e.get("spot", True)
        last = e["ts"]
    if start is not None:
        total[0 if spot else 1] += last - start
    return total[0], total[1]


def _superseded(events: list[dict]) -> list[dict]:
    """Attempts (lease epochs) that a newer one fenced off: from the `superseded` event the stale
    driver leaves, or else from its events going on after a newer epoch's launch (two alive)."""
    out = {
        e["epoch"]: {"epoch": e["epoch"], "by": e.get("newer"), "step": e.get("step"), "at_ts": e["ts"]}
        for e in events
        if e["kind"] == "superseded" and "epoch" in e
    }
    launched = {e["epoch"]: e["ts"] for e in events if e["kind"] == "launch" and "epoch" in e}
    last: dict[int, dict] = {}
    for e in events:
        if "epoch" in e:
            last[e["epoch"]] = e
    for epoch, e in last.items():
        newer = [n for n, ts in launched.items() if n > epoch and ts < e["ts"]]
        if newer and epoch not in out:
            out[epoch] = {"epoch": epoch, "by": min(newer), "step": e.get("step"), "at_ts": e["ts"]}
    return [out[k] for k in sorted(out)]


def observed_mtbr(events: list[dict]) -> float | None:
    """Mean seconds between reclaims in this run's history (billed time / restarts), or None."""
    events = sorted(events, key=lambda e: e["ts"])
    n = len(_restarts(events))
    return _billed_s(events) / n if n and any(e["kind"] == "launch" for e in events) else None


def summarize(run: str, events: list[dict], prices: dict | None = None) -> RunSummary:
    events = sorted(events, key=lambda e: e["ts"])
    if not events:
        raise ValueError(f"run {run!r} has no events")
    launches = [e for e in events if e["kind"] == "launch"]
    first = launches[0].get("started_ts", launches[0]["ts"]) if launches else events[0]["ts"]
    final_step = max((e.get("step", 0) for e in events if e["kind"] in REACHED), default=0)
    step_s, restarts = _step_seconds(events), _restarts(events)
    first_step = next((e["ts"] for e in events if e["kind"] == "first_step"), first)
    useful = final_step * step_s
    wall = events[-1]["ts"] - first
    lost = sum(r.lost_steps * step_s + r.restart_s for r in restarts)
    ckpts = [e for e in events if e["kind"] == "checkpoint"]
    s = RunSummary(
        run=run,
        finished=any(e["kind"] == "finish" for e in events),
        final_step=final_step,
        wall_s=round(wall, 3),
        billed_s=round(_billed_s(events) if launches else wall, 3),
        step_s=round(step_s, 4),
        useful_s=round(useful, 3),
        goodput=round(useful / wall, 4) if wall > 0 else 0.0,
        reclaims=len(restarts),
        lost_s=round(lost, 3),
        lost_steps=sum(r.lost_steps for r in restarts),
        checkpoint_blocked_s=round(sum(e.get("blocked_s", 0.0) for e in ckpts), 4),
        checkpoints=len(ckpts),
        resume_s=round(sum(r.restart_s for r in restarts), 3),
        startup_s=round(first_step - first, 3),
        fallback=next((e.get("reason") for e in events if e["kind"] == "fallback"), None),
        superseded=_superseded(events),
        restarts=[asdict(r) | {"lost_steps": r.lost_steps} for r in restarts],
    )
    s.attempts = _attempts(events, restarts)
    s.phases_total = _phase_totals(s.attempts)
    if prices is not None and launches:
        s.cost = _cost(s, launches[-1], _billed_split(events), prices)
    return s


def _cost(s: RunSummary, launch: dict, billed: tuple[float, float], prices: dict) -> dict:
    """Money: spot attempts at the spot rate, attempts after a fallback at the on-demand rate."""
    cloud, acc, units = launch.get("cloud", "local"), launch.get("accelerator", "cpu"), launch.get("units", 1)
    try:
        p = cost.price_for(prices, cloud, acc)
    except KeyError as e:
        return {"error": str(e).strip("'\"")}
    spot_h, on_demand_h = (x / 3600 * units for x in billed)
    uninterrupted_h = (s.useful_s + s.startup_s) / 3600 * units
    return {
        "cloud": cloud,
        "accelerator": acc,
        "units": units,
        "accelerator_hours": round(spot_h + on_demand_h, 5),
        "on_demand_fallback_hours": round(on_demand_h, 5),
        "spot_usd_per_h": p.spot,
        "on_demand_usd_per_h": p.on_demand,
        "spot_cost_usd": round(spot_h * p.spot, 5),
        "on_demand_fallback_usd": round(on_demand_h * p.on_demand, 5),
        "cost_usd": round(spot_h * p.spot + on_demand_h * p.on_demand, 5),
        "on_demand_uninterrupted_usd": round(uninterrupted_h * p.on_demand, 5),
        "discount": round(p.discount, 4),
        "effective_saving": round(cost.effective_saving(p, spot_h, uninterrupted_h, on_demand_h), 4)
        if uninterrupted_h > 0
        else None,
        "price_table_date": prices.get("date"),
    }
