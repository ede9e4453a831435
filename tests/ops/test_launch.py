"""`spotrun launch`: its dry run, its one-line errors, secrets kept out of what it renders, and the
submission path. The submission test starts SkyPilot's API server on 127.0.0.1 (its jobs controller
in consolidation mode, so the managed-job flow runs here, up to the cloud precheck) and stops it by
`sky api stop` at the end. SkyPilot runs in a private HOME (tests/ops/skyhome.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import yaml
from conftest import REPO
from skyhome import BUCKET, SECRET, cli, private_home, sky_validate

from spotrun.ops import launch


@pytest.fixture(scope="module", autouse=True)
def private_sky_home(tmp_path_factory):
    yield from private_home(tmp_path_factory)


def test_dryrun_prints_valid_task_without_secret_values(private_sky_home, tmp_path):
    env = {"WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET + "-hf"}
    out = cli(
        ["finetune", "--dryrun", "cloud=gcp", f"storage.root={BUCKET}", "experiment=tiny"],
        private_sky_home,
        env,
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout and SECRET not in out.stderr
    task = yaml.safe_load(out.stdout)
    assert task["secrets"] == {"WANDB_API_KEY": "", "HF_TOKEN": "", "RAY_AUTH_TOKEN": ""}
    sky_validate(task, tmp_path)


@pytest.mark.parametrize(
    "args,key",
    [
        (
            ["cloud=gcp", "storage.root=runs"],
            "storage.root='runs'",
        ),  # a local path cannot outlive the VM (no storage.root: your own bucket, tests/ops/test_buckets.py)
        (["cloud=gcp", f"storage.root={BUCKET}", "cloud.recovery=EAGER"], "cloud.recovery='EAGER'"),
        (
            ["cloud=gcp", f"storage.root={BUCKET}", "cloud.recover_on_exit_codes=[1]"],
            "cloud.recover_on_exit_codes",
        ),
        (["cloud=gcp", f"storage.root={BUCKET}", "cloud.accelerators=[L4:x]"], "cloud.accelerators='L4:x'"),
        (["cloud=local", f"storage.root={BUCKET}"], "cloud='local'"),
        (["cloud=gcp", f"storage.root={BUCKET}", "cloud.num_nodes=two"], "cloud.num_nodes='two'"),
        (
            ["cloud=gcp", f"storage.root={BUCKET}", "cloud.fallback.deadline=friday"],
            "cloud.fallback.deadline='friday'",
        ),
        (
            ["sweep", "cloud=gcp", f"storage.root={BUCKET}", "cloud.fallback.after_reclaims=2"],
            "cloud.fallback.after_reclaims=2: expected null",
        ),
    ],
)
def test_bad_launch_config_is_one_line_exit_2(args, key, capfd):
    """`spotrun launch` in this process (the private HOME is this module's): one line, exit 2."""
    from spotrun.ops.cli import main

    job = [] if args[0] == "sweep" else ["finetune"]
    capfd.readouterr()
    code = main(["launch", *job, "--dryrun", *args])
    out = capfd.readouterr()
    assert code == 2, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spotrun: config error: {key}"), out.err
    assert out.out == ""


def test_missing_cloud_extra_is_one_line_exit_2(capfd):
    if launch.importlib.util.find_spec("googleapiclient") is not None:
        pytest.skip("skypilot[gcp] is installed here: the missing-extra path cannot be shown")
    from spotrun.ops.cli import main

    capfd.readouterr()
    code = main(["launch", "finetune", "cloud=gcp", f"storage.root={BUCKET}"])
    out = capfd.readouterr()
    assert code == 2, out.err
    assert out.err.strip() == (
        "spotrun: no access to gcp: SkyPilot's gcp extra is not installed; run `pip install -e '.[gcp]'`, "
        "set up gcp credentials, then `sky check gcp`"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_launch_submits_to_local_api_server_and_stops_at_no_cloud_access(private_sky_home):
    if shutil.which("rsync") is None:
        pytest.skip("SkyPilot stages managed-job files with rsync, which is not installed here")
    # Its own port: never talk to another SkyPilot API server on this host.
    env = {"SKYPILOT_API_SERVER_LOCAL_PORT": str(_free_port()), "WANDB_API_KEY": SECRET}
    # SkyPilot sizes its API-server workers and job controllers from the machine: on 24 GB a dozen
    # controller processes, which on 2 cores kept the precheck from coming within 12 min. The pod
    # limits it honours size them for one small job: ~30 s from a cold server to the exit-2 line.
    env.update(SKYPILOT_POD_MEMORY_GB_LIMIT="4", SKYPILOT_POD_CPU_CORE_LIMIT="2")
    # Offline, SkyPilot's server cannot fetch its catalogs (GPUs, regions), so this task names neither:
    # the flow then runs through submission to the cloud precheck.
    args = ["finetune", "cloud=aws", "storage.root=s3://spotrun-test-bucket/runs"]
    args += ["cloud.accelerators=[]", "cloud.regions=[]"]
    try:
        out = cli(args, private_sky_home, env, timeout=420)
        assert "managed job 1" in out.stdout + out.stderr, out.stdout + out.stderr  # it was submitted
        assert SECRET not in out.stdout + out.stderr
        if out.returncode == 0:
            # A cold API server on 2 shared cores starts a dozen controller processes: the precheck can
            # come after launch's watch window. Watch on from here, through the same server.
            os.environ.update(env)
            with pytest.raises(launch.LaunchError) as e:
                launch.watch(1, "aws", timeout_s=300)
            code, line = e.value.code, f"spotrun: {e.value}"
        else:
            code, line = out.returncode, out.stderr.strip().splitlines()[-1]
        assert code == 2, line
        assert line.startswith("spotrun: no access to aws: set up aws credentials and run `sky check aws`")
        assert "managed job 1 stopped at SkyPilot's prechecks" in line
        # The controller must hand the value to the VM, so SkyPilot keeps it (as for `sky jobs launch
        # --secret`) in its own task file, owner-only; the user's YAML it stores holds no value.
        state = list((private_sky_home / ".sky" / "managed_jobs").iterdir())
        holding = [p for p in state if SECRET in p.read_text()]
        assert [p.suffix for p in holding] == [".yaml"] and holding[0].stat().st_mode & 0o077 == 0, holding
        assert any(p.name.endswith(".original_user_yaml") for p in state)
    finally:
        stop = subprocess.run(
            [str(REPO / ".venv" / "bin" / "sky"), "api", "stop"],
            env={**os.environ, "HOME": str(private_sky_home), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        for k in env:
            os.environ.pop(k, None)
        assert stop.returncode == 0, stop.stderr


def test_a_launch_from_another_folder_uploads_the_repository_without_credentials(private_sky_home, tmp_path):
    """Run from a folder holding a `.env` (as $HOME would hold ~/.aws): the task's workdir is still
    the repository, and SkyPilot's own upload filter (.skyignore) drops credential files there."""
    from sky.data import storage_utils

    elsewhere = tmp_path / "home-like"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text(f"WANDB_API_KEY={SECRET}\n")
    out = cli(
        ["finetune", "--dryrun", "cloud=gcp", f"storage.root={BUCKET}"], private_sky_home, cwd=elsewhere
    )
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(out.stdout)
    assert task["workdir"] == str(REPO) and (REPO / ".skyignore").is_file()
    sky_validate(task, tmp_path)
    # the filter SkyPilot applies to the workdir, on a copy of the repo's .skyignore and planted files
    tree = tmp_path / "tree"
    for rel in (
        ".env",
        "conf/.env.prod",
        "keys/id.pem",
        "gcp-credentials.json",
        ".aws/credentials",
        "src/ok.py",
    ):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    shutil.copy(REPO / ".skyignore", tree / ".skyignore")
    excluded = set(storage_utils.get_excluded_files(str(tree)))
    assert {".env", "conf/.env.prod", "keys/id.pem", "gcp-credentials.json", ".aws"} <= excluded
    assert "src/ok.py" not in excluded and "src" not in excluded
    kept = set(storage_utils.get_excluded_files(str(REPO)))  # the job's own code is uploaded
    assert not kept & {"src", "pipelines", "conf", "sky", "pyproject.toml", "data"}


def test_overrides_travel_resolved_once_and_one_argument_each(monkeypatch, tmp_path):
    """An interpolation is resolved here, a value with spaces stays one override: `run:`'s
    `eval "set -- $ARGS"` gives back exactly the overrides, which compose to the same values."""
    from spotrun.core.config import compose

    monkeypatch.setenv("SPOTRUN_TEST_LR", "0.0003")
    overrides = ["cloud=gcp", f"storage.root={BUCKET}", "trainer.lr=${oc.env:SPOTRUN_TEST_LR}"]
    overrides += ["logger.project='my project; $(touch pwned)'", "experiment=tiny"]
    [task] = launch.build("finetune", overrides)
    monkeypatch.delenv("SPOTRUN_TEST_LR")  # the VM does not have it: the value must already be there
    shell = 'set -e -f; eval "set -- $ARGS"; printf "%s\\0" "$@"'
    out = subprocess.run(
        ["bash", "-c", shell],
        env={"ARGS": task["envs"]["ARGS"], "PATH": os.environ["PATH"]},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    args = out.stdout.split("\0")[:-1]
    assert len(args) == 3 and not (tmp_path / "pwned").exists()
    cfg = compose("finetune", args, conf_dir=f"{REPO}/conf")
    assert cfg.trainer.lr == 0.0003 and cfg.logger.project == "my project; $(touch pwned)"
    assert "oc.env" not in task["envs"]["ARGS"]


@pytest.mark.parametrize(
    "override",
    [
        "run.name=${oc.env:WANDB_API_KEY}",
        f"logger.project={SECRET}",
        "run.name=${oc.env:AWS_SECRET_ACCESS_KEY}",
    ],
)
def test_a_secret_in_a_name_or_override_is_refused(override, capfd, monkeypatch):
    """In this process, the secrets in its environment (the real command line: the dry-run tests)."""
    from spotrun.ops.cli import main

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "aws")
    capfd.readouterr()
    code = main(["launch", "finetune", "--dryrun", "cloud=gcp", f"storage.root={BUCKET}", override])
    out = capfd.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "expected no secret" in lines[0], out.err
    assert SECRET not in out.err and SECRET not in out.out
