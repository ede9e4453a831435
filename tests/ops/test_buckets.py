"""`make finetune CLOUD=gcp` with no bucket: the user's own bucket, named, created on the real servers
(S3 and GCS emulators on 127.0.0.1), remembered; the dry run renders a task SkyPilot's own code accepts."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from conftest import REPO

from spotrun.core.config import ConfigError
from spotrun.core.storage import open_storage
from spotrun.ops import buckets, launch, skytask


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """A private HOME (SkyPilot's ~/.sky and spotrun's ~/.config/spotrun/buckets.json)."""
    home = tmp_path / "home"
    (home / ".sky").mkdir(parents=True)
    for k, v in dict(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def make(*args: str, home) -> subprocess.CompletedProcess:
    # as typed in a fresh shell: none of an outer make's settings (it exports its command-line
    # variables, e.g. `make test ARGS=...`, to every recipe's environment)
    outer = {"ARGS", "CLOUD", "DRYRUN", "RUN", "ROOT", "MFLAGS"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SKYPILOT_", "WANDB_API", "MAKE")) and k not in outer
    }
    env.update(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    # -o .venv/.installed: the venv is taken as made (a test never reinstalls it)
    return subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("cloud, scheme", [("gcp", "gs"), ("aws", "s3")])
def test_make_finetune_cloud_dryrun_names_the_users_bucket(cloud, scheme, user_home):
    p = make("finetune", f"CLOUD={cloud}", "DRYRUN=1", home=user_home)
    assert p.returncode == 0, p.stderr[-3000:]
    root = buckets.default_root(cloud)
    assert root.startswith(f"{scheme}://spotrun-") and root.endswith("/runs")
    assert f"storage.root={root} (your {cloud} bucket" in p.stderr  # says which bucket it chose
    task = yaml.safe_load(p.stdout)
    assert task["envs"]["BUCKET"] == root and task["envs"]["CLOUD"] == cloud
    assert "storage.root" not in task["envs"]["ARGS"]  # the bucket travels as BUCKET only
    skytask.validate(task)  # SkyPilot's schema, Task loader and chain loader
    assert not buckets.remembered()  # a dry run only names it


def test_bucket_name_is_legal_and_stable():
    a = buckets.default_root("gcp", user="Jane.Doe_42", host="laptop")
    assert a == buckets.default_root("gcp", user="Jane.Doe_42", host="laptop")
    name = buckets.bucket_of(a)
    assert 3 <= len(name) <= 63 and name.replace("-", "").isalnum() and name == name.lower()
    assert buckets.bucket_of(buckets.default_root("gcp", user="Jane.Doe_42", host="other")) != name


def test_azure_says_what_is_supported(user_home):
    p = make("finetune", "CLOUD=azure", "DRYRUN=1", home=user_home)
    assert p.returncode != 0
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("spotrun:")]
    assert "storage.root" in line and "cloud=azure" in line and "gcp and aws" in line


def test_an_explicit_bucket_wins(user_home):
    overrides, chosen = launch.with_bucket("finetune", ["cloud=gcp", "storage.root=gs://mine/runs"])
    assert chosen is None and overrides[-1] == "storage.root=gs://mine/runs"


@pytest.mark.parametrize("kind", ["s3", "gs"])
def test_real_launch_creates_and_remembers_the_bucket(kind, request, user_home, monkeypatch, capsys):
    server = request.getfixturevalue(f"{kind}_server")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")  # the project a new GCS bucket belongs to
    cloud = {"s3": "aws", "gs": "gcp"}[kind]
    root = buckets.default_root(cloud, user=f"tester-{kind}", host="ci")
    storage = open_storage(root)
    assert storage.fs.get_file_info(buckets.bucket_of(root)).type.name == "NotFound"

    launch.own_bucket(cloud, root, dryrun=False)  # what a real launch does before submitting
    assert "created" in capsys.readouterr().err
    assert storage.fs.get_file_info(buckets.bucket_of(root)).type.name == "Directory"
    storage.write_bytes(storage.path("probe", "x.txt"), b"ok")  # a usable bucket
    assert storage.read_bytes(storage.path("probe", "x.txt")) == b"ok"
    assert buckets.remembered() == {cloud: root}
    assert buckets.choose(cloud) == root  # every later launch: the same bucket

    launch.own_bucket(cloud, root, dryrun=False)  # the second launch finds it
    assert "found" in capsys.readouterr().err


def test_remembered_choice_survives_a_new_host_name(user_home):
    buckets.remember("gcp", "gs://spotrun-someone-0badcafe/runs")
    assert buckets.choose("gcp") == "gs://spotrun-someone-0badcafe/runs"
    assert buckets.choose("aws") == buckets.default_root("aws")
    with pytest.raises(ConfigError, match="cloud=azure"):
        buckets.choose("azure")
