"""Part 4: the fine-tune's train step in DDP over NCCL, against no DDP and gloo on the CPU."""

from __future__ import annotations

import inspect
import json
import os
import statistics
import time
from types import SimpleNamespace as NS

from bench.common import REPO
from bench.gpu.support import NOTES, PAIRS, Budget, empty_caches, import_spotrun, minilm_folder


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
