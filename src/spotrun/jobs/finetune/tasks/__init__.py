"""What the training loop trains: a task builds the model and turns sample ids into a loss.

The loop (train/loop.py) owns control flow: resume, save, notices, reports, finish. A task owns
everything model-specific, chosen by `model.kind`:

    encoder    tasks/encoder.py  bi-encoder, in-batch negatives, recall@1 (the default)
    causal_lm  tasks/sft.py      instruction SFT of a causal LM, LoRA or full, eval loss
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch


class Task(Protocol):
    model: torch.nn.Module  # the module the loop wraps in DDP and trains
    metric: str  # the headline metric of evaluate(), shown in summaries
    # True under FSDP: the loop checkpoints through save_sharded/load_sharded (DCP, every rank) and
    # runs evaluate/write_final on every rank; the state_tensors/load_state pair is then unused.
    sharded: bool

    def num_samples(self) -> int:
        """Size of the training split (the sampler draws ids in [0, n))."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """What the optimizer updates."""

    def loss(self, model: torch.nn.Module, ids) -> torch.Tensor:
        """The loss of this rank's samples `ids` through `model` (the DDP-wrapped module)."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current weights (rank 0 only)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The model tensors a checkpoint holds (a LoRA run: the adapter only)."""

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put checkpointed `state_tensors()` back."""

    def write_final(self, storage, run_name: str, metrics: dict, local_dir: str) -> None:
        """Write the run's final/ folder, metrics.json last."""


def build_task(cfg, model_path: str, repo_root: str, device: torch.device) -> Task:
    """The task `cfg.model.kind` names, with its model on `device`."""
    if cfg.model.kind == "causal_lm":
        from spotrun.jobs.finetune.tasks.sft import SFTTask

        return SFTTask(cfg, model_path, repo_root, device)
    from spotrun.jobs.finetune.tasks.encoder import EncoderTask

    return EncoderTask(cfg, model_path, repo_root, device)
