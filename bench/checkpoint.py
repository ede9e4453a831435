"""How long a checkpoint holds up the training loop, and how long until it is durable.

For a state of ~100 MB and ~1 GB (float32 tensors), on local disk and on a real S3 API server on
127.0.0.1 (moto_server, started and stopped here):

- copy floor:   copying the same bytes into already-allocated buffers (the physical floor);
- spotrun:      time `AsyncCheckpointer.save()` blocks the loop (steady state: buffers reused);
- durable:      from save() until the manifest is committed in the store;
- torch.save:   a plain synchronous `torch.save` to the same place (+ fsync locally, + upload to S3),
                which is what the loop would wait for without spotrun.

Goal: spotrun's blocked time within 2x of the copy floor and at least 10x below torch.save.

    python -m bench.checkpoint [--sizes-mb 100 1000] [--repeats 3] [--targets local s3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from spotrun.core.storage import open_storage
from spotrun.recovery.checkpoint import AsyncCheckpointer, CheckpointStore

RESULTS = Path(__file__).parent / "results"


def make_state(mb: int) -> dict[str, torch.Tensor]:
    n = max(1, mb // 4)  # tensors of 1M float32 = 4 MB each
    return {f"layer{i}.weight": torch.randn(1 << 20) for i in range(n)}


def copy_floor(state: dict[str, torch.Tensor]) -> float:
    bufs = {k: torch.empty_like(v) for k, v in state.items()}
    for b in bufs.values():
        b.fill_(0)  # first touch outside the timing, as spotrun's reused buffers are
    t0 = time.perf_counter()
    for k, v in state.items():
        bufs[k].copy_(v)
    return time.perf_counter() - t0


def torch_save_sync(state: dict, target: str, storage) -> float:
    t0 = time.perf_counter()
    if storage.is_local:
        os.makedirs(storage.base, exist_ok=True)
        path = os.path.join(storage.base, "plain.pt")
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes(storage.path("plain.pt"), buf.getvalue())
    return time.perf_counter() - t0


def spotrun_save(
    state: dict, storage, run: str, repeats: int, staging: str
) -> tuple[list[float], list[float]]:
    ck = AsyncCheckpointer(CheckpointStore(storage, run, staging), keep=2)
    ck.save(0, {"model": state}, {"state.json": {"step": 0}})  # first save allocates the buffers
    ck.wait()
    blocked, durable = [], []
    for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        blocked.append(ck.save(step, {"model": state}, {"state.json": {"step": step}}))
        ck.wait()
        durable.append(time.perf_counter() - t0)
    ck.close()
    return blocked, durable


def start_s3() -> tuple[subprocess.Popen, dict]:
    port = 9000 + os.getpid() % 900
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    return proc, env


def measure(target: str, mb: int, repeats: int, tmp: str) -> dict:
    storage = open_storage("s3://bench/ckpt" if target == "s3" else os.path.join(tmp, "local"))
    state = make_state(mb)
    floor = statistics.median(copy_floor(state) for _ in range(repeats))
    plain = statistics.median(torch_save_sync(state, target, storage) for _ in range(repeats))
    blocked, durable = spotrun_save(state, storage, f"{target}-{mb}", repeats, os.path.join(tmp, "staging"))
    row = {
        "target": target,
        "state_mb": round(sum(t.numel() * 4 for t in state.values()) / 1e6),
        "copy_floor_s": floor,
        "spotrun_blocked_s": statistics.median(blocked),
        "durable_s": statistics.median(durable),
        "torch_save_sync_s": plain,
    }
    row["blocked_vs_floor"] = row["spotrun_blocked_s"] / floor
    row["torch_save_vs_blocked"] = plain / row["spotrun_blocked_s"]
    row["goal_met"] = row["blocked_vs_floor"] <= 2 and row["torch_save_vs_blocked"] >= 10
    return row


def print_table(rows: list[dict]) -> None:
    head = f"{'target':<6} {'state':>7} {'copy floor':>11} {'blocked':>9} {'x floor':>8} {'durable':>9} {'torch.save':>11} {'x faster':>9} goal"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['target']:<6} {r['state_mb']:>5}MB {r['copy_floor_s'] * 1e3:>9.1f}ms {r['spotrun_blocked_s'] * 1e3:>7.1f}ms"
            f" {r['blocked_vs_floor']:>7.2f}x {r['durable_s']:>8.2f}s {r['torch_save_sync_s']:>10.2f}s"
            f" {r['torch_save_vs_blocked']:>8.0f}x {'met' if r['goal_met'] else 'MISSED'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--targets", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # like one training worker per core
    server, env = start_s3() if "s3" in args.targets else (None, {})
    os.environ.update(env)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for target in args.targets:
                for mb in args.sizes_mb:
                    rows.append(measure(target, mb, args.repeats, tmp))
                    print_table(rows[-1:]) if len(rows) > 1 else print_table(rows)
    finally:
        if server:
            server.kill()
    print()
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint.json").write_text(json.dumps({"rows": rows, "torch_threads": 1}, indent=1))
    print(f"\nwrote {RESULTS / 'checkpoint.json'}")


if __name__ == "__main__":
    main()
