"""What the training loop trains: a task builds the model and turns sample ids into a loss.

The loop (loop.py) owns control flow: resume, save, notices, reports, finish. A task owns everything
model-specific. The `task` config group names it by `_target_` (built with hydra.utils.instantiate);
its other keys are the task's own arguments:

    conf/task/encoder.yaml   tasks/encoder.py   bi-encoder, in-batch negatives, recall@1 (the default)
    conf/task/sft.yaml       tasks/sft.py       instruction SFT of a causal LM, LoRA or full, eval loss
    conf/task/classify.yaml  tasks/classify.py  text classification (the worked example), accuracy

A new task is one Python file with a class like these plus one YAML in conf/task/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from spotrun.core.errors import ConfigError
from spotrun.jobs.finetune.outputs import write_final

if TYPE_CHECKING:  # a config check imports this package before anything needs torch
    import torch


class WholeModel:
    """For a task whose checkpoint is its whole model (`self.model`) and whose final/ is a Hugging
    Face folder with its tokenizer (`self.tok`)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)

    def write_final(self, storage, run_name: str, metrics: dict, local_dir: str) -> None:
        write_final(storage, run_name, self.model, self.tok, metrics, local_dir)


class Task(Protocol):
    # Class attributes: read before Ray starts (sweep.metric is checked against `metrics`).
    metrics: tuple[str, ...]  # every metric evaluate() returns
    metric: str  # the headline one, shown in summaries
    mode: str  # "max" or "min": which way the headline metric improves
    model: torch.nn.Module  # the module the loop wraps in DDP and trains
    # True under FSDP: the loop checkpoints through save_sharded/load_sharded (DCP, every rank) and
    # runs evaluate/write_final on every rank; the state_tensors/load_state pair is then unused.
    sharded: bool

    def __init__(self, cfg, model_path: str, repo_root: str, device: torch.device, **task_args): ...

    def num_samples(self) -> int:
        """Size of the training split (the sampler draws ids in [0, n))."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """What the optimizer updates."""

    def loss(self, model: torch.nn.Module, ids) -> torch.Tensor:
        """The loss of this rank's samples `ids` through `model` (the DDP-wrapped module)."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current weights (rank 0 only, unless sharded)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The model tensors a checkpoint holds (a LoRA run: the adapter only)."""

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put checkpointed `state_tensors()` back."""

    def write_final(self, storage, run_name: str, metrics: dict, local_dir: str) -> None:
        """Write the run's final/ folder, metrics.json last."""

    # Optional: `check(cls, cfg, model_config)` (classmethod, before Ray: a ConfigError for a model
    # the task cannot train) and `extra_states(self) -> dict[str, Stateful]` (checkpointed with the rest).


def locate(key: str, target: str | None, load: bool = True):
    """What the dotted `target` names ("package.module.Name"); a one-line ConfigError if it cannot be
    imported. (hydra.utils.get_class logs a multi-line error before raising: not used here.)
    load=False only checks the name is there: a lazily importing package (transformers) lists its
    names without loading them, so the driver need not import what only the workers build (~5 s)."""
    import importlib

    module, _, name = (target or "").rpartition(".")
    try:
        found = importlib.import_module(module)
        if not load and name not in vars(found) and name in dir(found):
            return None  # listed by a lazy module: the workers import it
        return getattr(found, name)
    except (ImportError, AttributeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}={target!r}: expected an importable class or function ({reason})") from None


def task_class(cfg) -> type:
    """The class `task._target_` names, imported without building anything; a one-line ConfigError
    for a missing or unimportable target."""
    target = cfg.task.get("_target_") if cfg.get("task") else None
    if not target:
        raise ConfigError(f"task={target!r}: expected a config in conf/task/ with a _target_ class")
    cls = locate("task._target_", target)
    missing = [a for a in ("metrics", "metric", "mode") if not hasattr(cls, a)]
    if missing:
        raise ConfigError(f"task._target_={target!r}: expected a task class; it lacks {', '.join(missing)}")
    return cls


def build_task(cfg, model_path: str, repo_root: str, device: torch.device) -> Task:
    """The task `cfg.task` names, with its model on `device`."""
    from hydra.utils import instantiate

    # _recursive_=False: cfg (passed whole) holds other `_target_` nodes the task must not build
    return instantiate(
        cfg.task, cfg=cfg, model_path=model_path, repo_root=repo_root, device=device, _recursive_=False
    )
