"""`spotrun chaos --verify`: run the same job uninterrupted and compare the final weights bit for bit."""

from __future__ import annotations

import subprocess
import sys

from spotrun.core.paths import REPO_ROOT
from spotrun.recovery.checkpoint import bytes_to_tensors


def reference_name(run_name: str) -> str:
    return f"{run_name}-reference"


def compare_final(market, overrides: list[str]) -> bool:
    """Run (or reuse) the uninterrupted reference; True when every tensor of every safetensors file
    in final/ is equal to the reclaimed run's."""
    ref = reference_name(market.run_name)
    cmd = [
        sys.executable,
        "-m",
        "pipelines.finetune",
        *[o for o in overrides if not o.startswith("run.name=")],
    ]
    print(f"spotrun chaos: reference run {ref!r} (no reclaims) to compare the final weights", flush=True)
    out = market.log or subprocess.DEVNULL
    rc = subprocess.run(
        [*cmd, f"run.name={ref}"], cwd=market_repo(), env=market.env(), stdout=out, stderr=out
    ).returncode
    if rc != 0:
        print(f"spotrun chaos: reference run failed (exit {rc})", file=sys.stderr)
        return False
    return finals_equal(market.storage, market.run_name, ref)


def market_repo() -> str:
    return REPO_ROOT


def finals_equal(storage, run_a: str, run_b: str) -> bool:
    files = [p for p in storage.list_files(storage.path(run_a, "final")) if p.endswith(".safetensors")]
    if not files:
        return False
    for name in files:
        a = bytes_to_tensors(storage.read_bytes(storage.path(run_a, "final", name)))
        b = bytes_to_tensors(storage.read_bytes(storage.path(run_b, "final", name)))
        if a.keys() != b.keys() or any(not (a[k] == b[k]).all() for k in a):
            return False
    return True


def final_line(s, identical: bool | None) -> str:
    shown = "unchecked" if identical is None else str(identical).lower()
    return f"goodput={s.goodput:.3f} reclaims={s.reclaims} lost_s={s.lost_s:.1f} identical={shown}"
