"""The fine-tune's checks that look outside the config (the sweep runs them too)."""

from __future__ import annotations

from spotrun.core.errors import ConfigError
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.datacheck import check_data, check_length
from spotrun.jobs.finetune.parts import check_parts
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
    # cheapest first: the data reads in ~1 s; checkpoints and the task's code import torch (~2 s),
    # the model's config transformers (~4 s)
    check_data(cfg, repo_root)
    from spotrun.jobs.finetune.models import check_model, model_is_there
    from spotrun.jobs.finetune.resume import check_resume

    resuming = check_resume(cfg, storage, run_name)  # a relaunch must not change what its checkpoints trained
    # a resume of these very settings: an earlier attempt built this task, optimizer and schedule,
    # loaded this model and trained with this data.max_length (the fingerprint holds task.*, model.*,
    # data.*, optimizer.* and scheduler.*) and committed a checkpoint, so the model folder is only
    # checked to be there; a first launch finds each part and reads the model's config (~4 s of
    # transformers imports, off every restart's path)
    if resuming:
        return run_name, model_is_there(cfg.model)
    task_cls = check_parts(cfg)  # the task, optimizer, schedule are there
    model_path, config = check_model(cfg.model, task_cls)
    check_length(cfg, model_path, config)
    return run_name, model_path
