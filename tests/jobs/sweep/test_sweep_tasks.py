"""Sweeps for any task: `sweep.metric` is checked against the metrics of the task the config names,
and a sweep of the SFT task ranked by eval_loss (mode min) ends with results and a best experiment.
The SFT sweep runs on a tiny causal LM built from a config (SmolLM2's real tokenizer)."""

from __future__ import annotations

import csv

import pytest
from conftest import REPO, kill_tree, launch

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


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_sweep_of_the_sft_task_by_eval_loss_finds_a_best_experiment(storage, tiny_lm):
    args = [
        "experiment=tiny",
        "model=smollm2",  # picks task=sft by itself
        f"model.name={tiny_lm}",
        "model.local_package=null",
        "model.gguf_file=null",
        "data=stdlib_sft",
        "data.max_length=96",  # the chat template alone takes ~30 tokens
        "data.eval_size=8",
        "trainer.batch_size=2",
        "trainer.max_steps=6",
        "checkpoint.every_steps=3",
        "sweep.metric=eval_loss",
        "sweep.mode=min",
        "sweep.scheduler=none",
        "sweep.num_trials=2",
        f"storage.root={storage}",
        "run.name=sft",
        f"sweep.export_dir={storage}/exp",
    ]
    log = storage / "log.txt"
    proc = launch(args, log, module="pipelines.sweep")
    try:
        assert proc.wait(timeout=1500) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    with open(storage / "sft" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}
    assert all(float(r["eval_loss"]) > 0 for r in rows)
    best = min(rows, key=lambda r: float(r["eval_loss"]))
    text = (storage / "sft" / "best_experiment.yaml").read_text()
    assert f"Best trial {best['trial']}" in text and "SFTTask" in text  # the task travels with it
    assert (storage / "exp" / "best-sft.yaml").read_text() == text
    assert (storage / "sft" / "metric.png").stat().st_size > 0
