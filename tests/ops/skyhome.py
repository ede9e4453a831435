"""What the SkyPilot test modules share: a private HOME for SkyPilot, its offline validators, and
`spotrun launch` as a subprocess in that HOME."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import REPO

BUCKET = "gs://spotrun-test-bucket/runs"
SECRET = "sk-test-9f8e7d6c5b4a-never-in-yaml"


def private_home(tmp_path_factory):
    """A private HOME for every SkyPilot call of a test module (in-process and subprocesses), with
    SkyPilot's jobs controller in consolidation mode; a module wraps it in its own fixture."""
    home = tmp_path_factory.mktemp("home")
    (home / ".sky").mkdir()
    (home / ".sky" / "config.yaml").write_text("jobs:\n  controller:\n    consolidation_mode: true\n")
    old = {k: os.environ.get(k) for k in ("HOME", "SKYPILOT_DISABLE_USAGE_COLLECTION")}
    os.environ.update(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    yield home
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def sky_validate(task: dict, tmp_path) -> None:
    """The three SkyPilot validators the issue names, on a task dict written to a file."""
    from sky.utils import common_utils, dag_utils, schemas

    import sky

    common_utils.validate_schema(task, schemas.get_task_schema(), "Invalid task: ")
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    task_obj = sky.Task.from_yaml(str(path))
    assert task_obj.run
    # a null secret is a managed-secret reference to SkyPilot 0.14: the job would fail at launch
    assert not task_obj.managed_secret_refs, task_obj.managed_secret_refs
    assert len(dag_utils.load_chain_dag_from_yaml(str(path)).tasks) == 1


def cli(
    args: list[str], home, env: dict | None = None, timeout: float = 240, cwd=REPO
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "WANDB_API", "HF_TOKEN"))}
    base.update(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "spotrun.ops.cli", "launch", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
