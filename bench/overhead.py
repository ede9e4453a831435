"""Per-step overhead of spotrun's training loop against a plain torch DDP loop.

    python -m bench.overhead [--pairs 5] [--steps 105] [--workers 2] [--batch-size 8] [--py-spy]

What is measured: the same model (all-MiniLM-L6-v2), data (conf/data train split), sampler
(ExactSampler), tokenisation, contrastive loss, AdamW + linear warmup, grad clipping, batch size,
sequence length and worker count, trained for --steps steps three ways:

  plain    torch.multiprocessing + gloo DDP, one torch thread per process, no Ray, no checkpoints
           (bench/plain_loop.py).
  ray      the same loop in a bare Ray Train TorchTrainer, as any Ray Train script runs it: what Ray
           Train itself costs a step, which spotrun (built on it) cannot go below.
  spotrun  the real `python -m pipelines.finetune` on Ray Train, checkpointing every
           --every-steps steps (50, the default cadence of conf/checkpoint/default.yaml; 105 steps
           put two checkpoints inside the loop, at 50 and 100, and leave the second's background
           write (~2 s) the steps after it to finish in, as every write has in a longer run).

Batch 8 per worker (conf default: 16) keeps a side at ~2.5 min on 2 cores; a smaller step makes the
fixed per-step costs weigh more, so the overhead read here errs on the high side.

The sides take turns (plain, ray, spotrun, then spotrun, ray, plain, ...) for --pairs rounds in one
run; the table shows each side's median. --py-spy makes one extra, untimed spotrun run: py-spy on
each Ray Train worker for 60 s of its loop (where the loop's samples go outside the model's own
step; bench/results/overhead-pyspy.txt holds the collapsed stacks), and the CPU-seconds and
main-thread wake-ups a second of every process of the job in that window (Ray's daemons and actors
share the cores with the ranks): bench/overhead_profile.py.

All are timed the same way: wall seconds of the step loop on rank 0 (spotrun's comes from the
"finish" event's loop_s, which includes the checkpoint snapshots, Ray reports and the final wait for
the last write, shown on its own as well), divided by the steps run. Start-up (Ray, model load,
evaluation) is not counted: see bench.startup. "excl. 1st" drops the first, warm-up step. The goal
is median spotrun / median plain - 1 <= 3 %; spotrun against ray is spotrun's own share. On a shared
2-core machine the noise between two runs can be a few percent: re-run before reading much into a
small difference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, RESULTS, busy_note, fmt, print_table, read_events, unique_name, write_results
from bench.overhead_profile import loop_profile, print_profile, profile_loop
from spotrun.core.paths import scratch_dir
from spotrun.core.storage import open_storage
from spotrun.ops.chaos import kill_tree

GOAL_PCT = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=105, help="per side; 105: checkpoints at 50 and 100")
    p.add_argument("--workers", type=int, default=2, help="DDP ranks / Ray Train workers")
    p.add_argument("--batch-size", type=int, default=8, help="per worker (conf default: 16)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text")
    p.add_argument("--every-steps", type=int, default=50, help="spotrun checkpoint cadence")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a side is abandoned")
    p.add_argument("--pairs", type=int, default=5, help="rounds of the three sides, order alternating")
    p.add_argument("--py-spy", action="store_true", help="one extra spotrun run under py-spy")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """Hydra overrides shared by both sides, so they train the very same configuration."""
    shape = [f"trainer.num_workers={args.workers}", f"trainer.batch_size={args.batch_size}"]
    shape += [f"trainer.max_steps={args.steps}", f"data.max_length={args.max_length}"]
    # data.eval_size: spotrun's before/after evaluations run outside the timed loop; keep them short.
    return ["logger=none", *shape, f"checkpoint.every_steps={args.every_steps}", "data.eval_size=64"]


# ----- the yardsticks: plain DDP, bare Ray Train (bench/plain_loop.py) -----
def run_yardstick(side: str, args: argparse.Namespace, workdir: str) -> dict:
    """`python -m bench.plain_loop SIDE`: the same loop without spotrun; rank 0's loop timing."""
    out, log = os.path.join(workdir, f"{side}.txt"), os.path.join(workdir, f"{side}.log")
    cmd = [sys.executable, "-m", "bench.plain_loop", side, out, *overrides(args)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=args.timeout)
        finally:  # abandoned: its Ray (the ray side) goes with it
            if proc.poll() is None:
                kill_tree(proc)
    if proc.returncode != 0 or not os.path.exists(out):
        raise SystemExit(f"{side} exited {proc.returncode}. Log tail:\n{Path(log).read_text()[-3000:]}")
    loop_s, first_s = map(float, Path(out).read_text().split())
    os.remove(out)
    return per_step(loop_s, first_s, args.steps)


# ----- spotrun -----
def run_spotrun(args: argparse.Namespace, workdir: str, profile: str | None = None) -> dict:
    """Run the real pipeline; returns its loop timing and checkpoint costs from events.jsonl."""
    name, root, log = unique_name("bench-overhead"), f"{workdir}/runs", f"{workdir}/spotrun.log"
    cmd = [sys.executable, "-m", "pipelines.finetune", f"run.name={name}", f"storage.root={root}"]
    cpu: dict[str, dict] = {}
    try:
        with open(log, "w") as f:
            run = subprocess.Popen(cmd + overrides(args), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
            try:
                if profile:
                    cpu = profile_loop(run, root, name, profile)
                run.wait(timeout=args.timeout)
            finally:  # abandoned (timeout, an error): the driver's whole tree goes with it
                if run.poll() is None:
                    kill_tree(run)
    finally:  # the run's local scratch folder
        shutil.rmtree(scratch_dir(str(REPO), open_storage(root).uri, name), ignore_errors=True)
    events = read_events(root, name)
    finish = next((e for e in events if e["kind"] == "finish"), {})
    if run.returncode != 0 or "loop_s" not in finish:
        tail = Path(log).read_text()[-3000:]
        raise SystemExit(f"spotrun exited {run.returncode}, no finish event with loop_s. Log tail:\n{tail}")
    first = next((e for e in events if e["kind"] == "first_step"), {})
    ckpts = [e for e in events if e["kind"] == "checkpoint"]
    mean = lambda k: sum(e[k] for e in ckpts) / len(ckpts) if ckpts else None  # noqa: E731
    return per_step(finish["loop_s"], first.get("step_s"), finish["steps_run"]) | {
        "by_process": cpu,
        "checkpoints": len(ckpts),
        "blocked_s_mean": mean("blocked_s"),
        "write_s_mean": mean("write_s"),
        "checkpoint_bytes": ckpts[-1]["bytes"] if ckpts else None,
        "final_wait_s": finish.get("final_wait_s"),
        "run_name": name,
    }


def per_step(loop_s: float, first_s: float | None, steps: int) -> dict:
    rest = (loop_s - first_s) / (steps - 1) if first_s is not None and steps > 1 else None
    out = {"loop_s": loop_s, "steps": steps, "s_per_step": loop_s / steps}
    return out | {"first_step_s": first_s, "s_per_step_excl_first": rest}


def timed(fn, *a) -> dict:
    """fn(*a), plus the machine's 1-minute load average before and after (noise from other work)."""
    before = os.getloadavg()[0]
    return fn(*a) | {"load_1m": [round(before, 2), round(os.getloadavg()[0], 2)]}


# ----- report -----
def overhead_pct(plain: dict, spot: dict, key: str) -> float | None:
    return 100 * (spot[key] / plain[key] - 1) if spot[key] and plain[key] else None


def medians(sides: list[dict]) -> dict:
    keys = ("s_per_step", "s_per_step_excl_first", "loop_s", "first_step_s", "final_wait_s")
    out = {k: statistics.median([s[k] for s in sides if s.get(k) is not None] or [None]) for k in keys}
    loads = [x for s in sides for x in s["load_1m"]]
    return {**sides[-1], **out, "load_1m": [min(loads), max(loads)], "runs": [s["s_per_step"] for s in sides]}


def report(args: argparse.Namespace, med: dict[str, dict]) -> dict:
    plain, ray, spot = med["plain"], med["ray"], med["spotrun"]
    over, rest = overhead_pct(plain, spot, "s_per_step"), overhead_pct(plain, spot, "s_per_step_excl_first")
    met = over <= GOAL_PCT
    ray_over, own = overhead_pct(plain, ray, "s_per_step"), overhead_pct(ray, spot, "s_per_step")
    sides = lambda key, spec=".3f": [fmt(med[k][key], spec) for k in SIDES]  # noqa: E731
    pct = lambda x: fmt(x, "+.1f") + " %"  # noqa: E731
    goal = f"<= {GOAL_PCT:g} %: {'met' if met else 'NOT met'}"
    rows = [
        ["s/step", *sides("s_per_step"), pct(over), goal, pct(ray_over), pct(own)],
        ["s/step excl. 1st", *sides("s_per_step_excl_first"), pct(rest), "", "", ""],
        ["loop s", *sides("loop_s", ".1f"), "", "", "", ""],
        [
            "s/step of each run",
            *(" ".join(f"{x:.3f}" for x in med[k]["runs"]) for k in SIDES),
            "",
            "",
            "",
            "",
        ],
        ["load avg 1m", *(", ".join(map(str, med[k]["load_1m"])) for k in SIDES), "", "", "", ""],
    ]
    shape = f"{args.steps} steps, {args.workers} workers, batch {args.batch_size}/worker, length {args.max_length}"
    heads = ["", "plain DDP", "bare Ray Train", "spotrun", "spotrun vs plain", "goal"]
    heads += ["Ray Train vs plain", "spotrun vs Ray Train"]
    print_table(f"Per-step overhead, medians of {args.pairs} rounds: {shape}", heads, rows)
    mb = spot["checkpoint_bytes"] / 1e6 if spot["checkpoint_bytes"] else None
    row = [spot["checkpoints"], fmt(spot["blocked_s_mean"], ".4f"), fmt(spot["write_s_mean"]), fmt(mb, ".1f")]
    row += [fmt(spot["final_wait_s"])]
    headers = ["checkpoints", "blocked_s mean (in loop)", "write_s mean (background)", "MB each"]
    headers += ["final wait s (in loop_s)"]
    print_table(f"spotrun checkpoints (every {args.every_steps} steps)", headers, [row])
    print(busy_note([x for k in SIDES for x in med[k]["load_1m"]]))
    return {
        "overhead_pct": over,
        "overhead_pct_excl_first": rest,
        "goal_pct": GOAL_PCT,
        "goal_met": met,
        "ray_train_vs_plain_pct": ray_over,
        "spotrun_vs_ray_train_pct": own,
    }


SIDES = ("plain", "ray", "spotrun")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, runs = tempfile.mkdtemp(prefix="spotrun-bench-overhead-"), {k: [] for k in SIDES}
    spy = str(RESULTS / "overhead-pyspy.txt") if args.py_spy else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(args.pairs):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                print(f"round {i + 1}/{args.pairs}: {side}, {args.steps} steps ...", flush=True)
                if side == "spotrun":
                    runs[side].append(timed(run_spotrun, args, workdir))
                else:
                    runs[side].append(timed(run_yardstick, side, args, workdir))
        if spy:  # one more spotrun run under py-spy, left out of the timings (sampling slows it)
            print("py-spy: one more spotrun run, profiled, not timed ...", flush=True)
            cpu = run_spotrun(args, workdir, spy)["by_process"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: medians(v) for k, v in runs.items()}
    summary = report(args, med)
    if spy:
        summary["py_spy_loop_shares"] = prof = loop_profile(spy)
        summary["by_process"] = cpu
        print_profile(prof, cpu)
    data = {"settings": vars(args), **med, **{f"{k}_runs": v for k, v in runs.items()}}
    path = write_results("overhead", {**data, **summary})
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
