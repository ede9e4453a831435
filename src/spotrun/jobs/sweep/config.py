"""The sweep job's config: the fine-tune schema plus a `sweep` group (search space, metric, budget).

A search space is a tree that mirrors the fine-tune config; each leaf is one distribution:

    space:
      trainer:
        lr: {loguniform: [1.0e-5, 1.0e-3]}
        warmup_steps: {choice: [0, 5]}
      model:
        scale: {uniform: [10, 30]}

Every mistake is a one-line `ConfigError` raised before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from spotrun.core.config import ConfigError, FinetuneConf
from spotrun.jobs.finetune.tasks import task_class

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")
# groups a trial may change
SEARCHABLE = ("model", "task", "optimizer", "scheduler", "data", "trainer", "checkpoint", "seed")
SCHEDULERS = ("asha", "none")
SEARCHES = ("random", "optuna")
STEP_METRICS = ("loss",)  # reported at every checkpoint: usable by ASHA
# the task's own metrics (its class's `metrics`, e.g. recall_at_1, eval_loss) are reported once, at the end


@dataclass
class SweepConf:
    metric: str = "loss"
    mode: str = "min"
    num_trials: int = 4  # Tune's num_samples: with grid keys, each sample runs the whole grid
    concurrency: int = 2  # trials at once; each needs trainer.num_workers CPUs (or GPUs)
    scheduler: str = "asha"
    search: str = "random"
    grace_steps: int = 10  # ASHA: no trial is stopped before this many steps
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_failures: int = 2  # Tune restarts of a failed trial (each resumes from its checkpoint)
    export_dir: str | None = "conf/experiment"  # where best-config experiment goes; null: run folder only
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepJobConf(FinetuneConf):
    sweep: SweepConf = field(default_factory=SweepConf)


def register() -> None:
    ConfigStore.instance().store(name="sweep_schema", node=SweepJobConf)


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={value!r}: expected {expected}")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_leaf(key: str, node: DictConfig) -> None:
    """One distribution: exactly one known kind with well-formed arguments."""
    kinds = list(node.keys())
    if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
        _fail(key, OmegaConf.to_container(node), f"one distribution: {{{'|'.join(DISTRIBUTIONS)}: ...}}")
    kind, args = kinds[0], node[kinds[0]]
    value = OmegaConf.to_container(args) if isinstance(args, ListConfig) else args
    where = f"{key}.{kind}"
    if kind in ("choice", "grid"):
        if not isinstance(value, list) or not value:
            _fail(where, value, "a non-empty list of values")
        return
    if not (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)):
        _fail(where, value, "[low, high], two numbers")
    if value[0] > value[1]:
        _fail(where, value, "low <= high")
    if kind == "loguniform" and value[0] <= 0:
        _fail(where, value, "low > 0 for a log scale")


def leaves(space: DictConfig, cfg: DictConfig, prefix: str = "") -> dict[str, DictConfig]:
    """The space's distributions by dotted config key, each key checked against the job config."""
    found: dict[str, DictConfig] = {}
    for name, node in space.items():
        path = f"{prefix}{name}"
        key = f"sweep.space.{path}"
        group = path.split(".")[0]
        if group not in SEARCHABLE or OmegaConf.select(cfg, path, default="<missing>") == "<missing>":
            parent = OmegaConf.select(cfg, prefix[:-1]) if prefix else None
            known = ", ".join(parent.keys()) if isinstance(parent, DictConfig) else ", ".join(SEARCHABLE)
            raise ConfigError(f"{key}: unknown key; expected a config key (one of {known})")
        target = OmegaConf.select(cfg, path)
        if isinstance(node, DictConfig) and isinstance(target, DictConfig):
            found.update(leaves(node, cfg, f"{path}."))
        elif isinstance(node, DictConfig):
            _check_leaf(key, node)
            found[path] = node
        else:
            _fail(key, node, f"a distribution {{{'|'.join(DISTRIBUTIONS)}: ...}}")
    return found


def validate_sweep(cfg: DictConfig) -> dict[str, DictConfig]:
    """Check the sweep group; returns the search space's leaves. Raises ConfigError."""
    s = cfg.sweep
    metrics = STEP_METRICS + tuple(task_class(cfg).metrics)
    if s.metric not in metrics:
        _fail("sweep.metric", s.metric, f"one of {', '.join(metrics)} (what {cfg.task._target_} reports)")
    if s.mode not in ("min", "max"):
        _fail("sweep.mode", s.mode, "min or max")
    if s.scheduler not in SCHEDULERS:
        _fail("sweep.scheduler", s.scheduler, f"one of {', '.join(SCHEDULERS)}")
    if s.search not in SEARCHES:
        _fail("sweep.search", s.search, f"one of {', '.join(SEARCHES)}")
    for key in ("num_trials", "concurrency", "grace_steps"):
        if s[key] < 1:
            _fail(f"sweep.{key}", s[key], "an int >= 1")
    if s.reduction_factor < 2:
        _fail("sweep.reduction_factor", s.reduction_factor, "an int >= 2")
    if s.max_failures < 0:
        _fail("sweep.max_failures", s.max_failures, "an int >= 0")
    if s.scheduler == "asha" and s.metric not in STEP_METRICS:
        _fail("sweep.metric", s.metric, f"a metric reported at every checkpoint for ASHA ({STEP_METRICS[0]})")
    found = leaves(s.space, cfg)
    if not found:
        _fail("sweep.space", {}, "at least one distribution")
    if s.search == "optuna" and any("grid" in node for node in found.values()):
        _fail("sweep.search", s.search, "random when the space has grid keys (Optuna samples, no grids)")
    return found
