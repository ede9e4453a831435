"""What a run cost and how much of it was useful, from its events.jsonl alone.

    spotrun report RUN_NAME [--root runs]          spotrun report s3://bucket/runs/RUN_NAME

The figures come from spotrun.recovery.history; this module prints them (markdown, JSON, a PNG
timeline) and writes them next to the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from spotrun.core import cost
from spotrun.core.events import read_events
from spotrun.core.storage import open_storage, split_run_uri
from spotrun.recovery.history import PHASES, REACHED, RunSummary, summarize


def markdown(s: RunSummary) -> str:
    rows = [
        ("finished", s.finished),
        ("final step", s.final_step),
        ("wall time", f"{s.wall_s:.1f} s"),
        ("billed (sum of attempts)", f"{s.billed_s:.1f} s"),
        ("seconds per step", f"{s.step_s:.3f}"),
        ("useful step time", f"{s.useful_s:.1f} s"),
        ("goodput (useful / wall)", f"{s.goodput:.3f}"),
        ("reclaims survived", s.reclaims),
        ("work lost (recomputed steps + restarts)", f"{s.lost_s:.1f} s ({s.lost_steps} steps)"),
        ("checkpoint overhead (loop blocked)", f"{s.checkpoint_blocked_s:.2f} s over {s.checkpoints} saves"),
        ("resume overhead", f"{s.resume_s:.1f} s"),
        ("first start-up", f"{s.startup_s:.1f} s"),
        *([("moved to on-demand", s.fallback)] if s.fallback else []),
        *(
            [("stale attempts stopped (lease)", ", ".join(_stale(x) for x in s.superseded))]
            if s.superseded
            else []
        ),
    ]
    c = s.cost
    if c and "error" not in c:
        rows += [
            (
                "priced as",
                f"{c['units']} x {c['accelerator']} on {c['cloud']} (table {c['price_table_date']})",
            ),
            ("spot cost, all overhead included", f"${c['spot_cost_usd']:.4f}"),
            *(
                [("on-demand after the fallback", f"${c['on_demand_fallback_usd']:.4f}")]
                if c["on_demand_fallback_hours"]
                else []
            ),
            ("on-demand cost of an uninterrupted run", f"${c['on_demand_uninterrupted_usd']:.4f}"),
            ("list discount / effective saving", f"{c['discount']:.0%} / {c['effective_saving']:.1%}"),
        ]
    elif c:
        rows.append(("cost", c["error"]))
    lines = [f"# Run `{s.run}`", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    if s.restarts:
        lines += [
            "",
            "| reclaim | kind | from step | resumed at | lost steps | restart s |",
            "|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(s.restarts, 1):
            lines.append(
                f"| {i} | {r['kind']} | {r['from_step']} | {r['resumed_step']} | {r['lost_steps']} | {r['restart_s']} |"
            )
    return "\n".join(lines + phases_table(s)) + "\n"


def phases_table(s: RunSummary) -> list[str]:
    """The restart budget: seconds per phase, per attempt and in total, next to what each restart lost."""
    timed = [a for a in s.attempts if a.get("phases")]
    if not timed:
        return []
    cols = [f"attempt {a['attempt']}" for a in timed]
    lines = ["", f"| phase (s) | {' | '.join(cols)} | total |", "|---" * (len(cols) + 2) + "|"]
    cell = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    for name, label in PHASES:
        if name in s.phases_total:
            vals = [cell(a["phases"].get(name)) for a in timed]
            lines.append(f"| {label} | {' | '.join(vals)} | {cell(s.phases_total[name])} |")
    total = sum(a.get("to_first_step_s") or 0.0 for a in timed)
    lines.append(
        f"| **start -> first step** | {' | '.join(cell(a.get('to_first_step_s')) for a in timed)} | {cell(total)} |"
    )
    lost = [str(a.get("lost_steps", "")) for a in timed]
    lines.append(f"| steps lost (recomputed) | {' | '.join(lost)} | {s.lost_steps} |")
    return lines


def _stale(x: dict) -> str:
    step = f" at step {x['step']}" if x.get("step") is not None else ""
    return f"attempt {x['epoch']} superseded by attempt {x['by']}{step}"


def plot_timeline(events: list[dict], path: str) -> None:
    """Steps over wall time, with reclaims (red) and committed checkpoints (ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = sorted(events, key=lambda e: e["ts"])
    t0 = events[0].get("started_ts", events[0]["ts"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    segments, seg = [], []
    for e in events:  # one line per stretch of training; restarts leave gaps
        if e["kind"] in ("launch", "start", "resume") and seg:
            segments, seg = [*segments, seg], []
        if e["kind"] in REACHED and "step" in e:  # a notice in start-up has no step
            seg.append((e["ts"] - t0, e["step"]))
    for i, pts in enumerate([*segments, seg]):
        if pts:
            ax.plot(
                *zip(*pts, strict=True), ".-", color="C0", lw=1, ms=3, label=None if i else "step reached"
            )
    ck = [(e["ts"] - t0, e["step"]) for e in events if e["kind"] == "checkpoint"]
    if ck:
        ax.plot(*zip(*ck, strict=True), "g|", ms=12, label="checkpoint committed")
    for i, e in enumerate(x for x in events if x["kind"] in ("reclaim", "preemption_notice")):
        ax.axvline(e["ts"] - t0, color="r", lw=1, ls="--", label="reclaim" if i == 0 else None)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("step")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spotrun report", description="Goodput and cost of a run.")
    ap.add_argument("run", help="a run name (under --root), or <storage root>/<run name> as a path or URI")
    ap.add_argument("--root", default=None, help="storage root (default: runs)")
    ap.add_argument("--endpoint", default=None, help="bucket endpoint (emulators)")
    ap.add_argument("--prices", default=cost.PRICES, help="price table (default: conf/prices.yaml)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    root, name = (a.root, a.run) if a.root or "/" not in a.run else split_run_uri(a.run)
    try:
        storage = open_storage(root or "runs", endpoint=a.endpoint)
        events = read_events(storage, name)
        s = summarize(name, events, cost.load_prices(a.prices))
    except (ValueError, OSError) as e:
        print(f"spotrun: report: {e}", file=sys.stderr)
        return 2
    write_outputs(storage, name, s, events)
    print(json.dumps(asdict(s), indent=2) if a.json else markdown(s))
    print(
        f"spotrun: report written to {storage.path(name, 'report')}/ (report.md, report.json, timeline.png)"
    )
    return 0


def write_outputs(storage, name: str, s: RunSummary, events: list[dict]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plot_timeline(events, f"{tmp}/timeline.png")
        with open(f"{tmp}/timeline.png", "rb") as f:
            storage.write_bytes(storage.path(name, "report", "timeline.png"), f.read())
    md = markdown(s) + "\n![timeline](timeline.png)\n"
    storage.write_bytes(storage.path(name, "report", "report.md"), md.encode())
    storage.write_bytes(storage.path(name, "report", "report.json"), json.dumps(asdict(s), indent=2).encode())
