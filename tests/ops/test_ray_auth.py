"""Ray as sky/*.yaml starts it across nodes: token auth on, so only the job's token holders get in.

Two `ray start` nodes (head + one joining) on 127.0.0.1 with a private HOME, temp dir and token,
each in its own session and killed by process group afterwards (never `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow
TOKEN = "a" * 32 + "b" * 32

CLIENT = """
import ray
ray.init(address="{addr}", log_to_driver=False)
print("NODES", sum(n["Alive"] for n in ray.nodes()))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _start(args: list[str], env: dict, log) -> subprocess.Popen:
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.Popen(
        [ray, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    procs = [proc.pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _client(addr: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CLIENT.format(addr=addr)], env=env, capture_output=True, text=True, timeout=90
    )


def test_a_two_node_cluster_refuses_clients_without_the_token(tmp_path):
    port, home = _free_port(), tmp_path / "home"
    home.mkdir()
    tmp = f"/tmp/ray-auth-{os.getpid()}"  # Ray's socket paths must stay short: no deep pytest folder
    token_env = _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    log = open(tmp_path / "ray.log", "ab")
    head = _start(
        ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"], token_env, log
    )
    worker = None
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the head is up once a token holder connects
            ok = _client(addr, token_env)
            if ok.returncode == 0:
                break
            time.sleep(2)
        worker = _start([f"--address={addr}"], token_env, log)
        for _ in range(30):  # the second node joins with the same token
            ok = _client(addr, token_env)
            if "NODES 2" in ok.stdout:
                break
            time.sleep(2)
        assert "NODES 2" in ok.stdout, ok.stdout + ok.stderr
        wrong = _client(addr, _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="c" * 64))
        assert wrong.returncode != 0 and "NODES" not in wrong.stdout
        none = _client(addr, _env(tmp_path, RAY_AUTH_MODE="disabled"))  # sends no token at all
        assert none.returncode != 0 and "NODES" not in none.stdout
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
