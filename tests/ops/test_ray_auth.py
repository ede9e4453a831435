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
import time, ray
ray.init(address="{addr}", log_to_driver=False)
deadline = time.monotonic() + {wait_s}  # until {nodes} nodes are alive: one client, not one per poll
while sum(n["Alive"] for n in ray.nodes()) < {nodes} and time.monotonic() < deadline:
    time.sleep(0.5)
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


def _client(addr: str, env: dict, nodes: int = 1, wait_s: float = 0) -> subprocess.CompletedProcess:
    script = CLIENT.format(addr=addr, nodes=nodes, wait_s=wait_s)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90)


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
        ok = _client(addr, token_env, nodes=2, wait_s=60)  # the second node joins with the same token
        assert "NODES 2" in ok.stdout, ok.stdout + ok.stderr
        # a refused client retries for Ray's whole connect window (20 s by default): 4 s is plenty here
        refused = {"RAY_gcs_server_port_wait_time_s": "4"}
        wrong = _client(addr, _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="c" * 64, **refused))
        assert wrong.returncode != 0 and "NODES" not in wrong.stdout
        assert "token-auth" in wrong.stderr, wrong.stderr[-2000:]  # refused for its token
        none = _client(addr, _env(tmp_path, RAY_AUTH_MODE="disabled", **refused))  # sends no token at all
        assert none.returncode != 0 and "NODES" not in none.stdout
        assert "token-auth" in none.stderr, none.stderr[-2000:]
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
