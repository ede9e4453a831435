"""The fine-tune's checks that look outside the config (the sweep runs them too)."""

from __future__ import annotations

from spotrun.core.errors import ConfigError
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.models import check_model
from spotrun.recovery.runtime import resolve_run_name


def preflight(cfg, repo_root: str) -> tuple[str, str]:
    """The run name and the model's path, after the checks that look outside the config: the model
    loads, the storage root is reachable. Raises ConfigError; starts nothing."""
    run_name = resolve_run_name(cfg)
    model_path = check_model(cfg.model)
    unreachable = storage_from_cfg(cfg, repo_root).probe()
    if unreachable:
        raise ConfigError(
            f"storage.root={cfg.storage.root!r}: expected a reachable folder or bucket ({unreachable})"
        )
    return run_name, model_path
