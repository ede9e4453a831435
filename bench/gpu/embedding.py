"""Part 2: rows/s of the embed job's encode call on the GPU (and the CPU, for comparison)."""

from __future__ import annotations

import os
import statistics
import time

from bench.gpu.support import Budget, empty_caches, minilm_folder


def encode_rate(model, texts, batch_size: int, shard_rows: int, cap_s: float) -> dict:
    """rows/s of the job's per-shard encode call, over shards until all rows are done or cap_s passed."""
    kw = {"batch_size": batch_size, "normalize_embeddings": True, "convert_to_numpy": True}
    model.encode(texts[:shard_rows], show_progress_bar=False, **kw)  # warm-up: kernels, allocator
    done, t0 = 0, time.perf_counter()
    while done < len(texts) and time.perf_counter() - t0 < cap_s:
        model.encode(texts[done : done + shard_rows], show_progress_bar=False, **kw)
        done += len(texts[done : done + shard_rows])
    return {"rows": done, "rows_per_s": done / (time.perf_counter() - t0)}


def bench_embed(args, device, budget: Budget, tmp: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from bench.embed import corpus

    texts, folder = corpus(args.rows, seed=7), minilm_folder(tmp)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as in the job's Ray workers (init_ray)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if device.type == "cpu":
        dtypes.pop("fp16")
    configs = [(d, b, "false") for d in dtypes for b in args.batch_sizes]
    configs.append(("fp16" if "fp16" in dtypes else "bf16", max(args.batch_sizes), "true"))
    rows, models = [], {}
    for dtype, bs, tok_par in configs:
        if budget.left() < args.cap_s + 5:
            rows.append({"device": device.type, "dtype": dtype, "batch_size": bs, "rows_per_s": None})
            continue
        if dtype not in models:
            models.clear()
            model = SentenceTransformer(folder, device=str(device))  # as the job's actor loads it
            models[dtype] = model.to(dtypes[dtype])
        os.environ["TOKENIZERS_PARALLELISM"] = tok_par
        r = {"device": device.type, "dtype": dtype, "batch_size": bs, "tokenizers_parallelism": tok_par}
        rows.append(r | encode_rate(models[dtype], texts, bs, args.shard_rows, args.cap_s))
        print(f"embed {device.type} {dtype} batch {bs} tokenizer threads {tok_par}: ", end="")
        print(f"{rows[-1]['rows_per_s']:.0f} rows/s")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    models.clear()
    empty_caches(device)
    if device.type == "cuda" and budget.left() > 4 * args.cap_s:  # the CPU: every core, one process
        torch.set_num_threads(os.cpu_count() or 1)
        cpu_model = SentenceTransformer(folder, device="cpu")
        r = encode_rate(cpu_model, texts[: args.cpu_rows], 64, args.shard_rows, 3 * args.cap_s)
        rows.append({"device": f"cpu ({os.cpu_count()} threads)", "dtype": "fp32", "batch_size": 64} | r)
        print(f"embed cpu: {r['rows_per_s']:.0f} rows/s")
    words = statistics.mean(len(t.split()) for t in texts[:2000])
    return {
        "rows": rows,
        "corpus_rows": len(texts),
        "mean_words": round(words, 1),
        "shard_rows": args.shard_rows,
    }
