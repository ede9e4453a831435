"""A VM shutdown that comes while the job is still starting (imports, config, preflight checks)."""

from __future__ import annotations

import os
import signal
import time

from conftest import args_for, kill_tree, launch


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
