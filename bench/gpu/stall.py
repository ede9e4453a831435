"""Part 1: how long a checkpoint blocks the loop, GPU state -> host memory."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace as NS

from bench.gpu.support import Budget, empty_caches, import_spotrun, sync


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
