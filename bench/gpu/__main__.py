"""Runs bench.gpu's parts (see the package's docstring for what each measures and how to run it)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import bench.gpu
from bench.common import REPO, busy_note, write_results
from bench.gpu.ddp import bench_ddp
from bench.gpu.embedding import bench_embed
from bench.gpu.fsdp import bench_fsdp
from bench.gpu.report import environment, report
from bench.gpu.stall import bench_checkpoint
from bench.gpu.support import (
    NOTES,
    Budget,
    prepare_assets,
)

SHARE = {"checkpoint": 0.3, "embed": 0.4, "fsdp": 0.1, "ddp": 0.2}  # of --budget-s, per part


def parse_args(argv):
    p = argparse.ArgumentParser(description=bench.gpu.__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny sizes: checks the script")
    p.add_argument("--prepare-assets", action="store_true", help="copy MiniLM's small files, then exit")
    p.add_argument("--out", help="also write the JSON here (the GPU machine returns only $OUT)")
    p.add_argument("--parts", nargs="+", default=["checkpoint", "embed", "fsdp", "ddp"])
    p.add_argument("--ckpt-gb", type=float, nargs="+", default=[1.0, 8.0])
    p.add_argument("--repeats", type=int, default=3, help="steady-state saves after the first")
    p.add_argument("--rows", type=int, default=100_000, help="corpus rows (a config stops at --cap-s)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512], help="64: the job's default")
    p.add_argument("--shard-rows", type=int, default=1024, help="rows per encode call (the job's)")
    p.add_argument("--cpu-rows", type=int, default=5000)
    p.add_argument("--cap-s", type=float, default=4.0, help="seconds per embedding config")
    p.add_argument("--budget-s", type=float, default=180.0, help="seconds for all parts (shares: SHARE)")
    args = p.parse_args(argv)
    if args.smoke:
        args.ckpt_gb, args.repeats, args.rows, args.batch_sizes = [0.008, 0.024], 2, 64, [16]
        args.shard_rows, args.cpu_rows, args.cap_s = 32, 64, 1.0
    return args


def save(args, res: dict) -> Path:
    res["notes"] = NOTES
    path = write_results("gpu-smoke" if args.smoke else "gpu", res)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        shutil.copyfile(path, args.out)
    return path


def run_part(name: str, fn, args, res: dict, device) -> None:
    import torch

    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        res["parts"][name] = fn(Budget(args.budget_s * SHARE[name]))
    except Exception:  # noqa: BLE001 - recorded; the other parts still run
        res["errors"][name] = traceback.format_exc()[-3000:]
        print(f"{name}: FAILED\n{res['errors'][name]}", file=sys.stderr)
    res["wall_s"][name] = round(time.perf_counter() - t0, 1)
    if device.type == "cuda":
        res["gpu_peak_gb"][name] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    save(args, res)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.prepare_assets:
        return prepare_assets()
    if importlib.util.find_spec("spotrun") is None:  # a bare machine: the working tree's src/
        sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (part 3)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import torch.distributed as dist
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-file bars would crowd out the tables
    device = torch.device("cuda:0" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        torch.set_num_threads(1)  # a check, not a measurement: leave the cores to others
    t_start = time.perf_counter()
    res = {"smoke": args.smoke, "env": environment(device), "parts": {}, "errors": {}, "wall_s": {}}
    res |= {"gpu_peak_gb": {}, "load": busy_note([round(os.getloadavg()[0], 1)])}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        extra = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=f"file://{tmp}/pg", rank=0, world_size=1, **extra)
        try:
            parts = {
                "checkpoint": lambda budget: bench_checkpoint(args, device, budget),
                "embed": lambda budget: bench_embed(args, device, budget, tmp),
                "fsdp": lambda budget: bench_fsdp(args, device, tmp),  # fixed size, ~15 s
                "ddp": lambda budget: bench_ddp(args, device, budget, tmp),
            }
            for name in args.parts:
                run_part(name, parts[name], args, res, device)
        finally:
            dist.destroy_process_group()
    res["wall_s"]["total"] = round(time.perf_counter() - t_start, 1)
    path = save(args, res)
    report(res)
    print(
        f"\nwall {res['wall_s']}; GPU peak GB {res['gpu_peak_gb']}\nwrote {path}"
        + (f" and {args.out}" if args.out else "")
    )


if __name__ == "__main__":
    main()
