"""The driver side of a fine-tune: Ray Train's TorchTrainer around `loop.train_loop`, the SIGTERM
notice, and the exit code (0 finished, 75 preempted -- relaunch me, 1 failed)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import ray
from omegaconf import OmegaConf
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from spotrun.core import config as C
from spotrun.core.events import EventLog, read_events
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.loop import train_loop
from spotrun.jobs.finetune.outputs import is_finished, read_final_metrics
from spotrun.recovery import fallback
from spotrun.recovery.notices import create_board, install_sigterm
from spotrun.recovery.runtime import init_ray, placement

NOTICE_MARGIN_S = 5.0  # exit this long before the provider's notice runs out
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2 CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


def job_spec(cfg, repo_root: str, run_name: str, model_path: str) -> dict:
    """What every rank's `train_loop` needs: plain data only (it is pickled to the workers)."""
    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "run_name": run_name,
        "repo_root": repo_root,
        "model_path": model_path,
        "local_dir": os.path.join(repo_root, ".spotrun", run_name),
        # rank 0 hands over to on-demand when the projected spot finish passes it (spotrun.recovery.fallback)
        "fallback_deadline": fallback.parse_deadline(cfg.cloud.fallback.deadline)
        if fallback.active(cfg)
        else None,
    }


def build_trainer(cfg, run_name: str, storage, job: dict, callbacks: list | None = None) -> TorchTrainer:
    # spotrun's store decides what a run resumes from. Ray's own snapshot of reported checkpoints
    # would still name folders the store has since pruned (checkpoint.keep), and Ray refuses to start
    # on a snapshot with a missing checkpoint: start Ray's record afresh on every launch.
    storage.delete_file(storage.path(run_name, RAY_SNAPSHOT))
    lo, hi = C.worker_range(cfg.trainer.num_workers)
    return TorchTrainer(
        train_loop,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if cfg.trainer.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=lo if lo == hi else (lo, hi), use_gpu=cfg.trainer.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.base,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            # spotrun's store owns retention: it also sees checkpoints Ray never recorded.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,  # a sweep forwards each report to Ray Tune
        ),
    )


def summary(metrics: dict) -> str:
    name = next(iter(metrics.get("after", {})), "recall_at_1")  # the task's headline metric
    before = metrics.get("before", {}).get(name)
    after = metrics.get("after", {}).get(name)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    label = "recall@1" if name == "recall_at_1" else name
    return f"{label} before {fmt(before)} -> after {fmt(after)} (step {metrics.get('step')})"


def run_finetune(cfg, repo_root: str, run_name: str, model_path: str, started_ts: float | None = None) -> int:
    storage = storage_from_cfg(cfg, repo_root)
    if is_finished(storage, run_name):
        print(f"spotrun: run {run_name!r} already finished: {summary(read_final_metrics(storage, run_name))}")
        print(f"spotrun: outputs in {storage.path(run_name, 'final')}; pick a new run.name to train again")
        return C.EXIT_OK
    events = EventLog(storage, run_name, source="driver")
    history = read_events(storage, run_name) if fallback.active(cfg) else []
    handover = fallback.reason_at_start(cfg, history, time.time())
    if handover:
        return _hand_over(events, run_name, handover)
    # this attempt counts too when a notice later asks whether it was the Nth reclaim
    history.append(events.emit("launch", started_ts=round(started_ts or time.time(), 3), **placement(cfg)))
    job = job_spec(cfg, repo_root, run_name, model_path)
    init_ray()
    board = create_board(run_name)
    noticed = threading.Event()

    def on_notice():  # rank 0 records the notice in events.jsonl when its loop sees it
        noticed.set()
        sys.stderr.write("spotrun: SIGTERM: checkpointing at the end of the current step, then exiting\n")

    def on_deadline():
        events.emit("preempted_timeout", waited_s=cfg.cloud.notice_s - NOTICE_MARGIN_S)
        sys.stderr.write("spotrun: notice deadline reached; exiting without a final checkpoint\n")
        os._exit(C.EXIT_PREEMPTED)

    install_sigterm(board, cfg.cloud.notice_s - NOTICE_MARGIN_S, on_notice, on_deadline)
    print(f"spotrun: run {run_name!r} in {storage.path(run_name)}")
    try:
        build_trainer(cfg, run_name, storage, job).fit()
    except Exception as e:  # noqa: BLE001 - any training failure ends in the same exit path
        if not noticed.is_set():
            events.emit("failed", error=str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
            print(f"spotrun: run {run_name!r} failed: {e}", file=sys.stderr)
            return C.EXIT_FAILED
    finally:
        notice = None
        with contextlib.suppress(ray.exceptions.RayError):  # never let this check skip the shutdown
            notice = ray.get(board.get.remote(), timeout=10)
        if notice is not None:
            noticed.set()  # a cloud metadata notice or the deadline, seen by a worker
        ray.shutdown()
    if is_finished(storage, run_name):
        print(f"spotrun: run {run_name!r} finished: {summary(read_final_metrics(storage, run_name))}")
        return C.EXIT_OK
    if noticed.is_set():
        handover = fallback.reason_at_notice(cfg, notice, history)  # no second read in the notice window
        if handover:
            return _hand_over(events, run_name, handover)
        print(
            f"spotrun: run {run_name!r} preempted; checkpoint committed, exit {C.EXIT_PREEMPTED} (relaunch me)"
        )
        return C.EXIT_PREEMPTED
    return C.EXIT_FAILED


def _hand_over(events: EventLog, run_name: str, reason: str) -> int:
    """End the spot stage: the on-demand task after it resumes from the committed checkpoint."""
    events.emit("fallback", reason=reason)
    print(f"spotrun: run {run_name!r} moves to on-demand ({reason}); exit 0 hands it to the next task")
    return C.EXIT_OK
