"""The swappable parts of a fine-tune, built from their config groups by `_target_`
(hydra.utils.instantiate): the optimizer (conf/optimizer/) and the learning-rate schedule
(conf/scheduler/). The task is in tasks/. `check_parts` finds every target before Ray starts."""

from __future__ import annotations

from hydra.utils import instantiate

from spotrun.core.errors import ConfigError
from spotrun.jobs.finetune.tasks import locate, task_class


def build_optimizer(cfg, params):
    """`optimizer._target_`(params, lr=trainer.lr, weight_decay=trainer.weight_decay, **its args)."""
    t = cfg.trainer
    return instantiate(cfg.optimizer, params, lr=t.lr, weight_decay=t.weight_decay, _convert_="all")


def build_scheduler(cfg, optimizer):
    """`scheduler._target_`(optimizer, num_warmup_steps, num_training_steps, **its args)."""
    t = cfg.trainer
    return instantiate(
        cfg.scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps
    )


def _importable(group: str, node) -> None:
    target = node.get("_target_") if node else None
    if not target:
        raise ConfigError(f"{group}={target!r}: expected a config in conf/{group}/ with a _target_")
    locate(f"{group}._target_", target, load=False)  # instantiated in the workers


def check_parts(cfg) -> type:
    """Find the task, optimizer and scheduler targets (the task imported: its class checks the
    model); returns the task class. ConfigError if one is not there."""
    cls = task_class(cfg)
    _importable("optimizer", cfg.get("optimizer"))
    _importable("scheduler", cfg.get("scheduler"))
    return cls
