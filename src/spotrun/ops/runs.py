"""`spotrun runs [ROOT]`: every run under a storage root, one row each, from its events alone.

State, progress, reclaims, cost (spotrun.recovery.history.summarize, spotrun.core.cost), and the three
figures spot guides say to watch: interruption rate (reclaims per billed hour), checkpoint health (age
of the newest commit against the interval) and resume success (relaunches that reached a first step).
A run with no terminal event whose newest event is older than a few heartbeats is `lost`: the
process that wrote it is gone (killed, or its VM reclaimed without a word). `--prometheus FILE`
writes the same figures in Prometheus' text format (node-exporter textfile collector convention).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from spotrun.core import cost
from spotrun.core.events import FILENAME, FOLDER, read_events
from spotrun.core.storage import Storage
from spotrun.recovery.history import summarize

# The fine-tune beats every 5 s on local disk and 30 s on a bucket (spotrun.recovery.pacing);
# a few missed beats, plus a start-up's silence (Ray, the model load), mean nobody writes any more.
STALE_S = {True: 90.0, False: 180.0}
INTERRUPTED = ("reclaim", "preemption_notice", "preempted", "preempted_timeout")
COLUMNS = (
    "run", "job", "state", "step", "reclaims", "ckpt age", "ckpt health",
    "goodput", "cost $", "saving", "reclaims/h", "resumes ok",
)  # fmt: skip


@dataclass
class Row:
    run: str
    job: str
    state: str  # running, preempted, finished, failed, on-demand, fell back to on-demand, superseded, lost
    step: int
    max_steps: int | None
    reclaims: int
    checkpoint_age_s: float | None  # now - the newest commit
    checkpoint_interval_s: float | None  # the interval announced (auto) or seen between commits
    goodput: float
    cost_usd: float | None
    effective_saving: float | None
    interruptions_per_h: float | None  # interrupted attempts per billed hour
    resume_success: float | None  # relaunches that reached a first step / relaunches that ended
    last_event_age_s: float

    @property
    def checkpoint_health(self) -> float | None:
        """Newest commit's age / interval: <= 1 on time, > 2 a commit is overdue (running runs)."""
        if self.checkpoint_age_s is None or not self.checkpoint_interval_s:
            return None
        return self.checkpoint_age_s / self.checkpoint_interval_s


def run_names(storage: Storage) -> list[str]:
    """Folders under the root holding events (events.jsonl, or events/ objects on a bucket)."""
    names = set()
    for rel in storage.list_files(storage.base):
        parts = rel.split("/")
        if (len(parts) == 2 and parts[1] == FILENAME) or (len(parts) == 3 and parts[1] == FOLDER):
            names.add(parts[0])
    return sorted(names)


def attempts(events: list[dict]) -> list[list[dict]]:
    """The events split at each `launch` (one list per pipeline start)."""
    out: list[list[dict]] = []
    for e in events:
        if e["kind"] == "launch" or not out:
            out.append([])
        out[-1].append(e)
    return out


def state(events: list[dict], now: float, local: bool) -> str:
    kinds = [e["kind"] for e in events]
    if "finish" in kinds:
        return "finished"
    last = attempts(events)[-1]
    epoch = last[0].get("epoch")  # a stale attempt's late events (its `superseded`) are not this one's
    last = [e for e in last if epoch is None or e.get("epoch", epoch) == epoch]
    last_kinds = [e["kind"] for e in last]
    for kind, name in (
        ("fallback", "fell back to on-demand"),
        ("failed", "failed"),
        ("superseded", "superseded"),
    ):
        if kind in last_kinds:
            return name
    if any(k in INTERRUPTED for k in last_kinds):
        return "preempted"
    if now - events[-1]["ts"] > STALE_S[local]:
        return "lost"
    return "running" if last[0].get("spot", True) else "on-demand"


def _started(attempt: list[dict]) -> bool:
    """It reached a first step, or had none left to take (resumed at the last step: finished)."""
    return any(e["kind"] in ("first_step", "finish") for e in attempt)


def resume_success(events: list[dict], running: bool) -> float | None:
    relaunches = attempts(events)[1:]
    if running and relaunches and not _started(relaunches[-1]):
        relaunches = relaunches[:-1]  # still starting: not a failure yet
    if not relaunches:
        return None
    return sum(_started(a) for a in relaunches) / len(relaunches)


def interval(events: list[dict]) -> float | None:
    announced = [e["seconds"] for e in events if e["kind"] == "checkpoint_interval"]
    if announced:
        return float(announced[-1])
    ts = [e["ts"] for e in events if e["kind"] == "checkpoint"]
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False) if b > a]
    return statistics.median(gaps) if gaps else None


def row(name: str, events: list[dict], prices: dict, now: float, local: bool) -> Row:
    s = summarize(name, events, prices)
    launch = next((e for e in reversed(events) if e["kind"] == "launch"), {})
    st = state(events, now, local)
    ckpts = [e["ts"] for e in events if e["kind"] == "checkpoint"]
    interrupted = sum(any(e["kind"] in INTERRUPTED for e in a) for a in attempts(events))
    billed_h = s.billed_s / 3600
    return Row(
        run=name,
        job=launch.get("job") or name.split("-", 1)[0],
        state=st,
        step=s.final_step,
        max_steps=launch.get("max_steps"),
        reclaims=s.reclaims,
        checkpoint_age_s=round(now - ckpts[-1], 1) if ckpts else None,
        checkpoint_interval_s=interval(events),
        goodput=s.goodput,
        cost_usd=s.cost.get("cost_usd"),
        effective_saving=s.cost.get("effective_saving"),
        interruptions_per_h=round(interrupted / billed_h, 3) if billed_h > 0 else None,
        resume_success=resume_success(events, st in ("running", "on-demand")),
        last_event_age_s=round(now - events[-1]["ts"], 1),
    )


def collect(storage: Storage, prices: dict | None = None, now: float | None = None) -> list[Row]:
    prices = prices if prices is not None else cost.load_prices()
    now = time.time() if now is None else now
    rows = []
    for name in run_names(storage):
        events = read_events(storage, name)
        if events:
            rows.append(row(name, events, prices, now, storage.is_local))
    return rows


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def cells(r: Row) -> list[str]:
    """One row of the table, as text."""
    health = r.checkpoint_health
    return [
        r.run,
        r.job,
        r.state,
        f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
        str(r.reclaims),
        _age(r.checkpoint_age_s),
        "-" if health is None else f"{health:.1f}x of {_age(r.checkpoint_interval_s)}",
        f"{r.goodput:.2f}",
        "-" if r.cost_usd is None else f"{r.cost_usd:.4f}",
        "-" if r.effective_saving is None else f"{r.effective_saving:.0%}",
        "-" if r.interruptions_per_h is None else f"{r.interruptions_per_h:.2f}",
        "-" if r.resume_success is None else f"{r.resume_success:.0%}",
    ]


def table(rows: list[Row]) -> str:
    """A plain-text table (what `--plain`, pipes and tests read)."""
    grid = [list(COLUMNS), *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def rich_table(rows: list[Row], title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in COLUMNS:
        t.add_column(c)
    for r in rows:
        t.add_row(*cells(r))
    return t


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


GAUGES = (
    ("step", "step", "Furthest step reached."),
    ("max_steps", "max_steps", "The run's step goal."),
    ("reclaims", "reclaims_total", "Reclaims survived (relaunches that resumed)."),
    ("checkpoint_age_s", "checkpoint_age_seconds", "Seconds since the newest committed checkpoint."),
    ("checkpoint_interval_s", "checkpoint_interval_seconds", "Checkpoint interval (announced or observed)."),
    ("checkpoint_health", "checkpoint_health_ratio", "Newest commit's age over the interval."),
    ("goodput", "goodput_ratio", "Useful step time over wall time."),
    ("cost_usd", "cost_usd", "Cost so far, overhead included (conf/prices.yaml)."),
    ("effective_saving", "effective_saving_ratio", "1 - cost / on-demand cost of an uninterrupted run."),
    ("interruptions_per_h", "interruptions_per_billed_hour", "Interrupted attempts per billed hour."),
    ("resume_success", "resume_success_ratio", "Relaunches that reached a first step."),
    ("last_event_age_s", "last_event_age_seconds", "Seconds since the run's newest event."),
)


def prometheus(rows: list[Row]) -> str:
    """The rows in Prometheus' text exposition format (one gauge family per figure)."""
    lines = ["# HELP spotrun_run_info The run's job kind and state.", "# TYPE spotrun_run_info gauge"]
    lines += [
        f'spotrun_run_info{{run="{_label(r.run)}",job="{_label(r.job)}",state="{r.state}"}} 1' for r in rows
    ]
    for attr, metric, help_text in GAUGES:
        values = [(r.run, getattr(r, attr)) for r in rows if getattr(r, attr) is not None]
        lines += [f"# HELP spotrun_run_{metric} {help_text}", f"# TYPE spotrun_run_{metric} gauge"]
        lines += [f'spotrun_run_{metric}{{run="{_label(n)}"}} {float(v)!r}' for n, v in values]
    return "\n".join(lines) + "\n"


def write_prometheus(rows: list[Row], path: str) -> None:
    """Write, then rename: the textfile collector never reads a half-written file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(prometheus(rows))
    os.replace(tmp, path)
