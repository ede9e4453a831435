"""The per-worker training loop that Ray Train runs on every rank.

Every start resumes from the newest committed checkpoint of the run (rank 0 picks it, all ranks load
it); the loop checkpoints every `checkpoint.every_steps` steps or `checkpoint.every_seconds`, and on a
preemption notice checkpoints at once, waits for the commit and returns.
"""

from __future__ import annotations

import json
import os
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from spotrun.core.events import EventLog, read_events
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune import resume
from spotrun.jobs.finetune.data import ExactSampler, Position
from spotrun.jobs.finetune.fsdp import DDP_OPTIONS
from spotrun.jobs.finetune.logger import RunLogger
from spotrun.jobs.finetune.parts import build_optimizer, build_scheduler
from spotrun.jobs.finetune.shard_io import ShardIO
from spotrun.jobs.finetune.states import DataState, ModelState, RunState
from spotrun.jobs.finetune.stop import agree, noticed, stale, stand_down, stop_for_notice
from spotrun.jobs.finetune.tasks import build_task
from spotrun.recovery import pacing
from spotrun.recovery import state as st
from spotrun.recovery.checkpoint import AsyncCheckpointer, CheckpointStore
from spotrun.recovery.lease import worker_storage
from spotrun.recovery.notices import BoardPoller

IMPORTED_AT = time.time()  # in a Ray Train worker: when unpickling train_loop finished importing all this


class Worker:
    """One rank's task, optimizer, schedule, data position and checkpointing."""

    def __init__(self, job: dict):
        self.cfg = cfg = OmegaConf.create(job["cfg"])
        self.run_name, self.repo = job["run_name"], job["repo_root"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(cfg.trainer.threads_per_worker)
        self.device = ray.train.torch.get_device()
        # fenced by the attempt's lease: a superseded attempt's commits and events raise Superseded
        self.storage = worker_storage(storage_from_cfg(cfg, self.repo), self.run_name, job)
        self.store = CheckpointStore(self.storage, self.run_name, os.path.join(job["local_dir"], "staging"))
        self.events = EventLog(self.storage, self.run_name, source=f"rank{self.rank}")
        self.task = build_task(cfg, job["model_path"], self.repo, self.device)  # task._target_ picks it
        self.model = self.task.model
        self.sampler = ExactSampler(self.task.num_samples(), cfg.trainer.batch_size, cfg.seed)
        self.opt = build_optimizer(cfg, self.task.trainable_parameters())
        self.sched = build_scheduler(cfg, self.opt)
        self.step, self.pos, self.meta = 0, Position(), {}
        self.states = self._states()
        self.fingerprint = resume.fingerprint(cfg)
        self.store.hold_s = cfg.debug.write_sleep_s
        self.shard_io = ShardIO(self.storage, os.path.join(job["local_dir"], "staging"), self.rank)
        self.ckpt = AsyncCheckpointer(self.store, cfg.checkpoint.keep, on_commit=self._on_commit)

    def _states(self) -> dict[str, st.Stateful]:
        """Everything a checkpoint holds, by name (file stem). Under FSDP the model and optimizer go
        through DCP shards instead (task.save_sharded)."""
        states = (
            {}
            if self.task.sharded
            else {"model": ModelState(self.task), "optim": st.OptimizerState(self.opt)}
        )
        states.update(
            scheduler=st.SchedulerState(self.sched),
            data=DataState(self),
            rng=st.RNGState(self.rank, self.world, self.cfg.seed, lambda: self.step),
            run=RunState(self.meta),
        )
        extra = getattr(self.task, "extra_states", None)
        return {**states, **(extra() if extra else {})}

    # ----- resume -----
    def restore(self) -> int | None:
        """Load the newest committed checkpoint (rank 0 chooses, all load). Returns its step or None."""
        chosen = torch.tensor([-1])
        if self.rank == 0:
            skip = lambda s, why: self.events.emit("checkpoint_skipped", step=s, reason=why)  # noqa: E731
            found = self.store.load_latest(self.cfg.checkpoint.verify, on_skip=skip)
            chosen[0] = found[0] if found else -1
        dist.broadcast(chosen, src=0)
        step = int(chosen.item())
        if step < 0:
            st.seed_everything(self.cfg.seed + self.rank)
            return None
        files = found[1] if self.rank == 0 else self.store.read(step, self.cfg.checkpoint.verify)
        meta = json.loads(files["state.json"])
        refused = resume.refusal(self.run_name, meta.get("fingerprint"), self.fingerprint)
        if refused:  # the driver's check missed it (a config changed under a running job)
            raise RuntimeError(refused)
        if self.task.sharded:  # FSDP: every rank reads its own model + optimizer shards (DCP)
            self.shard_io.load(self.task, self.store.dir_for(step), self.opt)
        st.restore(self.states, files, meta["states"])
        return self.step

    # ----- checkpoint -----
    def save(self, reason: str) -> float:
        """Snapshot every state component (all ranks take part) and queue the write. Returns seconds blocked."""
        t0, shards = time.perf_counter(), None
        if self.task.sharded:  # FSDP: every rank stages its shards; rank 0 commits after they land
            shards = self.shard_io.save(self.task, self.store.dir_for(self.step), self.opt)
        groups, metas = st.snapshot(self.states)
        if self.rank != 0:
            return 0.0
        meta = {
            "step": self.step,
            "world_size": self.world,
            "reason": reason,
            "fingerprint": self.fingerprint,
            "states": metas,
        }
        staged = time.perf_counter() - t0
        return staged + self.ckpt.save(self.step, groups, {"state.json": meta}, after=shards)

    def _on_commit(self, info: dict) -> None:
        self.events.emit("checkpoint", **info)

    def report(self, metrics: dict) -> None:
        """Tell Ray Train the metrics (a barrier on all ranks). Checkpoints are not handed over: the
        store's manifests are what a resume reads, and Ray's controller would write its own record of
        each to the bucket without retries, failing the run during a bucket outage. A report waits
        until the controller took the previous one (it polls every 2 s): only a sweep reports at
        every checkpoint; a fine-tune reports how its loop ended."""
        ray.train.report(metrics)

    # ----- training -----
    def train_step(self) -> float:
        ids, next_pos = self.sampler.step(self.pos, self.rank, self.world)
        loss = self.task.loss(self.ddp, ids)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step, self.pos = self.step + 1, next_pos
        if self.cfg.debug.trace_samples:
            self._trace(ids)
        return float(loss.detach())

    def _trace(self, ids) -> None:
        line = json.dumps(
            {"step": self.step, "epoch": self.pos.epoch, "world": self.world, "ids": ids.tolist()}
        )
        path = self.storage.path(self.run_name, "trace", f"rank{self.rank}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)  # debug traces: local storage only
        with open(path, "a") as f:
            f.write(line + "\n")

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics of the current weights."""
        return self.task.evaluate()


def _announce(w: Worker, resumed: int | None) -> None:
    """Rank 0 records the start (scoring the model before training) or the resume."""
    if resumed is None and (w.rank == 0 or w.task.sharded):  # FSDP: a forward takes every rank
        before = w.evaluate()
    if w.rank != 0:
        return
    if resumed is None:
        w.meta["metrics_before"] = before
        w.events.emit("start", world_size=w.world, **w.meta["metrics_before"])
    else:
        w.meta["resumes"] = w.meta.get("resumes", 0) + 1
        w.events.emit("resume", step=resumed, world_size=w.world, data_epoch=w.pos.epoch, offset=w.pos.offset)


def _finish(
    w: Worker, job: dict, log: RunLogger, steps_run: int, loop_s: float, wait_s: float, loss: float
) -> None:
    """Score the trained model and write final/ (metrics.json last) on rank 0. `wait_s`: the part of
    `loop_s` spent at its end waiting for the last checkpoint write."""
    final = {"loss": loss}  # the last report carries the metrics a sweep ranks trials by
    if w.rank == 0 or w.task.sharded:  # FSDP: evaluating and gathering the weights take every rank
        after = w.evaluate()
        metrics = {"step": w.step, "before": w.meta.get("metrics_before", {}), "after": after}
        w.task.write_final(w.storage, w.run_name, metrics, job["local_dir"])
    if w.rank == 0:
        w.events.emit(
            "finish",
            step=w.step,
            steps_run=steps_run,
            loop_s=round(loop_s, 3),
            final_wait_s=round(wait_s, 3),
            **{f"before_{k}": metrics["before"].get(k) for k in after},
            **{f"after_{k}": v for k, v in after.items()},
        )
        log.finish(after)
        final.update(after)
    w.ckpt.close()
    log.close()
    w.report({"step": w.step, "preempted": 0, "finished": 1, **final})


def _worker_marks(job: dict, entered: float) -> dict[str, float]:
    """The driver's phase marks, then this worker's: its process up, its imports, the loop entered."""
    import psutil

    marks = dict(job.get("phases") or {})
    fit = marks.get("fit", 0.0)  # a worker process Ray started before fit() was up already
    marks["workers"] = max(psutil.Process().create_time(), fit)
    marks["imports"] = max(IMPORTED_AT, marks["workers"])
    marks["loop"] = entered
    return marks


def _pacing(w: Worker, job: dict):
    """What only matters once training runs: the metadata watcher, the run's history (one read) for
    the checkpoint interval and the fallback deadline. Started after the first step, off the restart's
    path (a cloud notice in start-up still reaches the board: the driver's SIGTERM, the next poll)."""
    cfg = w.cfg
    local0 = ray.train.get_context().get_local_rank() == 0
    watcher = pacing.watch_node_metadata(cfg, w.run_name) if local0 else None
    if w.rank != 0:
        return watcher, None, None, None
    history = read_events(w.storage, w.run_name)
    interval, mtbr_from = pacing.checkpoint_interval(cfg, history, w.repo)
    deadline = job.get("fallback_deadline")
    deadline = deadline and pacing.DeadlineWatch(deadline, history, w.run_name, cfg.trainer.max_steps)
    return watcher, interval, mtbr_from, deadline


def _phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds from the attempt's start to the end of each phase (spotrun.recovery.history.PHASES)."""
    start = marks.get("start", marks.get("loop"))
    return {k: round(v - start, 3) for k, v in marks.items() if k != "start"}


def _start(job: dict, marks: dict) -> tuple[Worker, RunLogger]:
    """Build this rank's worker, resume it, announce the start or the resume, wrap it for DDP."""
    w = Worker(job)
    marks["model"] = time.time()
    resumed = w.restore()
    marks["restored"] = time.time()
    log = RunLogger(w.cfg, w.run_name, job["local_dir"], w.meta.get("wandb_id"), enabled=w.rank == 0)
    w.meta["wandb_id"] = log.run_id
    _announce(w, resumed)
    wrap = w.world > 1 and not w.task.sharded
    w.ddp = ray.train.torch.prepare_model(w.model, parallel_strategy_kwargs=DDP_OPTIONS) if wrap else w.model
    w.ddp.train()
    return w, log


def _periodic_save(w: Worker, interval, mtbr_from) -> None:
    """A due checkpoint; rank 0 re-paces the time-based interval from what it cost."""
    blocked = w.save("periodic")
    if w.rank == 0 and interval is not None and interval.observe(blocked):
        w.events.emit(
            "checkpoint_interval",
            seconds=round(interval.seconds, 2),
            cost_s=round(blocked, 4),
            mtbr_s=round(interval.mtbr_s, 1),
            mtbr_from=mtbr_from,
        )


def train_loop(job: dict) -> None:
    """Ray Train entry point (runs on every rank)."""
    marks = _worker_marks(job, time.time())
    w, log = _start(job, marks)
    poller = BoardPoller(w.run_name) if w.rank == 0 else None
    saved_step = w.step  # the step the newest commit (or the one in flight) holds; 0: none yet
    if poller is not None:
        poller.check_now()
    seen, newer = agree(torch.tensor([noticed(w, poller), stale(w)]), w.world).tolist()
    if newer:
        return stand_down(w, log)
    if seen:  # during start-up
        return stop_for_notice(w, poller, saved_step, float("nan"), log)
    marks["ready"] = time.time()
    _train(w, job, log, poller, marks, saved_step)


def _train(w: Worker, job: dict, log: RunLogger, poller, marks: dict, saved_step: int) -> None:
    cfg, c = w.cfg, w.cfg.checkpoint
    watcher = interval = mtbr_from = deadline = None  # _pacing, after the first step
    beat = pacing.Heartbeat(w.events, w.storage.is_local)
    last_ckpt, samples = time.monotonic(), cfg.trainer.batch_size * w.world
    log.start_progress(w.step, cfg.trainer.max_steps)
    first_step, loop_t0, loss = w.step, time.perf_counter(), float("nan")
    while w.step < cfg.trainer.max_steps:
        t0 = time.perf_counter()
        loss = w.train_step()
        if w.step == first_step + 1:
            if w.rank == 0:  # the attempt's restart budget travels in this one event (one write)
                marks["first_step"] = time.time()
                step_s = round(time.perf_counter() - t0, 4)
                w.events.emit("first_step", step=w.step, step_s=step_s, phases=_phases(marks))
            watcher, interval, mtbr_from, deadline = _pacing(w, job)
        if cfg.debug.step_sleep_s:
            time.sleep(cfg.debug.step_sleep_s)
        if deadline and w.step > first_step + 1:  # the attempt's first step (warm-up) is left out
            deadline.check(w.step, time.perf_counter() - t0)
        # Every rank agrees on "notice seen" (on any rank), "time-based checkpoint due" and "a newer
        # attempt holds the run" (rank 0).
        flags = torch.zeros(3, dtype=torch.int64)
        flags[0] = noticed(w, poller)
        if w.rank == 0:
            flags[1] = int(interval is not None and time.monotonic() - last_ckpt >= interval.seconds)
            flags[2] = stale(w)
            beat.beat(w.step)
        agree(flags, w.world)
        if flags[2]:
            return stand_down(w, log)
        log.step(w.step, loss, samples / (time.perf_counter() - t0), c.every_steps - w.step % c.every_steps)
        if flags[0]:
            if watcher:
                watcher.set()
            return stop_for_notice(w, poller, saved_step, loss, log)
        if (flags[1] or w.step % c.every_steps == 0) and w.step < cfg.trainer.max_steps:
            _periodic_save(w, interval, mtbr_from)
            saved_step, last_ckpt = w.step, time.monotonic()
            if job.get("report_checkpoints"):  # a sweep's scheduler ranks trials by these
                w.report({"step": w.step, "loss": loss, "preempted": 0})
    wait_t0 = time.perf_counter()
    w.ckpt.wait()  # the newest checkpoint durable before final/ (its write may still be running)
    end = time.perf_counter()
    _finish(w, job, log, w.step - first_step, end - loop_t0, end - wait_t0, loss)
