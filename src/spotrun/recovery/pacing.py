"""What the loop does besides training, on a clock: the checkpoint interval ("auto": Young/Daly),
heartbeats in events.jsonl (so a report can tell how far a killed attempt got), and the cloud
metadata notice watcher (one per node)."""

from __future__ import annotations

import threading
import time

import ray

from spotrun.core import cost
from spotrun.core.events import EventLog
from spotrun.recovery import fallback
from spotrun.recovery.history import observed_mtbr
from spotrun.recovery.notices import DEFAULT_POLL_S, NAMESPACE, board_name, metadata_source, watch_metadata


def checkpoint_interval(cfg, history: list[dict], repo_root: str) -> tuple[cost.CheckpointInterval, str]:
    """The interval, with the mean time between reclaims taken from this run's own history (its
    events so far) when it has any, else `preemption.mtbr_s`, else the cloud's row in conf/prices.yaml."""
    c = cfg.checkpoint
    mtbr, source = observed_mtbr(history), "observed"
    if mtbr is None:
        mtbr, source = cfg.preemption.mtbr_s, "preemption.mtbr_s"
    if mtbr is None:
        table = cost.load_prices(f"{repo_root}/conf/prices.yaml")
        mtbr, source = table["clouds"].get(cfg.cloud.name, {}).get("mtbr_s", 3600.0), "conf/prices.yaml"
    return cost.CheckpointInterval(c.every_seconds, c.min_seconds, c.max_seconds, float(mtbr)), source


class DeadlineWatch:
    """Rank 0 of a spot stage with `cloud.fallback.deadline`: posts the deadline notice (the loop
    then stops as for a preemption notice and the driver hands over to on-demand) once the
    projected spot finish passes the deadline."""

    def __init__(self, deadline: float, history: list[dict], run_name: str, max_steps: int):
        self.deadline, self.max_steps = deadline, max_steps
        self.goodput = fallback.history_goodput(history)
        self.board = ray.get_actor(board_name(run_name), namespace=NAMESPACE)
        self.step_s: float | None = None
        self.posted = False

    def check(self, step: int, step_s: float) -> None:
        if self.posted:
            return
        # a moving average of the step time
        self.step_s = step_s if self.step_s is None else 0.8 * self.step_s + 0.2 * step_s
        reason = fallback.reason_at_deadline(
            self.deadline, time.time(), step, self.max_steps, self.step_s, self.goodput
        )
        if reason:
            self.board.post.remote(fallback.DEADLINE_SOURCE, 0.0, reason)
            self.posted = True


class Heartbeat:
    """Emits `heartbeat` (the step reached) every `every_s`: cheap on local disk, one object
    rewrite on a bucket, hence the longer default there."""

    def __init__(self, events: EventLog, local: bool):
        self.events, self.every_s = events, 5.0 if local else 30.0
        self.next = time.monotonic() + self.every_s

    def beat(self, step: int) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.events.emit("heartbeat", step=step)
            self.next = now + self.every_s


def watch_node_metadata(cfg, run_name: str) -> threading.Event | None:
    """Start this node's metadata notice watcher (call on local rank 0); returns its stop flag."""
    source = metadata_source(cfg.preemption, cfg.cloud.name)
    if source is None:
        return None
    board = ray.get_actor(board_name(run_name), namespace=NAMESPACE)
    stop = threading.Event()
    poll_s = cfg.preemption.poll_s or DEFAULT_POLL_S[source.name]
    watch_metadata(source, board, cfg.cloud.notice_s, poll_s, stop)
    return stop
