"""The tables bench.gpu prints, and the machine it ran on."""

from __future__ import annotations

import importlib.metadata

from bench.common import fmt, print_table


def report(res: dict) -> None:
    parts, errors = res["parts"], res["errors"]
    if rows := parts.get("checkpoint", {}).get("rows"):
        table = [
            [f"{r['state_gb']}", r["method"], fmt(r.get("first_s") and r["first_s"] * 1e3, ".0f")]
            + [fmt(r.get("steady_s") and r["steady_s"] * 1e3, ".0f"), fmt(r.get("steady_gb_s"), ".1f")]
            + [fmt(r.get("returns_s") and r["returns_s"] * 1e3, ".0f")]
            for r in rows
        ]
        pinned = parts["checkpoint"]["spotrun_buffers_pinned"]
        title = f"1. Checkpoint stall, GPU state -> host (spotrun's buffers pinned: {pinned})"
        head = ["state GB", "method", "first ms", "steady ms", "steady GB/s", "loop free after ms"]
        print_table(title, head, table)
    if rows := parts.get("embed", {}).get("rows"):
        table = [
            [r["device"], r["dtype"], r["batch_size"], r.get("tokenizers_parallelism", "false")]
            + [fmt(r["rows_per_s"], ".0f"), r.get("rows", "n/a")]
            for r in rows
        ]
        e = parts["embed"]
        title = (
            f"2. Embedding, MiniLM-L6 shape, {e['shard_rows']}-row encode calls, {e['mean_words']} words/row"
        )
        print_table(title, ["device", "dtype", "batch", "tokenizer threads", "rows/s", "rows timed"], table)
    if (f := parts.get("fsdp")) and "passed" in f:
        table = [
            [f"{f['params_m']}M", f"{f['checkpoint_mb']} MB", f"{f['step_s'] * 1e3:.0f}"]
            + [f"{f['save_blocked_s'] * 1e3:.0f}", f"{f['save_write_s']:.2f}", f"{f['load_s']:.2f}"]
            + [f["state_equal_after_load"], f["step_equal_after_load"], "PASS" if f["passed"] else "FAIL"]
        ]
        head = ["model", "DCP", "step ms", "save blocks ms", "write s", "load s", "state =", "next step ="]
        print_table("3. FSDP2 (spotrun.jobs.finetune.fsdp), world size 1", [*head, "result"], table)
    if rows := parts.get("ddp", {}).get("rows"):
        table = [
            [r["variant"], r["device"], r["batch"], r.get("steps", "-")]
            + ([f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.0f}"] if "error" not in r else ["failed", "-"])
            for r in rows
        ]
        head = ["variant", "device", "batch", "steps", "ms/step", "samples/s"]
        print_table("4. EncoderTask train step, world size 1", head, table)
    for part, err in errors.items():
        print(f"\n{part}: FAILED: {err.strip().splitlines()[-1]}")
    for note in res["notes"]:
        print(f"note: {note}")


def environment(device) -> dict:
    import torch

    env = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for name in ("transformers", "sentence-transformers", "pyarrow", "tenacity", "datasets"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None  # not installed
    return env
