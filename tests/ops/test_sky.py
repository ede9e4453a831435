"""SkyPilot tasks: the YAMLs in sky/, the tasks `spotrun launch` renders, and the submission path.

Everything is checked with SkyPilot's own code, offline, in a private HOME (~/.sky), with usage
collection off. The submission test starts SkyPilot's API server on 127.0.0.1 (its jobs controller in
consolidation mode, so the managed-job flow runs here, up to the cloud precheck) and stops it by
`sky api stop` at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from spotrun.core.config import ConfigError
from spotrun.ops import launch, skytask

SKY_YAMLS = sorted((REPO / "sky").glob("*.yaml"))
BUCKET = "gs://spotrun-test-bucket/runs"
SECRET = "sk-test-9f8e7d6c5b4a-never-in-yaml"


@pytest.fixture(scope="module", autouse=True)
def private_sky_home(tmp_path_factory):
    """A private HOME for every SkyPilot call in this module (in-process and subprocesses)."""
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


def test_no_init_in_sky_folder():
    # A regular package named `sky` at the repo root would shadow SkyPilot's own package.
    assert not (REPO / "sky" / "__init__.py").exists()
    # one template for every job kind; sky/finetune.yaml is it, for `sky jobs launch sky/finetune.yaml`
    assert {p.name for p in SKY_YAMLS} == {"job.yaml", "finetune.yaml"}
    assert (REPO / "sky" / "finetune.yaml").resolve() == (REPO / "sky" / "job.yaml").resolve()


@pytest.mark.parametrize("path", SKY_YAMLS, ids=lambda p: p.name)
def test_sky_yaml_validates(path, tmp_path):
    text = path.read_text()
    task = yaml.safe_load(text)
    assert text.startswith("#") and "sky jobs launch" in text.splitlines()[2]  # usage comment on top
    assert len(text.splitlines()) <= 60
    sky_validate(task, tmp_path)
    skytask.check_recovery(task)
    res = task["resources"]
    assert res["use_spot"] is True and res["any_of"] and res["accelerators"]
    assert res["job_recovery"]["strategy"] == "EAGER_NEXT_REGION"
    assert 75 in res["job_recovery"]["recover_on_exit_codes"]
    assert set(task["secrets"]) == {"WANDB_API_KEY", "HF_TOKEN", "RAY_AUTH_TOKEN"}
    assert all(v == "" for v in task["secrets"].values())  # placeholders: no value, no null
    assert "ray stop" not in text and "pipelines.$JOB" in task["run"]
    # Ray across nodes: token auth on, each node on its private address, never auth disabled
    run = task["run"]
    assert "RAY_AUTH_MODE=disabled" not in run and "export RAY_AUTH_MODE=token" in run
    assert run.count("--node-ip-address=") == 2 and '"$@"' in run and "$ARGS\n" not in run


def _job_available(job: str) -> None:
    if not (REPO / "conf" / f"{job}.yaml").exists() or not (REPO / "pipelines" / f"{job}.py").exists():
        pytest.skip(f"conf/{job}.yaml or pipelines/{job}.py not written yet (another engineer's issue)")


@pytest.mark.parametrize("job", ["finetune", "sweep", "embed"])
@pytest.mark.parametrize("floor", [False, True], ids=["any_of", "on_demand_floor"])
def test_rendered_task_validates(job, floor, tmp_path):
    _job_available(job)
    overrides = ["cloud=gcp", f"storage.root={BUCKET}", "experiment=tiny", f"cloud.on_demand_floor={floor}"]
    [task] = launch.build(job, overrides)
    sky_validate(task, tmp_path)
    res, envs = task["resources"], task["envs"]
    assert envs["JOB"] == job and envs["CLOUD"] == "gcp" and envs["BUCKET"] == BUCKET
    assert "experiment=tiny" in envs["ARGS"].split() and "cloud=gcp" not in envs["ARGS"]
    assert res["job_recovery"] == {
        "strategy": "EAGER_NEXT_REGION",
        "max_restarts_on_errors": 3,
        "recover_on_exit_codes": [75],
    }
    if floor:  # spot candidates first, the on-demand floor last, never mixed
        spots = [c["use_spot"] for c in res["ordered"]]
        assert spots == sorted(spots, reverse=True) and spots[0] and not spots[-1]
    else:
        assert res["use_spot"] and {c["infra"] for c in res["any_of"]} >= {"gcp/us-central1"}


def test_cross_provider_regions_and_nodes():
    [task] = launch.build(
        "finetune",
        [
            "cloud=aws",
            "storage.root=s3://b/r",
            "cloud.regions=[us-east-1,gcp/us-central1]",
            "cloud.num_nodes=2",
        ],
    )
    assert [c["infra"] for c in task["resources"]["any_of"]] == ["aws/us-east-1", "gcp/us-central1"]
    assert task["num_nodes"] == 2


def test_fallback_renders_a_spot_then_on_demand_chain_skypilot_loads(tmp_path, capfd):
    """`spotrun launch` in this process (the real command line: the dry-run tests below)."""
    from sky.utils import dag_utils

    from spotrun.ops.cli import main

    capfd.readouterr()
    code = main(
        [
            "launch",
            "finetune",
            "--dryrun",
            "cloud=gcp",
            f"storage.root={BUCKET}",
            "cloud.fallback.after_reclaims=3",
        ]
    )
    out = capfd.readouterr()
    assert code == 0, out.err
    path = tmp_path / "chain.yaml"
    path.write_text(out.out)
    dag = dag_utils.load_chain_dag_from_yaml(str(path))  # what `sky jobs launch chain.yaml` reads
    names = [t.name for t in dag.tasks]
    assert dag.is_chain() and names == ["spotrun-finetune-default", "spotrun-finetune-default-on-demand"]
    header, spot, on_demand = yaml.safe_load_all(out.out)
    assert header == {"name": "spotrun-finetune-default"}
    assert spot["resources"]["use_spot"] and not on_demand["resources"]["use_spot"]
    assert (
        spot["envs"]["SPOTRUN_ON_DEMAND_STAGE"] == "1" and "SPOTRUN_ON_DEMAND_STAGE" not in on_demand["envs"]
    )
    assert on_demand["envs"]["ARGS"].split() == ["cloud.fallback.after_reclaims=3", "cloud.use_spot=false"]
    for task in (spot, on_demand):
        sky_validate(task, tmp_path)
        assert task["resources"]["job_recovery"]["recover_on_exit_codes"] == [75]


def test_job_recovery_typos_pass_skypilot_but_not_spotrun(tmp_path):
    task = yaml.safe_load((REPO / "sky" / "finetune.yaml").read_text())
    for bad, key in (
        ({"strategy": "EAGER_NEXT_REGOIN"}, "job_recovery.strategy"),
        ({"strategy": "FAILOVER", "max_restart_on_errors": 3}, "job_recovery.max_restart_on_errors"),
        ("EAGER-NEXT-REGION", "job_recovery.strategy"),
    ):
        task["resources"]["job_recovery"] = bad
        sky_validate(task, tmp_path)  # SkyPilot's client lets it through...
        with pytest.raises(ConfigError, match=key):  # ...our check does not
            skytask.check_recovery(task)


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
