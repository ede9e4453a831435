"""A toy fourth job kind, registered in the test tree alone, gets the whole spot contract:
one-line config errors (exit 2, nothing started), and SIGTERM to its whole process group (driver,
Ray daemons, the actor) -> its state committed -> exit 75 -> a relaunch resumes and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, events, kill_tree, pipeline_env, wait_for

TOY = Path(__file__).with_name("toy_job.py")


def start(args: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, str(TOY), *args],
        cwd=REPO,
        env=pipeline_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    "override,line",
    [
        ("toy.steps=0", "toy.steps=0: expected an int >= 1"),
        ("toy.stpes=3", "toy.stpes='3': unknown key"),
        ("toy.step_s=slow", "toy.step_s='slow': expected a value of type float"),
    ],
)
def test_toy_job_bad_config_is_one_line_exit_2(override, line, tmp_path, capfd):
    """The contract's entry point in this process, as toy_job.py's `__main__` calls it."""
    import ray
    import toy_job

    capfd.readouterr()
    code = toy_job.contract.main(toy_job.KIND, [f"storage.root={tmp_path}", "run.name=t", override])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"spotrun: config error: {line}"), err
    assert not (tmp_path / "t").exists() and not ray.is_initialized()


@pytest.mark.slow
def test_toy_job_gets_the_contract_sigterm_to_the_group_commits_and_exits_75(tmp_path):
    args, log = (
        [f"storage.root={tmp_path}", "run.name=t", "toy.steps=400", "toy.step_s=0.05"],
        tmp_path / "log",
    )
    proc = start(args, log)
    try:
        wait_for(lambda: "toy: step 5" in log.read_text(), proc, timeout=180, what="toy step 5")
        os.killpg(proc.pid, signal.SIGTERM)  # as a VM shutdown does: every process of the job
        assert proc.wait(timeout=60) == 75, log.read_text()[-2000:]
    finally:
        kill_tree(proc)
    committed = json.loads((tmp_path / "t" / "state.json").read_text())["count"]
    printed = max(
        int(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith("toy: step")
    )
    assert committed == printed >= 5  # the actor outlived the SIGTERM: nothing counted was lost
    assert f"preempted; count {committed} committed; exit 75" in log.read_text()
    kinds = [e["kind"] for e in events(tmp_path / "t")]
    assert kinds.count("preemption_notice") == 1 and kinds.count("preempted") == 1 and "failed" not in kinds
    relaunch = start(["toy.step_s=0.01", *args[:3]], tmp_path / "log2")
    try:
        assert relaunch.wait(timeout=300) == 0, (tmp_path / "log2").read_text()[-2000:]
    finally:
        kill_tree(relaunch)
    first = next(ln for ln in (tmp_path / "log2").read_text().splitlines() if ln.startswith("toy: step"))
    assert first == f"toy: step {committed + 1}"  # resumed from the committed count
    assert json.loads((tmp_path / "t" / "state.json").read_text())["count"] == 400
