"""The pipelines as Hydra apps, run as a user types them: --help, --cfg job, --info, shell completion,
mistakes (one line, exit 2). A two-point multirun that resumes after a kill runs end to end in
tests/jobs/finetune/test_adapt.py, on the user's own model and task."""

from __future__ import annotations

import pytest

from spotrun.recovery.hydra_app import named


def pipeline(capfd, *args: str, job: str = "finetune") -> tuple[int, str]:
    """The entry point in this process (`python -m pipelines.<job>` calls the same main): its exit
    code and what it printed."""
    import importlib
    import logging

    main = importlib.import_module(f"pipelines.{job}").main
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capfd.readouterr()
    try:
        code = main(list(args))
    finally:  # --info configures Hydra's logging onto the captured stream: put the tests' back
        root.handlers[:], root.level = handlers, level
    out = capfd.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("job", ["finetune", "sweep", "embed"])
def test_help_lists_groups_and_usage(job, capfd):
    code, out = pipeline(capfd, "--help", job=job)
    assert code == 0, out
    assert f"python -m pipelines.{job} --cfg job" in out  # the app's own usage text
    assert "== Config groups (group=option) ==" in out
    assert "cloud: aws, azure, gcp, local" in out
    assert "Exit codes: 0 finished" in out


def test_cfg_job_shows_the_override_and_starts_nothing(tmp_path, capfd):
    import ray

    from pipelines.finetune import main

    root = tmp_path / "runs"
    capfd.readouterr()
    assert main(["--cfg", "job", "experiment=tiny", "trainer.lr=0.000123", f"storage.root={root}"]) == 0
    out = capfd.readouterr().out
    assert "lr: 0.000123" in out and "experiment: tiny" in out
    assert "hydra:" not in out  # --cfg job: the job's config only
    assert not root.exists() and not ray.is_initialized()  # no run folder, no lease, no Ray


def test_cfg_for_a_job_with_its_own_experiments(capfd):
    from pipelines.sweep import main

    capfd.readouterr()
    assert main(["--cfg", "job", "experiment=tiny"]) == 0  # conf/sweep/experiment/tiny.yaml
    assert "experiment: tiny" in capfd.readouterr().out


def test_info_and_shell_completion(capfd, monkeypatch):
    code, out = pipeline(capfd, "--info")
    assert code == 0 and "Hydra" in out, out
    code, out = pipeline(capfd, "--shell-completion", "install=bash")
    assert code == 0 and "complete -o nospace" in out, out
    line = "python pipelines/finetune.py trainer.l"
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    code, out = pipeline(capfd, "-sc", "query=bash")
    assert "trainer.lr=" in out.split(), out


@pytest.mark.parametrize(
    "args, key",
    [
        (["trainer.lrr=1"], "trainer.lrr"),  # Hydra's own report would be several lines and exit 1
        (["-m", "trainer.lr=1e-4,abc"], "trainer.lr"),  # every multirun point is checked first
        (["--cfg", "job", "trainer.max_steps=0"], "trainer.max_steps"),  # the job's checks run too
        (["--config-dir=/tmp"], "--config-dir"),
        (["trainer.lr=[1,"], "trainer.lr"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args, key, capfd):
    """The entry point in this process (python -m pipelines.finetune calls the same main)."""
    import ray

    from pipelines.finetune import main

    capfd.readouterr()
    code = main(args)
    out = capfd.readouterr()
    assert code == 2, out.out + out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error:") and key in lines[0], out.err
    assert not ray.is_initialized()


def test_multirun_point_names():
    swept = {"trainer.lr", "seed"}
    a = named(["trainer.lr=0.0001", "seed=1", "logger=none"], swept, "finetune-tiny")
    b = named(["trainer.lr=0.0002", "seed=1", "logger=none"], swept, "finetune-tiny")
    assert a[-1] == "run.name=finetune-tiny-trainer.lr-0.0001_seed-1" and a[-1] != b[-1]
    odd = named(["data.train_files=a/b.jsonl"], {"data.train_files"}, "ft")[-1]
    odd2 = named(["data.train_files=a_b.jsonl"], {"data.train_files"}, "ft")[-1]
    assert odd != odd2 and odd.startswith("run.name=ft-data.train_files-a_b.jsonl-")  # hashed apart
    long = named([f"model.name={'x' * 300}"], {"model.name"}, "ft")[-1]
    assert len(long.split("=", 1)[1]) <= 128
    assert named(["run.name=a", "seed=1"], {"run.name"}, "ft") == ["run.name=a", "seed=1"]


def test_the_exit_freezes_the_heap_and_runs_what_a_normal_exit_runs(tmp_path):
    """`python -m pipelines.<job>` ends through `hydra_app.exit`: its code, its atexit handlers, and a
    frozen heap (Python's last collection at exit skips it)."""
    import subprocess
    import sys

    code = (
        "import atexit, gc; from spotrun.recovery import hydra_app; "
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True)); hydra_app.exit(75)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 75 and r.stdout.strip() == "frozen True", (r.returncode, r.stdout, r.stderr)
