"""Config inputs matched whole: run names, config group options, model.local_package."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, TINY, pipeline_env
from omegaconf import OmegaConf

from spotrun.core.config import RUN_NAME_RE, ConfigError, compose, validate

CONF = f"{REPO}/conf"


def test_run_name_is_matched_whole():
    assert RUN_NAME_RE.match("run-1") and not RUN_NAME_RE.match("run-1\n")
    cfg = compose("finetune", TINY, conf_dir=CONF)
    OmegaConf.update(cfg, "run.name", "run-1\n")
    with pytest.raises(ConfigError, match="run.name"):
        validate(cfg, str(REPO))


@pytest.mark.parametrize(
    "override",
    ["experiment=../data/stdlib_sft", "experiment=/etc/passwd", "model=../experiment/tiny", "data=a/b"],
)
def test_a_group_option_must_name_a_file_under_conf(override):
    with pytest.raises(ConfigError, match="expected the name of a file in conf/"):
        compose("finetune", [*TINY, override], conf_dir=CONF)


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ("os", "get_model_path"),  # installed, ships no model: never imported in its name
        ("antigravity", "get_model_path"),  # importing it would open a web browser
        ("os.path", "package name"),  # a dotted name: find_spec would import `os` first
        ("sys; import os", "package name"),
    ],
)
def test_local_package_must_ship_a_model(package, expected):
    cfg = compose("finetune", TINY, conf_dir=CONF)
    OmegaConf.update(cfg, "model.local_package", package)
    with pytest.raises(ConfigError, match=expected):
        validate(cfg, str(REPO))
    assert "antigravity" not in sys.modules


def test_the_shipped_model_packages_pass():
    validate(compose("finetune", TINY, conf_dir=CONF), str(REPO))


def test_the_entry_point_refuses_a_path_as_experiment(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.finetune", "experiment=../data/stdlib_sft"],
        cwd=REPO,
        env={**pipeline_env(), "RAY_TMPDIR": str(tmp_path / "ray")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "experiment='../data/stdlib_sft'" in lines[0], (
        out.stderr
    )
    assert not (tmp_path / "ray").exists()
