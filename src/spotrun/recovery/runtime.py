"""The runtime: the run's identity (SkyPilot's task id), where an attempt runs, and Ray's start and stop."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal

import psutil
import ray
from omegaconf import OmegaConf
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from spotrun.core.config import RUN_NAME_RE, ConfigError, worker_range
from spotrun.core.procs import still_running
from spotrun.recovery import shield, worker_setup


def resolve_run_name(cfg) -> str:
    """run.name, else SkyPilot's task id (stable across recoveries), else "<job>-<experiment>"."""
    if cfg.run.name:
        return cfg.run.name
    # a chain (spot, then on-demand: src/spotrun/recovery/fallback.py) shares its first task's id
    task_id = (os.environ.get("SKYPILOT_TASK_IDS") or "").split("\n")[0] or os.environ.get("SKYPILOT_TASK_ID")
    if task_id:
        return re.sub(r"[^A-Za-z0-9._-]", "-", task_id).strip("-.")[:128]
    name = f"{cfg.run.job}-{cfg.experiment}"
    if not RUN_NAME_RE.match(name):
        raise ConfigError(f"experiment={cfg.experiment!r}: expected a name usable as a run name")
    return name


def init_ray() -> None:
    """A private local Ray cluster, or the cluster in $RAY_ADDRESS (multi-node on SkyPilot).

    Ray's processes start shielded from SIGTERM (spotrun.recovery.shield): a VM shutdown signals them
    all, and they must outlive the notice's checkpoint."""
    address = os.environ.get("RAY_ADDRESS") or "local"
    with shield.blocked():  # (already so in a driver that armed the shield: all of it is blocked)
        if address != "local":
            _init(address)
            return
        # A local start on a busy machine (two clusters starting at once, a loaded 2-core VM) can
        # miss Ray's fixed 30 s for its raylet to register; what that start left is killed and Ray
        # is started again.
        for attempt in Retrying(
            stop=stop_after_attempt(START_TRIES), retry=retry_if_exception(_start_timed_out), reraise=True
        ):
            with attempt:
                before = {p.pid for p in _ray_processes()}
                try:
                    _init(address)
                except Exception:
                    _kill([p for p in _ray_processes() if p.pid not in before])
                    raise


START_TRIES = 3
# what every Ray worker of a run runs first, named as Ray imports it (a module of the standard library only)
SETUP_HOOK = f"{worker_setup.__name__}.{worker_setup.quiet_logs.__name__}"


def _start_timed_out(e: BaseException) -> bool:
    return "timed out during startup" in str(e)  # ray/_private/node.py (pinned ray==2.60.0)


def _ray_processes() -> list[psutil.Process]:
    """This process's descendants that are Ray's: its daemons, agents and workers."""
    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(a.startswith("ray::") or "/ray/" in a for a in p.cmdline()[:3]):
                out.append(p)
    return out


def kill_ray_processes() -> None:
    """SIGKILL every Ray process this one started (an exit that cannot wait for `shutdown_ray`)."""
    _kill(_ray_processes())


def _kill(procs: list[psutil.Process]) -> None:
    """SIGKILL, then wait (up to 5 s) until each is gone or a zombie: dead, only not yet reaped by
    the init process it was handed to (the raylet's workers once the raylet is killed)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    still_running(procs, timeout=5)


def _init(address: str) -> None:
    # A new cluster only: Ray would start one idle worker process per CPU for the first driver,
    # which no actor of a run takes (each makes its own): ~1.5 CPU-seconds of imports, competing
    # with the run's own start-up for the cores.
    local = {"_system_config": {"prestart_worker_first_driver": False}} if address == "local" else {}
    with _bare_head() if address == "local" else contextlib.nullcontext():
        _connect(address, local)


@contextlib.contextmanager
def _bare_head():
    """A new local head without the two Python daemons no spotrun run uses: the autoscaler's monitor
    (a fixed local node has nothing to scale) and the dashboard's API server (the state and job APIs;
    spotrun reads the GCS directly). ~1.4 CPU-seconds and a second of start-up per launch, and their
    polling off the training cores. Ray's own Node methods, pinned ray==2.60.0."""
    from ray._private.node import Node

    saved = Node.start_monitor, Node.start_api_server
    Node.start_monitor = lambda self: None
    Node.start_api_server = lambda self, **kw: None
    try:
        yield
    finally:
        Node.start_monitor, Node.start_api_server = saved


def _connect(address: str, local: dict) -> None:
    ray.init(
        address=address,
        include_dashboard=False,  # saves start-up time and memory; nothing here needs it
        **local,
        logging_level=logging.WARNING,
        configure_logging=True,
        runtime_env={
            # transformers reads its verbosity and progress bars from the environment: no worker
            # (Ray Train's controller and helper actors included) has to import it to be quiet
            "env_vars": {
                "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                # Ray Train's own watcher of Ray node drains (one more actor in every run): spot
                # notices reach spotrun as SIGTERM and cloud metadata (spotrun.recovery.notices)
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                # Train's controller polls its workers every 2 s by default, and only a poll tells it
                # the loop has returned: fit() came back 2.6-4.0 s after the last step (a notice's
                # exit 75 too). At 1 s: 1.1-1.4 s, for one more small RPC a second per worker.
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
            },
            "worker_process_setup_hook": SETUP_HOOK,
        },
    )


def shutdown_ray() -> None:
    """Disconnect, and stop the local cluster's processes at once. Shielded daemons ignore the polite
    SIGTERM Ray sends first, and it would wait a second for each of them: nothing of a run lives in
    them, so they get SIGKILL straight away (the raylet's workers exit when it does)."""
    node = ray._private.worker._global_node  # pinned ray==2.60.0
    started = _ray_processes() if node is not None else []  # (none when connected to $RAY_ADDRESS's)
    if node is not None:
        kill = node.kill_all_processes
        node.kill_all_processes = lambda **kw: kill(**{**kw, "allow_graceful": False})
    ray.shutdown()
    # the raylet's agents (dashboard, runtime env) outlive a killed raylet: a multirun or a sweep
    # would pile them up, one pair per cluster
    _kill([p for p in started if p.is_running()])


def placement(cfg) -> dict:
    """Where this attempt runs, for the `launch` event and the cost report: cloud, region,
    accelerator and how many of them are billed (GPUs, or one VM on CPU)."""
    import json

    info = {}
    with contextlib.suppress(ValueError):
        info = json.loads(os.environ.get("SKYPILOT_CLUSTER_INFO") or "{}")
    # a job without Ray Train workers (embed, a toy job) bills its nodes
    lo, hi = worker_range(OmegaConf.select(cfg, "trainer.num_workers", default=1))
    gpus = int(os.environ.get("SKYPILOT_NUM_GPUS_PER_NODE") or 0) * int(
        os.environ.get("SKYPILOT_NUM_NODES") or 1
    )
    accelerators = list(cfg.cloud.get("accelerators") or [])
    use_gpu = bool(OmegaConf.select(cfg, "trainer.use_gpu", default=False))
    return {
        "cloud": str(info.get("cloud", cfg.cloud.name)).lower(),
        "region": info.get("region"),
        "accelerator": (str(accelerators[0]).split(":")[0] if accelerators else "cpu") if use_gpu else "cpu",
        "units": (gpus or hi) if use_gpu else int(os.environ.get("SKYPILOT_NUM_NODES") or 1),
        "workers": [lo, hi],
        "task_id": os.environ.get("SKYPILOT_TASK_ID"),
        "spot": bool(cfg.cloud.use_spot),  # the report prices each attempt at its own rate
    }
