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
from ray.train import Checkpoint
from ray.train.v2.api.report_config import CheckpointUploadMode
from transformers import get_linear_schedule_with_warmup

from spotrun.core.events import EventLog, read_events
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.data import ExactSampler, Position
from spotrun.jobs.finetune.logger import RunLogger
from spotrun.jobs.finetune.tasks import build_task
from spotrun.recovery import pacing
from spotrun.recovery import state as st
from spotrun.recovery.checkpoint import AsyncCheckpointer, CheckpointStore, bytes_to_tensors
from spotrun.recovery.lease import worker_storage
from spotrun.recovery.notices import BoardPoller


class Worker:
    """One rank's model, optimizer, data position and checkpointing."""

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
        self.task = build_task(cfg, job["model_path"], self.repo, self.device)  # model.kind picks it
        self.model = self.task.model
        self.sampler = ExactSampler(self.task.num_samples(), cfg.trainer.batch_size, cfg.seed)
        t = cfg.trainer
        self.opt = torch.optim.AdamW(self.task.trainable_parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.sched = get_linear_schedule_with_warmup(self.opt, t.warmup_steps, t.max_steps)
        self.step, self.pos, self.meta = 0, Position(), {}
        self.ckpt = AsyncCheckpointer(self.store, cfg.checkpoint.keep, on_commit=self._on_commit)
        self.reported_step: int | None = None

    # ----- resume -----
    def restore(self) -> int | None:
        """Load the newest committed checkpoint (rank 0 chooses, all load). Returns its step or None."""
        chosen = torch.tensor([-1])
        if self.rank == 0:
            skip = lambda s, why: self.events.emit("checkpoint_skipped", step=s, reason=why)  # noqa: E731
            found = self.store.load_latest(self.cfg.checkpoint.verify, on_skip=skip)
            chosen[0] = found[0] if found else -1
        dist.broadcast(chosen, src=0)
        if chosen.item() < 0:
            st.seed_everything(self.cfg.seed + self.rank)
            return None
        files = (
            found[1] if self.rank == 0 else self.store.read(int(chosen.item()), self.cfg.checkpoint.verify)
        )
        meta = json.loads(files["state.json"])
        if self.task.sharded:  # FSDP: every rank reads its own model + optimizer shards (DCP)
            self.task.load_sharded(self.store.dir_for(int(chosen.item())) + "/dcp", self.opt)
        else:
            self.task.load_state(bytes_to_tensors(files["model.safetensors"]))
            st.optimizer_from_flat(self.opt, bytes_to_tensors(files["optim.safetensors"]), meta["optimizer"])
        self.sched.load_state_dict(meta["scheduler"])
        rng = bytes_to_tensors(files["rng.safetensors"])
        if meta["world_size"] == self.world:
            r = str(self.rank)
            st.restore_rng(
                {k.split(".", 1)[1]: v for k, v in rng.items() if k.startswith(r + ".")}, meta["rng"][r]
            )
        else:  # elastic resize: a fresh, deterministic stream per rank (the data order is unaffected)
            st.seed_everything(self.cfg.seed + 1000 * meta["step"] + self.rank)
        self.step, self.pos = meta["step"], Position(**meta["position"])
        self.meta = {k: meta[k] for k in ("metrics_before", "wandb_id", "resumes") if k in meta}
        return self.step

    # ----- checkpoint -----
    def save(self, reason: str) -> float:
        """Snapshot this step's state (all ranks take part) and queue the write. Returns seconds blocked."""
        rng_t, rng_m = st.capture_rng()
        gathered = [None] * self.world
        dist.all_gather_object(gathered, ({k: v.tolist() for k, v in rng_t.items()}, rng_m))
        t0, shards = time.perf_counter(), None
        if self.task.sharded:  # FSDP: every rank stages its shards; rank 0 commits after they land
            shards = self.task.save_sharded(self.store.dir_for(self.step) + "/dcp", self.opt)
        if self.rank != 0:
            return 0.0
        opt_t, opt_m = ({}, None) if shards is not None else st.optimizer_to_flat(self.opt)
        rng_tensors = {
            f"{r}.{k}": torch.tensor(v, dtype=rng_t[k].dtype)
            for r, (ts, _) in enumerate(gathered)
            for k, v in ts.items()
        }
        meta = {
            "step": self.step,
            "position": vars(self.pos),
            "world_size": self.world,
            "optimizer": opt_m,
            "scheduler": self.sched.state_dict(),
            "rng": {str(r): m for r, (_, m) in enumerate(gathered)},
            "reason": reason,
            **self.meta,
        }
        groups = {} if shards is not None else {"model": self.task.state_tensors(), "optim": opt_t}
        staged = time.perf_counter() - t0
        return staged + self.ckpt.save(
            self.step, {**groups, "rng": rng_tensors}, {"state.json": meta}, after=shards
        )

    def _on_commit(self, info: dict) -> None:
        self.events.emit("checkpoint", **info)

    def report(self, metrics: dict) -> None:
        """Tell Ray Train (a barrier on all ranks); rank 0 hands over the newest committed checkpoint."""
        ckpt = None
        last = self.ckpt.last_committed
        if self.rank == 0 and last is not None and last != self.reported_step:
            ckpt = Checkpoint(path=self.store.dir_for(last), filesystem=self.storage.fs)
            self.reported_step = last
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

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
        w.events.emit("resume", step=resumed, world_size=w.world, epoch=w.pos.epoch, offset=w.pos.offset)


def _stop_for_notice(w: Worker, notice: dict | None, loss: float, log: RunLogger) -> None:
    """Checkpoint this step on every rank, wait until it is committed, tell Ray, return."""
    if w.rank == 0:
        w.events.emit("preemption_notice", step=w.step, source=notice["source"], notice_ts=notice["ts"])
    w.save("preemption_notice")
    if w.rank == 0:
        info = {k: v for k, v in (w.ckpt.wait() or {}).items() if k != "step"}
        w.events.emit("preempted", step=w.step, durable_s=round(time.time() - notice["ts"], 3), **info)
    log.close()
    w.report({"step": w.step, "loss": loss, "preempted": 1})


def _finish(w: Worker, job: dict, log: RunLogger, steps_run: int, loop_s: float, loss: float) -> None:
    """Score the trained model and write final/ (metrics.json last) on rank 0."""
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
            **{f"before_{k}": metrics["before"].get(k) for k in after},
            **{f"after_{k}": v for k, v in after.items()},
        )
        log.finish(after)
        final.update(after)
    w.ckpt.close()
    log.close()
    w.report({"step": w.step, "preempted": 0, "finished": 1, **final})


def train_loop(job: dict) -> None:
    """Ray Train entry point (runs on every rank)."""
    w = Worker(job)
    cfg, c = w.cfg, w.cfg.checkpoint
    resumed = w.restore()
    log = RunLogger(cfg, w.run_name, job["local_dir"], w.meta.get("wandb_id"), enabled=w.rank == 0)
    w.meta["wandb_id"] = log.run_id
    _announce(w, resumed)
    w.ddp = ray.train.torch.prepare_model(w.model) if w.world > 1 and not w.task.sharded else w.model
    w.ddp.train()
    poller = BoardPoller(w.run_name) if w.rank == 0 else None
    watcher = (
        pacing.watch_node_metadata(cfg, w.run_name) if ray.train.get_context().get_local_rank() == 0 else None
    )
    # only rank 0 decides when a time-based checkpoint is due: one read of the run's history
    history = read_events(w.storage, w.run_name) if w.rank == 0 else []
    interval, mtbr_from = pacing.checkpoint_interval(cfg, history, w.repo) if w.rank == 0 else (None, None)
    deadline = (
        pacing.DeadlineWatch(job["fallback_deadline"], history, w.run_name, cfg.trainer.max_steps)
        if w.rank == 0 and job.get("fallback_deadline")
        else None
    )
    beat = pacing.Heartbeat(w.events, w.storage.is_local)
    last_ckpt, samples = time.monotonic(), cfg.trainer.batch_size * w.world
    log.start_progress(w.step, cfg.trainer.max_steps)
    first_step, loop_t0, loss = w.step, time.perf_counter(), float("nan")
    while w.step < cfg.trainer.max_steps:
        t0 = time.perf_counter()
        loss = w.train_step()
        if w.step == first_step + 1 and w.rank == 0:
            w.events.emit("first_step", step=w.step, step_s=round(time.perf_counter() - t0, 4))
        if cfg.debug.step_sleep_s:
            time.sleep(cfg.debug.step_sleep_s)
        if deadline and w.step > first_step + 1:  # the attempt's first step (warm-up) is left out
            deadline.check(w.step, time.perf_counter() - t0)
        # One tiny all-reduce: every rank agrees on "notice seen" and "time-based checkpoint due".
        flags = torch.zeros(2, dtype=torch.int64)
        if w.rank == 0:
            flags[0] = int(poller.poll() is not None)
            flags[1] = int(time.monotonic() - last_ckpt >= interval.seconds)
            beat.beat(w.step)
        if w.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        log.step(w.step, loss, samples / (time.perf_counter() - t0), c.every_steps - w.step % c.every_steps)
        if flags[0]:
            if watcher:
                watcher.set()
            return _stop_for_notice(w, poller.notice if poller else None, loss, log)
        if (flags[1] or w.step % c.every_steps == 0) and w.step < cfg.trainer.max_steps:
            blocked = w.save("periodic")
            last_ckpt = time.monotonic()
            if w.rank == 0 and interval.observe(blocked):
                w.events.emit(
                    "checkpoint_interval",
                    seconds=round(interval.seconds, 2),
                    cost_s=round(blocked, 4),
                    mtbr_s=round(interval.mtbr_s, 1),
                    mtbr_from=mtbr_from,
                )
            w.report({"step": w.step, "loss": loss, "preempted": 0})
    w.ckpt.wait()
    _finish(w, job, log, w.step - first_step, time.perf_counter() - loop_t0, loss)
