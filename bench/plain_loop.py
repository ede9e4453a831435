"""The yardsticks of bench.overhead: spotrun's fine-tune step without spotrun, two ways.

    python -m bench.plain_loop plain OUT [HYDRA OVERRIDES]   torch.multiprocessing + gloo DDP, no Ray
    python -m bench.plain_loop ray OUT [HYDRA OVERRIDES]     the same loop in a bare Ray Train TorchTrainer

Same model, data, sampler (ExactSampler), tokenisation, contrastive loss, AdamW + linear warmup, grad
clipping, batch size, sequence length and worker count as `python -m pipelines.finetune` with the same
overrides; one torch thread per rank, DDP with torch's defaults, no checkpoint, no Ray actor of
spotrun's, nothing checked between steps. The `ray` side starts Ray as any script does
(`ray.init()`, no dashboard) and prepares the model with `ray.train.torch.prepare_model`: what Ray
Train itself costs a step. Rank 0 writes "<loop seconds> <first step seconds>" to OUT.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from bench.common import REPO


def train(rank: int, world: int, cfg, wrap) -> tuple[float, float]:
    """What spotrun's Worker builds and its train_step does, minus spotrun: (loop s, first step s)."""
    import torch
    import torch.distributed as dist
    from transformers import get_linear_schedule_with_warmup

    from spotrun.jobs.finetune.data import ExactSampler, Position, load_pairs
    from spotrun.jobs.finetune.models import contrastive_loss, embed, load_encoder, resolve_model_path

    t, L, pooling = cfg.trainer, cfg.data.max_length, cfg.model.pooling
    torch.set_num_threads(t.threads_per_worker)
    torch.manual_seed(cfg.seed + rank)
    model, tok = load_encoder(resolve_model_path(cfg.model))
    queries, docs = load_pairs(cfg.data, str(REPO), "train")
    ddp = wrap(model) if world > 1 else model
    ddp.train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
    sampler, pos = ExactSampler(len(queries), t.batch_size, cfg.seed), Position()
    batch = lambda texts: tok(texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt")  # noqa: E731
    dist.barrier()
    loop_t0, first_s = time.perf_counter(), 0.0
    for i in range(t.max_steps):
        ids, pos = sampler.step(pos, rank, world)
        q = embed(ddp, batch([queries[j] for j in ids]), pooling)
        d = embed(ddp, batch([docs[j] for j in ids]), pooling)
        loss = contrastive_loss(q, d, cfg.model.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        if i == 0:
            first_s = time.perf_counter() - loop_t0
    return time.perf_counter() - loop_t0, first_s


def _write(out: str, timing: tuple[float, float]) -> None:
    Path(out).write_text(" ".join(map(str, timing)))


# ----- plain: torch.multiprocessing + gloo -----
def _plain_rank(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    # as in spotrun's Ray workers: no tokenizer thread pool competing with the ranks for the cores
    os.environ.update(TOKENIZERS_PARALLELISM="false", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    timing = train(rank, world, OmegaConf.create(cfg_dict), torch.nn.parallel.DistributedDataParallel)
    if rank == 0:
        _write(out, timing)
    dist.destroy_process_group()


def run_plain(cfg, out: str) -> None:
    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = cfg.trainer.num_workers
    mp.spawn(_plain_rank, (world, port, OmegaConf.to_container(cfg), out), nprocs=world)


# ----- ray: a bare Ray Train TorchTrainer -----
def _ray_rank(job: dict) -> None:
    import ray.train
    import ray.train.torch
    from omegaconf import OmegaConf

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    timing = train(rank, world, OmegaConf.create(job["cfg"]), ray.train.torch.prepare_model)
    if rank == 0:
        _write(job["out"], timing)


def run_ray(cfg, out: str) -> None:
    import ray
    from omegaconf import OmegaConf
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    ray.init(include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    trainer = TorchTrainer(
        _ray_rank,
        train_loop_config={"cfg": OmegaConf.to_container(cfg), "out": out},
        scaling_config=ScalingConfig(num_workers=cfg.trainer.num_workers),
        run_config=RunConfig(name=f"plain-loop-{time.time_ns()}", storage_path=f"{out}.ray"),
    )
    trainer.fit()
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    side, out, *overrides = argv if argv is not None else sys.argv[1:]
    from spotrun.core.config import compose

    cfg = compose("finetune", overrides, conf_dir=str(REPO / "conf"))
    {"plain": run_plain, "ray": run_ray}[side](cfg, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
