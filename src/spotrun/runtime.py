"""The one module that reads the runtime environment (SkyPilot variables) and starts Ray."""

from __future__ import annotations

import logging
import os
import re

import ray

from spotrun.config import RUN_NAME_RE, ConfigError


def resolve_run_name(cfg) -> str:
    """run.name, else SkyPilot's task id (stable across recoveries), else "<job>-<experiment>"."""
    if cfg.run.name:
        return cfg.run.name
    task_id = os.environ.get("SKYPILOT_TASK_ID")
    if task_id:
        return re.sub(r"[^A-Za-z0-9._-]", "-", task_id).strip("-.")[:128]
    name = f"{cfg.run.job}-{cfg.experiment}"
    if not RUN_NAME_RE.match(name):
        raise ConfigError(f"experiment={cfg.experiment!r}: expected a name usable as a run name")
    return name


def init_ray() -> None:
    """A private local Ray cluster, or the cluster in $RAY_ADDRESS (multi-node on SkyPilot)."""
    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(
        address=address,
        include_dashboard=True,  # Ray Train's placement-group cleaner queries the state API
        logging_level=logging.WARNING,
        configure_logging=True,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}},
    )
