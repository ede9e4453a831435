"""The fine-tune's checks that look outside the config (the sweep runs them too)."""

from __future__ import annotations

from spotrun.core.errors import ConfigError
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.datacheck import check_data
from spotrun.jobs.finetune.models import check_model, model_is_there
from spotrun.jobs.finetune.parts import check_parts
from spotrun.jobs.finetune.resume import check_resume
from spotrun.recovery.runtime import resolve_run_name


def preflight(cfg, repo_root: str) -> tuple[str, str]:
    """The run name and the model's path, after the checks that look outside the config: the storage
    root is reachable, a relaunch keeps what its checkpoints trained, the model loads, the data reads
    as training will read it. Raises ConfigError; starts nothing."""
    run_name = resolve_run_name(cfg)
    storage = storage_from_cfg(cfg, repo_root)
    unreachable = storage.probe()
    if unreachable:
        raise ConfigError(
            f"storage.root={cfg.storage.root!r}: expected a reachable folder or bucket ({unreachable})"
        )
    resuming = check_resume(cfg, storage, run_name)  # a relaunch must not change what its checkpoints trained
    task_cls = check_parts(cfg)  # the task, optimizer, schedule are there
    # a resume of these very settings: an earlier attempt loaded this model (the fingerprint holds
    # model.*), so its folder is only checked to be there; a first launch reads its config (~4 s of
    # transformers imports, off every restart's path)
    model_path = model_is_there(cfg.model) if resuming else check_model(cfg.model, task_cls)
    check_data(cfg, repo_root, model_path, check_length=not resuming)
    return run_name, model_path
