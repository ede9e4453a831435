"""Part 3: spotrun's FSDP2 save and load, and a bit-identical next step."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from bench.gpu.support import empty_caches, import_spotrun, sync


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
