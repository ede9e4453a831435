"""A VM shutdown that comes while the job is still starting (imports, config, preflight checks)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from conftest import args_for, events, kill_tree, launch, wait_for


def test_sigterm_to_the_group_before_the_job_is_prepared_exits_75_at_once_writing_nothing(tmp_path):
    log, root = tmp_path / "log.txt", tmp_path / "runs"
    proc = launch(args_for(root, "early"), log)
    try:
        time.sleep(1.0)  # the shield is armed (the entry point's first line); torch is still importing
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        kill_tree(proc)
    out = log.read_text()
    assert code == 75, out[-2000:]
    assert "preempted during start-up, before the job started; nothing new; exit 75" in out, out[-2000:]
    assert not (root / "early").exists()  # no lease, no event, no Ray: nothing of it to clean up
    assert "Started a local Ray instance" not in out and took < 60, (took, out[-2000:])


@pytest.mark.slow
def test_sigterm_to_the_group_while_ray_starts_is_recorded_and_exits_75_at_once(tmp_path):
    """After the lease and the `launch` event, before the work: nothing new to commit. The notice is
    recorded, what Ray started so far is stopped, and the attempt exits without waiting for Ray."""
    log, root = tmp_path / "log.txt", tmp_path / "runs"
    proc = launch(args_for(root, "starting"), log)
    try:
        wait_for(lambda: any(e["kind"] == "launch" for e in events(root / "starting")), proc, what="launch")
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        left = _ray_of(proc.pid)
    finally:
        kill_tree(proc)
    out = log.read_text()
    assert code == 75, out[-2000:]
    assert "preempted during start-up; nothing new to save; newest commit: none yet; exit 75" in out, out[
        -2000:
    ]
    ev = events(root / "starting")
    assert [e["kind"] for e in ev] == ["launch", "preemption_notice", "preempted"], ev
    assert ev[-1]["saved"] is False and ev[-1]["committed"] is None
    assert not left, [p.info["cmdline"][:2] for p in left]  # no Ray process of that driver outlived it


def _ray_of(driver_pid: int, wait_s: float = 10.0) -> list[psutil.Process]:
    """Ray's processes of that driver's session (its name ends in the driver's pid), after they had
    `wait_s` to go."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "/ray/" in cmd and f"_{driver_pid} " in f"{cmd} ".replace("/", " "):
                left.append(p)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
