"""What a resume must not change. Every checkpoint's state.json records a fingerprint of the settings
that decide what is trained and how (task, model, training data, batch size, optimizer, schedule,
seed); a relaunch whose config differs is refused with one line naming the keys, so two runs never
mix in one folder. Everything else may change across a resume, for instance `trainer.max_steps`
(train longer), `trainer.num_workers` (elastic), `checkpoint.*`, `storage`, `cloud`, `logger`,
`data.eval_size`, `trainer.eval_batch_size`, `trainer.use_gpu`, `model.save_merged`."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from spotrun.core.errors import ConfigError
from spotrun.recovery.checkpoint import CheckpointStore

FIXED = (
    "task",
    "model",
    "data",
    "trainer.batch_size",
    "trainer.lr",
    "trainer.weight_decay",
    "trainer.warmup_steps",
    "trainer.grad_clip",
    "trainer.parallel",
    "optimizer",
    "scheduler",
    "seed",
)
FREE = ("model.save_merged", "data.eval_size", "data.eval_files")  # under FIXED groups, yet free


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def fingerprint(cfg: DictConfig) -> dict:
    """{dotted key: value} of every setting a resume must keep (JSON-able)."""
    out = {}
    for key in FIXED:
        node = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        out.update(_flat(value, key))
    return {k: v for k, v in out.items() if k not in FREE}


def changes(saved: dict, now: dict) -> list[str]:
    """`key: old -> new` for every key whose value differs (or is only on one side)."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def refusal(run_name: str, saved: dict | None, now: dict) -> str | None:
    """The one-line refusal of a resume from a checkpoint made with `saved`, or None if it may go on."""
    diff = changes(saved, now) if saved is not None else []
    if not diff:
        return None
    return (
        f"run.name={run_name!r}: its checkpoints were made with other settings ({'; '.join(diff)}); "
        f"expected the same values to resume it, or a new run.name"
    )


def check_resume(cfg: DictConfig, storage, run_name: str) -> bool:
    """Before Ray: refuse (ConfigError) a relaunch whose fingerprint differs from the newest committed
    checkpoint's. A run with no checkpoint, or one made before fingerprints, passes. True when this
    is a resume of these very settings: an earlier attempt built this task, model and data and
    committed a checkpoint with them."""
    store = CheckpointStore(storage, run_name)
    for step in reversed(store.committed_steps()):
        try:
            meta = json.loads(storage.read_bytes(f"{store.dir_for(step)}/state.json"))
        except (OSError, ValueError):
            continue  # unreadable: the loop skips it too, and checks the one it resumes from
        line = refusal(run_name, meta.get("fingerprint"), fingerprint(cfg))
        if line:
            raise ConfigError(line)
        return meta.get("fingerprint") is not None
    return False
