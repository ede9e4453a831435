"""How the training loop stops for a notice, or stands down for a newer attempt: every rank agrees
through one tiny all-reduce, rank 0 commits and records what was saved. `w` is the loop's Worker (loop.py)."""

from __future__ import annotations

import time

import ray
import torch
import torch.distributed as dist

from spotrun.recovery import shield
from spotrun.recovery.notices import NAMESPACE, BoardPoller, board_name


def noticed(w, poller: BoardPoller | None) -> int:
    """This rank's view of "a notice came": a SIGTERM pending in this (shielded) worker process, or,
    on rank 0, a notice on the run's board (the driver's SIGTERM, a cloud metadata notice)."""
    seen = shield.sigterm_pending()
    if poller is not None:
        seen = poller.poll() is not None or seen
    return int(seen)


def _notice_of(w, poller: BoardPoller | None) -> dict:
    """The notice as the board holds it; a SIGTERM only a worker saw is posted there first, so the
    driver learns of it too."""
    if w.rank != 0:
        return {}
    if poller.notice is None:
        board = ray.get_actor(board_name(w.run_name), namespace=NAMESPACE)
        ray.get(board.post.remote("sigterm", None), timeout=10)
        poller.notice = ray.get(board.get.remote(), timeout=10)
    return poller.notice


def agree(flags: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:  # one tiny all-reduce: a flag raised on any rank holds for all
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def stale(w) -> int:
    """Rank 0: a newer attempt of this run took the lease (checked at most every few seconds)."""
    fence = w.storage.fence
    return int(w.rank == 0 and fence is not None and not fence.current())


def stand_down(w, log) -> None:
    """A superseded attempt writes nothing more: no checkpoint, no event, no final/ (exit 76)."""
    log.close()
    w.report({"step": w.step, "superseded": 1})


def stop_for_notice(w, poller: BoardPoller | None, saved_step: int, loss: float, log) -> None:
    """Commit this step if it is new (every rank takes part), wait until it is durable, tell Ray.
    With nothing new since the last commit (a notice at start-up, or right after a checkpoint), the
    write already queued or committed is what the relaunch resumes from."""
    notice = _notice_of(w, poller)
    if w.rank == 0:
        w.events.emit("preemption_notice", step=w.step, source=notice["source"], notice_ts=notice["ts"])
    fresh = w.step > saved_step
    if fresh:
        w.save("preemption_notice")
    saved = None
    if w.rank == 0:
        info = {k: v for k, v in (w.ckpt.wait() or {}).items() if k != "step"}
        committed = w.ckpt.last_committed if w.ckpt.last_committed is not None else (saved_step or None)
        newest = f"checkpoint at step {committed}" if committed else "none yet"
        saved = (
            f"checkpoint at step {w.step} committed"
            if fresh
            else f"nothing new to save; newest commit: {newest}"
        )
        durable = round(time.time() - notice["ts"], 3)
        w.events.emit("preempted", step=w.step, saved=fresh, committed=committed, durable_s=durable, **info)
    log.close()
    w.report({"step": w.step, "loss": loss, "preempted": 1, "saved": saved})
