"""Optimizer, scheduler and RNG state survive a safetensors + JSON round trip exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from spotrun.recovery import state as st
from spotrun.recovery.checkpoint import bytes_to_tensors, tensors_to_bytes


def _trained(seed: int):
    from transformers import get_linear_schedule_with_warmup  # ~2.8 s: not in every worker's collection

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = get_linear_schedule_with_warmup(opt, 2, 20)
    for _ in range(3):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _continue(model, opt, sched, steps=3):
    for _ in range(steps):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_round_trip_continues_bit_identically():
    model, opt, sched = _trained(0)
    opt_t, opt_m = st.optimizer_to_flat(opt)
    rng_t, rng_m = st.capture_rng()
    blob = {
        "model": tensors_to_bytes(model.state_dict()),
        "opt": tensors_to_bytes(opt_t),
        "rng": tensors_to_bytes(rng_t),
        "json": json.dumps({"opt": opt_m, "sched": sched.state_dict(), "rng": rng_m}),
    }
    reference = _continue(model, opt, sched)
    ref_py, ref_np = random.random(), np.random.rand()

    model2, opt2, sched2 = _trained(1)  # different state, then restored from the blobs
    meta = json.loads(blob["json"])
    model2.load_state_dict(bytes_to_tensors(blob["model"]))
    st.optimizer_from_flat(opt2, bytes_to_tensors(blob["opt"]), meta["opt"])
    sched2.load_state_dict(meta["sched"])
    st.restore_rng(bytes_to_tensors(blob["rng"]), meta["rng"])
    resumed = _continue(model2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    assert (random.random(), np.random.rand()) == (ref_py, ref_np)
