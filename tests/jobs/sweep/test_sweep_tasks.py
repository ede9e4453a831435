"""Sweeps for any task: `sweep.metric` is checked against the metrics of the task the config names.
A sweep of the SFT task by eval_loss runs end to end, reclaimed, in tests/jobs/sweep/test_sweep.py."""

from __future__ import annotations

import pytest
from conftest import REPO

from spotrun.core.config import ConfigError, compose
from spotrun.jobs.sweep.config import register, validate_sweep


def sweep_cfg(overrides: list[str]):
    register()
    return compose("sweep", ["experiment=tiny", *overrides], conf_dir=str(REPO / "conf"))


def test_sweep_metric_is_checked_against_the_tasks_metrics():
    with pytest.raises(ConfigError, match=r"sweep.metric='eval_loss': expected one of loss, recall_at_1"):
        validate_sweep(sweep_cfg(["sweep.metric=eval_loss", "sweep.scheduler=none"]))
    assert validate_sweep(sweep_cfg(["model=smollm2", "sweep.metric=eval_loss", "sweep.scheduler=none"]))
    assert validate_sweep(sweep_cfg(["task=classify", "sweep.metric=accuracy", "sweep.scheduler=none"]))
    with pytest.raises(ConfigError, match=r"sweep.metric='eval_loss': expected a metric reported at every"):
        validate_sweep(sweep_cfg(["model=smollm2", "sweep.metric=eval_loss"]))  # ASHA needs a step metric
