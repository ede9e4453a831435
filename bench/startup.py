"""Start-up cost: launch -> first training step, and relaunch after a SIGKILL -> first resumed step.

    python -m bench.startup [--repeats 3] [--kill-after 10]

Each round runs the real `python -m pipelines.finetune experiment=tiny logger=none` (venv ready, a
fresh run name and storage root, a checkpoint every --every-steps steps): launch; once a checkpoint
with step >= --kill-after has committed, SIGKILL the driver's whole process tree (an abrupt reclaim);
relaunch the same command and wait for its first step; kill it.

Times are event "ts" values (events.jsonl, unix seconds) minus time.time() just before each Popen.
"Ray up" is when the driver prints "spotrun: run ..." (after ray.init). A fresh start then loads the
model and data and runs the "before" evaluation ("start" event); a relaunch instead finds, verifies
and loads the newest checkpoint ("resume" event). "Steps recomputed" = the last step the killed run
finished (from debug.trace_samples) - the step it resumed from. The reference column is PLATFORM.md's
plain Ray Train setup on this 2-core machine. Other work on the machine inflates every number: the
1-minute load average is printed. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, busy_note, fmt, kill_tree, print_table, read_events, unique_name, write_results
from spotrun.core.paths import scratch_dir
from spotrun.core.storage import open_storage

REFERENCE_S = {"fresh_first_step_s": 16.0, "relaunch_first_step_s": 28.0}  # PLATFORM.md, 2 cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="kill/relaunch rounds (fresh run each)")
    p.add_argument("--kill-after", type=int, default=10, help="kill once a checkpoint >= this step commits")
    p.add_argument("--every-steps", type=int, default=5, help="checkpoint cadence")
    p.add_argument("--max-steps", type=int, default=40, help="must exceed --kill-after")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for each event")
    return p.parse_args(argv)


def command(args: argparse.Namespace, name: str, root: str) -> list[str]:
    run = [f"run.name={name}", f"storage.root={root}", "experiment=tiny", "logger=none"]
    steps = [f"trainer.max_steps={args.max_steps}", f"checkpoint.every_steps={args.every_steps}"]
    # trace_samples: rank 0 appends each finished step to trace/rank0.jsonl, so the killed step is exact
    return [sys.executable, "-m", "pipelines.finetune", *run, *steps, "debug.trace_samples=true"]


class Launch:
    """One pipeline process tree (its own session), watched through the run's events.jsonl."""

    def __init__(self, cmd: list[str], root: str, name: str, log: str, timeout: float):
        self.root, self.name, self.log, self.timeout = root, name, log, timeout
        self.ray_up: float | None = None
        env = os.environ | {"PYTHONUNBUFFERED": "1"}  # lines reach _pump as they are printed
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        """Copy the driver's output to the log; note when it announces the run (Ray is up by then)."""
        with open(self.log, "ab") as log:
            for line in self.proc.stdout:
                if self.ray_up is None and line.startswith(b"spotrun: run "):
                    self.ray_up = time.time()
                log.write(line)
                log.flush()

    def wait(self, kind: str, min_step: int = 0) -> dict:
        """The first `kind` event since this launch with step >= min_step; fails if the driver exits."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for e in read_events(self.root, self.name):
                if e["kind"] == kind and e["ts"] >= self.t0 and e.get("step", 0) >= min_step:
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        rc = self.proc.returncode
        why = f"timed out after {self.timeout:.0f} s" if rc in (None, -9) else f"exited with {rc}"
        tail = Path(self.log).read_text()[-3000:]
        raise SystemExit(f"no {kind!r} event with step >= {min_step}: the pipeline {why}. Log tail:\n{tail}")

    def kill(self) -> None:
        kill_tree(self.proc)


def last_traced_step(root: str, name: str) -> int | None:
    """The last step rank 0 finished, from debug.trace_samples' trace/rank0.jsonl."""
    path = Path(root, name, "trace", "rank0.jsonl")
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line cut short by the SIGKILL
            continue
    return max(steps, default=None)


def one_round(args: argparse.Namespace, workdir: str) -> dict:
    """Launch, SIGKILL after a committed checkpoint, relaunch; the timings of one round."""
    name, root, log = unique_name("bench-startup"), f"{workdir}/runs", f"{workdir}/driver.log"
    cmd, fresh, again, load_before = command(args, name, root), None, None, os.getloadavg()[0]
    try:
        fresh = Launch(cmd, root, name, log, args.timeout)
        start, first = fresh.wait("start"), fresh.wait("first_step")
        ckpt = fresh.wait("checkpoint", args.kill_after)
        fresh.kill()
        killed_step = last_traced_step(root, name)
        again = Launch(cmd, root, name, log, args.timeout)
        resume, first2 = again.wait("resume"), again.wait("first_step")
    finally:
        for launch in (fresh, again):
            if launch is not None:
                launch.kill()
        # the run's local scratch folder
        shutil.rmtree(scratch_dir(str(REPO), open_storage(root).uri, name), ignore_errors=True)
    t0, t1 = fresh.t0, again.t0
    return {
        "fresh_first_step_s": first["ts"] - t0,
        "fresh_ray_up_s": fresh.ray_up and fresh.ray_up - t0,
        "fresh_start_event_s": start["ts"] - t0,
        "fresh_start_to_first_step_s": first["ts"] - start["ts"],
        "first_step_compute_s": first.get("step_s"),
        "relaunch_ray_up_s": again.ray_up and again.ray_up - t1,
        "relaunch_resume_event_s": resume["ts"] - t1,
        "relaunch_first_step_s": first2["ts"] - t1,
        "resume_to_first_step_s": first2["ts"] - resume["ts"],
        "killed_at_step": killed_step,
        "checkpoint_seen_step": ckpt["step"],
        "resumed_from_step": resume["step"],
        "steps_recomputed": None if killed_step is None else killed_step - resume["step"],
        "run_name": name,
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


ROWS = [  # (key, label, unit)
    ("fresh_first_step_s", "launch -> first step (fresh)", "s"),
    ("fresh_ray_up_s", "  launch -> Ray up (driver prints 'spotrun: run ...')", "s"),
    ("fresh_start_event_s", "  launch -> 'start' event (+ workers, model/data, eval)", "s"),
    ("fresh_start_to_first_step_s", "  'start' event -> first step (DDP wrap + step)", "s"),
    ("first_step_compute_s", "    of which the first step itself", "s"),
    ("relaunch_first_step_s", "relaunch -> first resumed step", "s"),
    ("relaunch_ray_up_s", "  relaunch -> Ray up", "s"),
    ("relaunch_resume_event_s", "  relaunch -> 'resume' event (+ workers, checkpoint loaded)", "s"),
    ("resume_to_first_step_s", "  'resume' event -> first resumed step", "s"),
    ("steps_recomputed", "steps recomputed (killed step - resumed step)", "steps"),
]


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for key, _, _ in ROWS:
        vals = [r[key] for r in rounds if r[key] is not None]
        out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)} if vals else None
    return out


def report(rounds: list[dict], summary: dict) -> None:
    rows = []
    for key, label, unit in ROWS:
        s, ref = summary[key], REFERENCE_S.get(key)
        spec = ".0f" if unit == "steps" else ".1f"
        vals = [fmt(s and s[k], spec) for k in ("median", "min", "max")]
        ref_col = f"~{ref:.0f} s" if ref else ""
        ratio = ""
        if ref and s:
            ratio = f"{s['median'] / ref:.2f}x ({'within' if s['median'] <= ref else 'over'} ref)"
        rows.append([label, *vals, unit, ref_col, ratio])
    kills = ", ".join(f"{r['killed_at_step']}->{r['resumed_from_step']}" for r in rounds)
    title = f"Start-up, experiment=tiny, {len(rounds)} round(s); killed step -> resumed step: {kills}"
    print_table(title, ["", "median", "min", "max", "unit", "PLATFORM.md ref", "median / ref"], rows)
    print(busy_note([x for r in rounds for x in r["load_1m"]]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_steps <= args.kill_after + args.every_steps:
        raise SystemExit("--max-steps must leave room for a checkpoint after --kill-after and a resumed step")
    rounds = []
    for i in range(args.repeats):
        print(
            f"round {i + 1}/{args.repeats}: launch, SIGKILL after a checkpoint >= {args.kill_after}, relaunch"
        )
        workdir = tempfile.mkdtemp(prefix="spotrun-bench-startup-")
        try:
            rounds.append(one_round(args, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(rounds)
    report(rounds, summary)
    data = {"settings": vars(args), "reference_s": REFERENCE_S, "summary": summary, "rounds": rounds}
    print(f"\nwrote {write_results('startup', data).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
