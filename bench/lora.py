"""Checkpoint size and blocking time: a LoRA checkpoint vs a full-model checkpoint of the same model.

SmolLM2-135M-Instruct (the offline default of experiment=llm_sft), after one AdamW step each way:

- LoRA (r=8, q_proj+v_proj): the adapter and its optimizer moments, what a LoRA run checkpoints;
- full:  every weight and its optimizer moments, what a full fine-tune (model.lora.enabled=false)
         checkpoints.

Each goes through spotrun's AsyncCheckpointer into a local CheckpointStore: `blocked` is the time
save() holds up the loop (steady state: buffers reused), `durable` the time until the manifest is
committed. Median of --repeats.

    python -m bench.lora [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from omegaconf import OmegaConf

from bench.common import busy_note, print_table, write_results
from spotrun.core.storage import open_storage
from spotrun.jobs.finetune import llm
from spotrun.jobs.finetune.models import resolve_model_path
from spotrun.recovery import state as st
from spotrun.recovery.checkpoint import AsyncCheckpointer, CheckpointStore

MODEL_CFG = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "conf", "model", "smollm2.yaml"))


def one_step(model, tok) -> torch.optim.Optimizer:
    """An AdamW step on the trainable parameters, so the optimizer holds its moments."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = tok(["What does os.path.join do? Join path components."], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    opt.step()
    return opt


def measure(groups: dict, repeats: int) -> dict:
    """Bytes written, seconds save() blocked and seconds until committed (medians)."""
    blocked, durable, nbytes = [], [], 0
    with tempfile.TemporaryDirectory() as root:
        store = CheckpointStore(open_storage(root), "bench")
        ckpt = AsyncCheckpointer(store, keep=1)
        ckpt.save(0, groups, {"state.json": {}})  # first save allocates the reused buffers
        ckpt.wait()
        for step in range(1, repeats + 1):
            t0 = time.perf_counter()
            blocked.append(ckpt.save(step, groups, {"state.json": {}}))
            nbytes = ckpt.wait()["bytes"]
            durable.append(time.perf_counter() - t0)
        ckpt.close()
    return {
        "bytes": nbytes,
        "blocked_s": statistics.median(blocked),
        "durable_s": statistics.median(durable),
    }


def checkpoint_groups(model, opt) -> dict:
    opt_t, _ = st.optimizer_to_flat(opt)
    return {"model": llm.trainable_state(model), "optim": opt_t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_model_path(MODEL_CFG)
    loads, results = [os.getloadavg()[0]], {}
    base, tok = llm.load_causal_lm(path, MODEL_CFG)
    lora = llm.apply_lora(base, MODEL_CFG.lora)
    results["lora"] = measure(checkpoint_groups(lora, one_step(lora, tok)), args.repeats)
    loads.append(os.getloadavg()[0])
    full = lora.unload()  # the same base model, without the adapter, every weight trainable
    for p in full.parameters():
        p.requires_grad_(True)
    results["full"] = measure(checkpoint_groups(full, one_step(full, tok)), args.repeats)
    loads.append(os.getloadavg()[0])
    rows = [
        [kind, f"{r['bytes'] / 1e6:,.1f}", f"{r['blocked_s'] * 1e3:,.1f}", f"{r['durable_s']:.3f}"]
        for kind, r in results.items()
    ]
    ratio = {
        k: results["full"][k] / max(results["lora"][k], 1e-9) for k in ("bytes", "blocked_s", "durable_s")
    }
    rows.append(
        [
            "full / LoRA",
            f"{ratio['bytes']:,.0f}x",
            f"{ratio['blocked_s']:,.0f}x",
            f"{ratio['durable_s']:,.0f}x",
        ]
    )
    note = busy_note(loads)
    print_table(
        f"Checkpoint of SmolLM2-135M + AdamW: LoRA r=8 (q,v) vs full ({note})",
        ["checkpoint", "MB", "blocked ms", "durable s"],
        rows,
    )
    out = write_results(
        "lora",
        {
            "model": "SmolLM2-135M-Instruct",
            "lora_config": OmegaConf.to_container(MODEL_CFG.lora),
            **results,
            "note": note,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
