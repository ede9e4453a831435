"""bench.overhead --py-spy: where a spotrun step's time goes besides the step itself.

One extra, untimed spotrun run: py-spy samples each Ray Train worker for PROFILE_S seconds of its loop
(collapsed stacks into bench/results/overhead-pyspy.txt), and every process of the job is measured in
the same window: CPU-seconds used and how often its main thread woke up (voluntary context switches
a second, as /proc/PID/status counts them). Every Ray worker process, actors included, wakes its main
thread every 10 ms to check for signals (Ray's core worker; not a setting): ~100 times a second,
each time taking the GIL, and on cores that both run a rank any such wake-up of another process can
preempt one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import fmt, print_table, read_events

# where the loop's time goes besides the step itself (bench --py-spy): spotrun functions, as py-spy
# names their frames ("Class.method")
LOOP_PARTS = {  # name: (function, file it is in)
    "train_step": ("Worker.train_step", "finetune/loop.py"),
    "noticed": ("noticed", "finetune/stop.py"),
    "stale": ("stale", "finetune/stop.py"),
    "agree (all-reduce)": ("agree", "finetune/stop.py"),
    "heartbeat": ("Heartbeat.beat", "recovery/pacing.py"),
    "log.step": ("RunLogger.step", "finetune/logger.py"),
    "save (snapshot)": ("Worker.save", "finetune/loop.py"),
    "report (Ray Train)": ("Worker.report", "finetune/loop.py"),
    "_pacing": ("_pacing", "finetune/loop.py"),
}
# besides the loop, on the same cores: the checkpoint writer thread of the Train workers
WRITER = ("AsyncCheckpointer._run", "recovery/checkpoint.py")
IDLE = ("Condition.wait", "Event.wait")  # the writer waiting for work: py-spy may still sample it


PROFILE_S = 60.0  # of the loop, from 5 s after its first step (105 steps take ~150 s)


def profile_loop(proc: subprocess.Popen, root: str, name: str, out: str) -> dict[str, dict]:
    """While the loop runs: py-spy on each Ray Train worker (collapsed stacks into `out`) and, for
    every process of the job in the same window (Ray's daemons and actors too), the CPU-seconds it
    used and how often it woke up (voluntary context switches a second)."""
    deadline = time.time() + 600
    while not any(e["kind"] == "first_step" for e in read_events(root, name)):
        if proc.poll() is not None or time.time() > deadline:
            return {}
        time.sleep(1)
    time.sleep(5)
    procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    names = {p.pid: _process_name(p) for p in procs}
    before = {p.pid: (sum(p.cpu_times()[:2]), p.num_ctx_switches().voluntary) for p in procs}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    parts = [f"{out}.{p.pid}" for p in procs if names[p.pid] == "ray::RayTrainWorker"]
    spies = [
        subprocess.Popen(
            [py_spy, "record", "-p", part.rsplit(".", 1)[1], "-d", str(int(PROFILE_S)), "-r", "50"]
            + ["-f", "raw", "-o", part, "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for part in parts
    ]
    time.sleep(PROFILE_S)
    cpu: dict[str, list[float]] = {}  # name: [CPU s, main-thread wake-ups] over its processes
    for p in procs:
        try:
            used = sum(p.cpu_times()[:2]) - before[p.pid][0]
            woke = p.num_ctx_switches().voluntary - before[p.pid][1]
        except psutil.Error:
            continue
        total = cpu.setdefault(names[p.pid], [0.0, 0.0])
        total[0], total[1] = total[0] + used, total[1] + woke
    for spy in spies:
        spy.wait(timeout=60)
    with open(out, "w") as f:  # every worker's stacks in one file
        for part in parts:
            if os.path.exists(part):
                f.write(Path(part).read_text(errors="replace"))
                os.remove(part)
    ranked = sorted(cpu.items(), key=lambda kv: -kv[1][0])
    return {k: {"cpu_s": round(c, 2), "wakeups_per_s": round(w / PROFILE_S, 1)} for k, (c, w) in ranked}


def _process_name(p) -> str:
    """`ray::Actor`, the Ray daemon's or script's file name, or `driver`."""
    try:
        argv = p.cmdline()
    except psutil.Error:
        return "?"
    if argv and argv[0].startswith("ray::"):
        return argv[0].split()[0]
    script = next((a for a in argv[1:3] if a.endswith(".py")), argv[0] if argv else "?")
    return "driver" if "pipelines.finetune" in argv else os.path.basename(script)


def loop_profile(path: str) -> dict:
    """Shares of the samples inside train_loop (all ranks) that fall in each loop part."""
    total, parts, writer = 0, dict.fromkeys(LOOP_PARTS, 0), 0
    frame = lambda fn, file: rf";{re.escape(fn)} \([^)]*{re.escape(file)}"  # noqa: E731
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        if re.search(frame(*WRITER), stack) and not stack.rpartition(";")[2].startswith(IDLE):
            writer += int(count)
        if not re.search(frame("train_loop", "finetune/loop.py"), stack):
            continue
        total += int(count)
        for part, (fn, file) in LOOP_PARTS.items():
            if re.search(frame(fn, file), stack):
                parts[part] += int(count)
    parts["checkpoint writer thread (vs loop)"] = writer
    return {"samples": total, **{k: round(v / total, 4) if total else None for k, v in parts.items()}}


def print_profile(prof: dict, cpu: dict[str, dict]) -> None:
    rows = [[k, fmt(v and 100 * v, ".1f") + " %"] for k, v in prof.items() if k != "samples"]
    print_table(f"py-spy: share of {prof['samples']} train_loop samples (all ranks)", ["part", "share"], rows)
    total = sum(v["cpu_s"] for v in cpu.values()) or 1.0
    rows = [
        [k, f"{v['cpu_s']:.2f}", f"{100 * v['cpu_s'] / total:.1f} %", f"{v['wakeups_per_s']:.0f}"]
        for k, v in cpu.items()
    ]
    heads = ["process", "CPU s", "share", "main thread wake-ups/s"]
    print_table(f"CPU-seconds and wake-ups of each process in {PROFILE_S:.0f} s of the loop", heads, rows)
