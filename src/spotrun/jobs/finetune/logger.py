"""Rank 0's view of the run: a tqdm progress bar and wandb (offline unless a key is set).

Secrets never reach wandb: it gets the composed job config, which holds none (keys live only in the
environment), and the run id, which is the run name so a relaunch continues the same wandb run.
"""

from __future__ import annotations

import os
import re
import sys

from omegaconf import OmegaConf
from tqdm import tqdm


class _Lines:
    """tqdm writes carriage returns; Ray forwards worker output by line. Emit whole lines instead."""

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            sys.stdout.write(s + "\n")
            sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.flush()


def wandb_mode(configured: str) -> str:
    if configured != "auto":
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunLogger:
    def __init__(self, cfg, run_name: str, local_dir: str, run_id: str | None, enabled: bool):
        self.enabled, self.cfg = enabled, cfg
        self.run_id = run_id or re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:64]
        self.wandb = None
        self.bar = None
        if enabled and cfg.logger.wandb and wandb_mode(cfg.logger.wandb_mode) != "disabled":
            import wandb

            os.makedirs(local_dir, exist_ok=True)
            self.wandb = wandb.init(
                project=cfg.logger.project,
                id=self.run_id,
                name=run_name,
                resume="allow",
                mode=wandb_mode(cfg.logger.wandb_mode),
                dir=local_dir,
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def start_progress(self, step: int, total: int) -> None:
        if self.enabled and self.cfg.logger.progress:
            self.bar = tqdm(
                total=total, initial=step, file=_Lines(), mininterval=5.0, desc="finetune", ascii=True
            )

    def step(self, step: int, loss: float, samples_per_s: float, next_ckpt: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", next_ckpt=next_ckpt, refresh=False
            )
            self.bar.update(1)
        if self.wandb is not None:
            self.wandb.log({"train/loss": loss, "train/samples_per_s": samples_per_s}, step=step)

    def finish(self, metrics: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({f"eval/{k}": v for k, v in metrics.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
