"""SkyPilot tasks: the YAMLs in sky/ and the tasks `spotrun launch` renders, checked with SkyPilot's
own code, offline, in a private HOME (~/.sky), with usage collection off (tests/ops/skyhome.py).
`spotrun launch` itself, end to end: tests/ops/test_launch.py.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from skyhome import BUCKET, private_home, sky_validate

from spotrun.core.config import ConfigError
from spotrun.ops import launch, skytask

SKY_YAMLS = sorted((REPO / "sky").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def private_sky_home(tmp_path_factory):
    yield from private_home(tmp_path_factory)


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
    """`spotrun launch` in this process (the real command line: the dry-run tests in test_launch.py)."""
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
