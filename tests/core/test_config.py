"""Every config file composes; every kind of bad input is one clear line, exit 2, before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, pipeline_env

from spotrun.core.config import ConfigError, compose, validate, worker_range

CONF = str(REPO / "conf")
GROUPS = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


JOB_OF_GROUP = {"embed": "embed", "sweep": "sweep"}  # groups of the other jobs' primary configs


@pytest.mark.parametrize("group_option", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_config_file_composes_and_validates(group_option):
    from spotrun.jobs.embed import config as embed_config
    from spotrun.jobs.sweep import config as sweep_config

    embed_config.register()
    sweep_config.register()
    job = JOB_OF_GROUP.get(group_option.split("=")[0], "finetune")
    cfg = compose(job, [group_option], CONF)
    if job == "finetune":
        validate(cfg, str(REPO))
    assert cfg.run.job == job


def test_required_groups_exist():
    for group in ("model", "data", "trainer", "checkpoint", "storage", "cloud", "logger", "experiment"):
        assert options(group), group
    assert options("cloud") == ["aws", "azure", "gcp", "local"]


def test_experiment_is_a_diff():
    base, tiny = compose("finetune", [], CONF), compose("finetune", ["experiment=tiny"], CONF)
    assert tiny.trainer.max_steps < base.trainer.max_steps
    assert tiny.model == base.model and tiny.storage == base.storage


def test_overrides_every_pipeline_accepts():
    cfg = compose(
        "finetune",
        [
            "run.name=abc",
            "storage.root=/tmp/x",
            "trainer.max_steps=7",
            "trainer.num_workers=[1,2]",
            "checkpoint.every_steps=3",
            "seed=5",
        ],
        CONF,
    )
    assert (cfg.run.name, cfg.storage.root, cfg.trainer.max_steps, cfg.checkpoint.every_steps, cfg.seed) == (
        "abc",
        "/tmp/x",
        7,
        3,
        5,
    )
    assert worker_range(cfg.trainer.num_workers) == (1, 2)


@pytest.mark.parametrize("value,expected", [(2, (2, 2)), ([1, 3], (1, 3))])
def test_worker_range(value, expected):
    assert worker_range(value) == expected


@pytest.mark.parametrize("value", [0, -1, [2, 1], [1, 2, 3], "x", True])
def test_worker_range_rejects(value):
    with pytest.raises(ConfigError, match="trainer.num_workers"):
        worker_range(value)


BAD = [
    (["trainer.lrr=1"], "trainer.lrr"),
    (["trainer.lr=abc"], "trainer.lr='abc'"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.num_workers=[3,1]"], "trainer.num_workers"),
    (["cloud=gcpp"], "cloud='gcpp'"),
    (["experiment=nope"], "experiment='nope'"),
    (["data.train_files=missing.jsonl"], "data.train_files='missing.jsonl'"),
    (["model.local_package=null", "model.name=/no/such/model"], "model.name='/no/such/model'"),
    (["model.local_package=null", "model.name=nobody/no-such-model"], "model.name='nobody/no-such-model'"),
    (["checkpoint.keep=0"], "checkpoint.keep=0"),
    (["storage.root=ftp://host/x"], "storage.root='ftp://host/x'"),
    (["run.name=bad/name"], "run.name='bad/name'"),
    (["logger.wandb_mode=loud"], "logger.wandb_mode='loud'"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[a[0] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_before_ray(args, key, capsys):
    """The entry point's main() in this process: exit 2, one line, Ray never started."""
    import ray

    from pipelines.finetune import main

    assert main(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: "), lines
    assert key in lines[0] and ("expected" in lines[0] or "unknown key" in lines[0]), lines[0]
    assert not ray.is_initialized()


@pytest.mark.parametrize("args,key", BAD[:1] + BAD[-1:], ids=[BAD[0][0][0], BAD[-1][0][0]])
def test_bad_input_through_the_real_command_line(args, key):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.finetune", *args],
        cwd=REPO,
        env=pipeline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: "), proc.stderr
    assert key in lines[0] and ("expected" in lines[0] or "unknown key" in lines[0]), lines[0]
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()
