"""Compose `conf/<job>.yaml` with command-line overrides into one checked config."""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spotrun.core.config.schema import OPTION_RE, register
from spotrun.core.errors import ConfigError
from spotrun.core.errors import require as _require


def _one_line(e: Exception, overrides: list[str]) -> str:
    """The most specific message of a Hydra/OmegaConf error chain, on one line."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, option = e.missing_cfg_file.rsplit("/", 1)
        expected = f"one of {', '.join(e.options)}" if e.options else "an existing config file"
        return f"{group}={option!r}: no such config in conf/{group}/; expected {expected}"
    while e.__cause__ is not None and not isinstance(e, OmegaConfBaseException):
        e = e.__cause__
    if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        given = next(
            (o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == e.full_key), None
        )
        shown = f"{e.full_key}={given!r}" if given is not None else e.full_key
        if "not in" in msg:
            return f"{shown}: unknown key ({msg}); see conf/ for the keys of each group"
        wanted = re.search(r"could not be converted to (\w+)", msg) or re.search(
            r"Invalid type assigned: \w+ is not a subclass of (\w+)", msg
        )
        if wanted:
            return f"{shown}: expected a value of type {wanted.group(1).lower()}"
        return f"{shown}: {msg}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def check_group_options(overrides: list[str], conf_dir: str) -> None:
    """A config group option (`experiment=tiny`, `model=minilm`) names a file in its group folder
    under conf/: no path separators, no `..`, no absolute path. Raises ConfigError."""
    for o in overrides:
        key, eq, value = o.lstrip("+~").partition("=")
        parts = key.split("/")
        is_group = all(OPTION_RE.fullmatch(p) for p in parts) and os.path.isdir(
            os.path.join(conf_dir, *parts)
        )
        if eq and (is_group or parts[-1] == "experiment"):
            _require(bool(OPTION_RE.fullmatch(value)), key, value, f"the name of a file in conf/{key}/")


def job_overrides(config_name: str, overrides: list[str], conf_dir: str) -> list[str]:
    """`experiment=X` picks `conf/<job>/experiment/X.yaml` for a job that keeps its own experiments
    (embed, sweep), so `experiment=tiny` means "this job, small" for every job kind."""
    if not os.path.isdir(os.path.join(conf_dir, config_name, "experiment")):
        return list(overrides)
    return [f"{config_name}/{o}" if o.startswith("experiment=") else o for o in overrides]


def compose(config_name: str, overrides: list[str], conf_dir: str) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line overrides; a ConfigError on any mistake."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    register()
    check_group_options(overrides, conf_dir)
    overrides = job_overrides(config_name, overrides, conf_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_one_line(e, overrides)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, overrides)) from None
    return cfg
