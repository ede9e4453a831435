"""Goodput under reclaims: `spotrun chaos` on the real fine-tune, one reclaim per 5 minutes of
training, notice (SIGTERM) and hard kill (SIGKILL). Prints a table, writes bench/results/goodput.json.

    python -m bench.goodput [--minutes 10] [--every 300] [--kinds group,hard]
    python -m bench.goodput --kinds default     # `make chaos`'s own default market, unverified

Goodput = useful step time / wall time: (final step x mean seconds per step) over the run's whole
wall clock from the first launch's process start to its last event -- every start-up, restart,
recomputed step, checkpoint stall and the final evaluation count against it.

Goals (issue 4): lost work per notice reclaim <= 1 step; per hard kill <= the checkpoint interval;
goodput >= 90 % at one reclaim per 5 minutes of training on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench.common import REPO, busy_note, fmt, print_table, unique_name, write_results


def run_chaos(kind: str, steps: int, every_s: float, root: str) -> dict:
    name = unique_name(f"goodput-{kind}")
    if kind == "default":  # spotrun chaos's own schedule, kinds and run length (src/spotrun/ops/chaos.py)
        from spotrun.ops.chaos import DEFAULT_OVERRIDES

        cmd = [sys.executable, "-m", "spotrun.ops.cli", "chaos", "--no-verify", "--log", f"{root}/{name}.log"]
        return _report(
            cmd + ["--", *DEFAULT_OVERRIDES, f"storage.root={root}", f"run.name={name}"], root, name
        )
    cmd = [
        sys.executable,
        "-m",
        "spotrun.ops.cli",
        "chaos",
        "--schedule",
        f"at:{','.join([str(every_s)] * 10)}",
        "--kinds",
        kind,
        "--max-reclaims",
        "10",
        "--no-verify",
        "--log",
        f"{root}/{name}.log",
        "--",
        "experiment=tiny",
        "logger=none",
        f"trainer.max_steps={steps}",
        f"storage.root={root}",
        f"run.name={name}",
    ]
    return _report(cmd, root, name)


def _report(cmd: list[str], root: str, name: str) -> dict:
    out = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="offline")
    )
    if out.returncode != 0:
        raise SystemExit(f"chaos run failed ({out.returncode}): {out.stderr[-2000:]}")
    with open(f"{root}/{name}/report/report.json") as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of one run (uninterrupted)")
    ap.add_argument("--every", type=float, default=300.0, help="seconds of training between reclaims")
    ap.add_argument("--step-s", type=float, default=1.5, help="expected seconds per step (sizes the run)")
    ap.add_argument("--kinds", default="group,hard", help="chaos kinds, one run each; or default")
    a = ap.parse_args()
    steps = int(a.minutes * 60 / a.step_s)
    rows, results = [], {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as root:
        for kind in a.kinds.split(","):
            r = run_chaos(kind, steps, a.every, root)
            loads.append(os.getloadavg()[0])
            lost = [x["lost_steps"] for x in r["restarts"]]
            restart = [x["restart_s"] for x in r["restarts"]]
            results[kind] = {"report": r, "lost_steps": lost, "restart_s": restart}
            rows.append(
                [
                    kind,
                    r["final_step"],
                    r["reclaims"],
                    fmt(r["step_s"]),
                    fmt(r["startup_s"], ".1f"),
                    ", ".join(fmt(x, ".1f") for x in restart),
                    ", ".join(map(str, lost)),
                    fmt(r["lost_s"], ".1f"),
                    fmt(r["wall_s"], ".1f"),
                    fmt(r["goodput"]),
                ]
            )
    print_table(
        f"Goodput at one reclaim per {a.every:.0f} s of training ({busy_note(loads)})",
        [
            "reclaim",
            "steps",
            "reclaims",
            "s/step",
            "start-up s",
            "restart s",
            "lost steps",
            "lost s",
            "wall s",
            "goodput",
        ],
        rows,
    )
    write_results("goodput", {"every_s": a.every, "steps": steps, "loads": loads, "runs": results})


if __name__ == "__main__":
    main()
