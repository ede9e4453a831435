"""Ray's start and stop: a start that timed out is cleaned up and tried again; a stop leaves nothing."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from spotrun.core.procs import still_running
from spotrun.recovery import runtime


def test_a_local_start_that_timed_out_is_killed_and_started_again(tmp_path, monkeypatch):
    """Ray 2.60 gives its raylet a fixed 30 s to register (ray/_private/node.py); on a busy machine it
    can miss them, leaving the daemons it started. Those are killed and Ray starts again."""
    daemon = tmp_path / "ray" / "gcs_server.py"  # a path like Ray's own daemons' ("/ray/")
    daemon.parent.mkdir()
    daemon.write_text("import time\ntime.sleep(120)\n")
    started: list[subprocess.Popen] = []

    def start(address: str) -> None:
        if not started:  # the first start: its daemon is up, its raylet never registers
            started.append(subprocess.Popen([sys.executable, str(daemon)]))
            raise Exception("The current node timed out during startup. This could happen because ...")
        started.append(None)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_init", start)
    runtime.init_ray()
    assert len(started) == 2  # started again
    assert not psutil.pid_exists(started[0].pid)  # what the failed start left was killed (and reaped)


def test_other_start_errors_are_not_retried(monkeypatch):
    calls = []

    def start(address: str) -> None:
        calls.append(address)
        raise RuntimeError("Ray has not been started yet")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_init", start)
    with pytest.raises(RuntimeError):
        runtime.init_ray()
    assert calls == ["local"]


@pytest.mark.slow
def test_a_stopped_local_cluster_leaves_no_process_behind(monkeypatch):
    """The raylet's agents (dashboard, runtime env) outlive a SIGKILLed raylet; shutdown kills them.
    The head starts no autoscaler monitor and no dashboard API server (no spotrun run uses them)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.init_ray()
    try:
        ours = runtime._ray_processes()
        names = " ".join(" ".join(p.cmdline()[:2]) for p in ours)
        assert "raylet" in names and "gcs_server" in names and "ray::DashboardAgent" in names, names
        # a bare head: neither the autoscaler's monitor nor the dashboard's API server is started
        full = " ".join(" ".join(p.cmdline()) for p in ours)
        assert "autoscaler/_private/monitor.py" not in full and "dashboard/dashboard.py" not in full, full
    finally:
        runtime.shutdown_ray()
    # a zombie has ended, only not been reaped: an agent orphaned by the killed raylet goes to the
    # init process, and a container's init may never reap it (a CI run failed on one)
    running = still_running(ours, timeout=10)
    assert not running, [p.name() for p in running]


def test_the_worker_setup_hook_imports_the_standard_library_only():
    """Ray runs the hook first in every worker process of a run, Train's controller and helper actors
    too: it must not import spotrun's config, Ray, psutil or omegaconf into each of them."""
    import subprocess
    import sys

    module, _, name = runtime.SETUP_HOOK.rpartition(".")  # the hook ray.init is given, as Ray loads it
    code = (
        f"import importlib, sys; getattr(importlib.import_module({module!r}), {name!r})(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ray', 'psutil', 'omegaconf', 'tenacity', 'pyarrow', 'torch') or m.startswith('spotrun.core')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_a_killed_process_nobody_reaps_counts_as_ended():
    """A zombie has ended: waiting for it must not run to the timeout, nor report it running."""
    parent = subprocess.Popen(  # never reaps its child, as a container's init may not
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "c = subprocess.Popen(['sleep', '300']); print(c.pid, flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        orphan = psutil.Process(int(parent.stdout.readline()))
        sleeper = psutil.Process(parent.pid)
        orphan.kill()
        assert still_running([orphan], timeout=30) == []
        assert orphan.status() == psutil.STATUS_ZOMBIE  # still there, unreaped
        assert still_running([orphan, sleeper], timeout=0.5) == [sleeper]
    finally:
        parent.kill()
        parent.wait()
