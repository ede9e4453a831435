"""Relaunch -> first resumed step, side by side with a bare Ray Train script (the goal: <= 1.25x).

    python -m bench.restart [--pairs 3]

One fresh `python -m pipelines.finetune experiment=tiny logger=none` runs until a checkpoint commits
and is SIGKILLed. Then, alternating which goes first, each pair times:

  bare     python -m bench.bare_train: ray.init, a 2-worker TorchTrainer whose workers load the same
           model (all-MiniLM-L6-v2), wrap it in DDP and take one step (bench/bare_train.py).
  spotrun  the same pipeline command relaunched: compose + check, lease, Ray, board, Train controller,
           workers, model, checkpoint verified + restored, one resumed step (its `first_step` event).

Each side is time.time() just before Popen to the end of its first step; the process tree is then
SIGKILLed. The spotrun side's `first_step` event also carries its restart budget (phase marks,
spotrun.recovery.history.PHASES): the table shows the median seconds per phase. Ratio = median
spotrun / median bare (and the median of the per-pair ratios). Other work on the machine inflates
both sides; interleaving keeps the ratio fair. Writes bench/results/restart.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, busy_note, fmt, kill_tree, print_table, unique_name, write_results
from bench.startup import Launch
from spotrun.core.paths import scratch_dir
from spotrun.core.storage import open_storage
from spotrun.recovery.history import PHASES, phase_seconds

GOAL_RATIO = 1.25


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="bare/spotrun pairs (order alternates)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each side")
    return p.parse_args(argv)


def pipeline(name: str, root: str) -> list[str]:
    run = [f"run.name={name}", f"storage.root={root}", "experiment=tiny", "logger=none"]
    return [sys.executable, "-m", "pipelines.finetune", *run, "trainer.max_steps=1000"]


def bare(workdir: str, i: int, timeout: float) -> dict:
    out = Path(workdir, f"bare-{i}.txt")
    with open(Path(workdir, "bare.log"), "ab") as log:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_train", str(out)],
            cwd=REPO,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"bench.bare_train exited {proc.returncode}; see {workdir}/bare.log")
                time.sleep(0.1)
        finally:
            kill_tree(proc)
    if not out.exists():
        raise SystemExit(f"bench.bare_train took no step within {timeout:.0f} s")
    return {"first_step_s": float(out.read_text().split()[0]) - t0}


def relaunch(name: str, root: str, workdir: str, timeout: float) -> dict:
    again = Launch(pipeline(name, root), root, name, f"{workdir}/spotrun.log", timeout)
    try:
        resume, first = again.wait("resume"), again.wait("first_step")
    finally:
        again.kill()
    return {
        "first_step_s": first["ts"] - again.t0,
        "resumed_step": resume["step"],
        "phases": phase_seconds(first.get("phases") or {}),
        "marks": first.get("phases"),
    }


def pairs(args: argparse.Namespace, workdir: str) -> list[dict]:
    name, root = unique_name("bench-restart"), f"{workdir}/runs"
    fresh = Launch(pipeline(name, root), root, name, f"{workdir}/spotrun.log", args.timeout)
    try:
        fresh.wait("checkpoint", 1)
    finally:
        fresh.kill()
    out = []
    try:
        for i in range(args.pairs):
            load = os.getloadavg()[0]
            sides = {}
            for side in ("bare", "spotrun") if i % 2 == 0 else ("spotrun", "bare"):
                print(f"pair {i + 1}/{args.pairs}: {side} ...", flush=True)
                sides[side] = (
                    bare(workdir, i, args.timeout)
                    if side == "bare"
                    else relaunch(name, root, workdir, args.timeout)
                )
            ratio = sides["spotrun"]["first_step_s"] / sides["bare"]["first_step_s"]
            out.append({**sides, "ratio": ratio, "load_1m": [round(load, 2), round(os.getloadavg()[0], 2)]})
            b, sp = sides["bare"]["first_step_s"], sides["spotrun"]["first_step_s"]
            print(f"pair {i + 1}: bare {b:.1f} s, spotrun {sp:.1f} s, ratio {ratio:.2f}", flush=True)
            write_results("restart", {"settings": vars(args), **summarize(out), "pairs": out})  # so far
    finally:
        shutil.rmtree(scratch_dir(str(REPO), open_storage(root).uri, name), ignore_errors=True)
    return out


def summarize(rounds: list[dict]) -> dict:
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    bare_s = med([r["bare"]["first_step_s"] for r in rounds])
    spot_s = med([r["spotrun"]["first_step_s"] for r in rounds])
    phases = {
        k: med([r["spotrun"]["phases"][k] for r in rounds if k in r["spotrun"]["phases"]])
        for k, _ in PHASES
        if any(k in r["spotrun"]["phases"] for r in rounds)
    }
    ratio = spot_s / bare_s
    return {
        "bare_first_step_s": bare_s,
        "spotrun_first_step_s": spot_s,
        "ratio_of_medians": ratio,
        "median_pair_ratio": med([r["ratio"] for r in rounds]),
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio <= GOAL_RATIO,
        "spotrun_phases_median_s": phases,
    }


def report(rounds: list[dict], s: dict) -> None:
    rows = [
        [
            f"pair {i + 1}",
            fmt(r["bare"]["first_step_s"], ".1f"),
            fmt(r["spotrun"]["first_step_s"], ".1f"),
            fmt(r["ratio"], ".2f"),
        ]
        for i, r in enumerate(rounds)
    ]
    rows.append(
        [
            "median",
            fmt(s["bare_first_step_s"], ".1f"),
            fmt(s["spotrun_first_step_s"], ".1f"),
            fmt(s["ratio_of_medians"], ".2f"),
        ]
    )
    verdict = f"goal <= {GOAL_RATIO}x: {'met' if s['goal_met'] else 'NOT met'}"
    print_table(
        f"Relaunch -> first step (s), {verdict}", ["", "bare Ray Train", "spotrun relaunch", "ratio"], rows
    )
    labels = dict(PHASES)
    rows = [[labels[k], fmt(v, ".2f")] for k, v in s["spotrun_phases_median_s"].items()]
    print_table("spotrun relaunch: restart budget (median s per phase)", ["phase", "s"], rows)
    print(busy_note([x for r in rounds for x in r["load_1m"]]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="spotrun-bench-restart-")
    try:
        rounds = pairs(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    s = summarize(rounds)
    report(rounds, s)
    path = write_results("restart", {"settings": vars(args), **s, "pairs": rounds})
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
