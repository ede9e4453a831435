"""The spot contract: what every spot job does around its own work, written once.

    finished already?  -> say so, exit 0           (a relaunch of a done run costs nothing)
    fallback at start? -> `fallback` event, exit 0  (the on-demand stage takes over)
    the run's lease (a new epoch) -> `launch` event -> Ray up (shielded from SIGTERM) -> the run's notice board -> the job's work
    SIGTERM (any of the job's processes) or a cloud notice -> the job commits what is new -> exit 75
    (while it starts: before the lease, exit 75 at once, writing nothing; from the lease until the
     work starts, `preempted` (nothing new), Ray's processes stopped, exit 75 at once)
    a newer attempt took the run's lease -> this one writes nothing more -> exit 76
    the notice's time runs out first -> `preempted_timeout`, exit 75 without it
    the work raised without a notice -> `failed` event, exit 1;   a user mistake -> one line, exit 2

A job kind is a `JobKind` (its name, checks and how to build its work) registered once; `main(name,
overrides)` is its whole entry point, and `spotrun launch` / the SkyPilot task follow from the name.
The work is a `SpotJob`: a run name, a storage, and three methods.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import ray
from omegaconf import DictConfig, OmegaConf

from spotrun.core.config import compose
from spotrun.core.errors import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, user_errors
from spotrun.core.events import EventLog, read_events
from spotrun.core.paths import CONF_DIR
from spotrun.core.storage import Storage
from spotrun.recovery import fallback, shield
from spotrun.recovery.lease import Lease, Superseded, stand_down
from spotrun.recovery.notices import create_board
from spotrun.recovery.runtime import init_ray, kill_ray_processes, placement, shutdown_ray

NOTICE_MARGIN_S = 5.0  # exit this long before the provider's notice runs out


@dataclass
class Attempt:
    """One start of a job: what the contract hands the job's work."""

    cfg: DictConfig
    run_name: str
    events: EventLog  # the driver's writer
    notice: shield.Notice
    grace_s: float  # seconds from the notice to the forced exit
    history: list[dict] = field(default_factory=list)  # read at launch only when a fallback may need it
    lease: Lease | None = None  # this attempt's epoch: a newer one means stop (exit 76)
    board: object = None  # the run's NoticeBoard actor, once Ray is up
    posted: dict | None = None  # what a worker posted to the board (a cloud notice, the deadline)
    # the restart budget: unix time at the end of each driver phase (spotrun.recovery.history.PHASES);
    # the job carries it to its workers, whose rank 0 adds its own and records them with the first step
    phases: dict[str, float] = field(default_factory=dict)

    def noticed(self) -> bool:
        return self.notice.is_set()


@dataclass
class Outcome:
    """What the work reports back. `saved` describes what the notice's commit wrote (None: it
    recorded nothing, and the contract records the notice and what was already committed)."""

    finished: bool = False
    saved: str | None = None


class SpotJob(Protocol):
    cfg: DictConfig
    run_name: str
    storage: Storage

    def finished(self) -> str | None:
        """A one-line summary when the run has already finished, else None."""

    def run(self, attempt: Attempt) -> Outcome:
        """The work, Ray up. Returns when done or when a notice's commit is durable; may raise."""

    def committed(self) -> str | None:
        """What the newest commit holds ("checkpoint at step 30", "12/20 shards"), or None."""


@dataclass(frozen=True)
class JobKind:
    """A job kind, registered once: conf/<name>.yaml, pipelines/<name>.py, sky/<name>.yaml."""

    name: str
    check: Callable[[DictConfig], None]  # checks beyond the schema; raise ConfigError; start nothing
    prepare: Callable[[DictConfig], SpotJob]  # the checks that look outside (model, data, storage)
    schema: Callable[[], None] = lambda: None  # registers the structured config before compose
    conf_dir: str = CONF_DIR
    summary: str = ""  # one line for `spotrun --help` and the SkyPilot task's comment


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


def load(kind: JobKind, overrides: list[str]) -> DictConfig:
    """The job's composed config, checked as the job checks it. Raises ConfigError."""
    kind.schema()
    cfg = compose(kind.name, overrides, conf_dir=kind.conf_dir)
    kind.check(cfg)
    return cfg


def main(kind: JobKind, overrides: list[str], started_ts: float | None = None) -> int:
    """A job's whole entry point: compose, check, prepare, run under the contract. The exit code."""
    notice = shield.NOTICE  # armed by the entry point (`shield.arm()`, its first line)
    notice.on_notice(DEADLINE.start)  # from the notice on, however slow the start-up still is
    started_ts = started_ts or time.time()
    phases = {"start": started_ts}

    def prepared() -> SpotJob:
        cfg = load(kind, overrides)
        phases["config"] = time.time()
        return kind.prepare(cfg)

    job = user_errors(prepared)()
    if isinstance(job, int):  # a user mistake, already printed as one line
        return job
    phases["prepared"] = time.time()
    return run(job, notice, started_ts, phases)


def run(job: SpotJob, notice: shield.Notice, started_ts: float, phases: dict | None = None) -> int:
    """One attempt of `job` under the contract. Returns the exit code."""
    cfg = job.cfg
    done = job.finished()
    if done is not None:
        print(f"spotrun: run {job.run_name!r} already finished: {done}; pick a new run.name to run again")
        return EXIT_OK
    lease = Lease.acquire(job.storage, job.run_name, holder=f"{socket.gethostname()}:{os.getpid()}")
    job.storage = job.storage.fenced(lease)  # every write of this attempt checks it holds the run
    events = EventLog(job.storage, job.run_name, source="driver")
    grace_s = cfg.cloud.notice_s - NOTICE_MARGIN_S
    DEADLINE.configure(grace_s, events)  # main() started listening for the notice already
    # until the work starts (Ray up, the board made: long on a busy VM) a notice has nothing to commit
    notice.while_starting(lambda ts: _exit_in_start_up(job, events, ts))
    history = read_events(job.storage, job.run_name) if fallback.active(cfg) else []
    handover = fallback.reason_at_start(cfg, history, time.time())
    if handover:
        return hand_over(events, job.run_name, handover)
    history.append(
        events.emit(
            "launch",
            started_ts=round(started_ts, 3),
            epoch=lease.epoch,
            job=cfg.run.job,  # `spotrun runs` reads the kind and the goal from the events alone
            max_steps=OmegaConf.select(cfg, "trainer.max_steps", default=None),
            **placement(cfg),
        )
    )
    attempt = Attempt(cfg, job.run_name, events, notice, grace_s, history, lease)
    attempt.phases = {"start": started_ts, **(phases or {}), "lease": time.time()}
    outcome, error = _work(job, attempt)
    if outcome.finished:
        return EXIT_OK
    if isinstance(error, Superseded) or not lease.current(0):
        return stand_down(lease, events)
    if attempt.noticed():
        return _preempted(job, attempt, outcome)
    events.emit("failed", error=_first_line(error) if error else "the work ended unfinished")
    print(f"spotrun: run {job.run_name!r} failed: {error or 'the work ended unfinished'}", file=sys.stderr)
    return EXIT_FAILED


def _work(job: SpotJob, attempt: Attempt) -> tuple[Outcome, BaseException | None]:
    """Ray up, the board, the work, Ray down. A notice before the work starts skips it."""
    if attempt.noticed():  # nothing ran in this attempt yet: nothing new to save
        return Outcome(), None
    try:
        init_ray()
        attempt.phases["ray"] = time.time()
        attempt.board = create_board(attempt.run_name)  # its actor starts while the job builds its work
        attempt.notice.while_starting(None)  # from here on a notice is recorded, and the work commits
        attempt.notice.on_notice(lambda ts: attempt.board.post.remote("sigterm", attempt.grace_s))
        if attempt.noticed():
            return Outcome(), None
        return job.run(attempt), None
    except Exception as e:  # noqa: BLE001 - any failure of the work ends in the same exit path
        return Outcome(), e
    finally:
        _read_board(attempt)
        shutdown_ray()


def _read_board(attempt: Attempt) -> None:
    """A cloud metadata notice (or the fallback deadline) that a worker posted counts as a notice."""
    if attempt.board is None:
        return
    try:
        posted = ray.get(attempt.board.get.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - never let this check skip the shutdown
        return
    if posted is not None:
        attempt.posted = posted
        attempt.notice.set()


def _preempted(job: SpotJob, attempt: Attempt, outcome: Outcome) -> int:
    handover = fallback.reason_at_notice(attempt.cfg, attempt.posted, attempt.history)
    saved = outcome.saved
    if saved is None:  # the work recorded nothing: say what the notice found committed
        saved = _nothing_new(job, attempt.events, attempt.notice.ts)
    if handover:
        return hand_over(attempt.events, job.run_name, handover)
    print(f"spotrun: run {job.run_name!r} preempted; {saved}; exit {EXIT_PREEMPTED} (relaunch me)")
    return EXIT_PREEMPTED


def _nothing_new(job: SpotJob, events: EventLog, notice_ts: float) -> str:
    """Record a notice that found nothing new to commit; what the relaunch resumes from."""
    newest = job.committed()
    events.emit("preemption_notice", source="sigterm", notice_ts=round(notice_ts, 3))
    events.emit("preempted", saved=False, committed=newest, durable_s=0.0)
    return f"nothing new to save; newest commit: {newest or 'none yet'}"


def _exit_in_start_up(job: SpotJob, events: EventLog, notice_ts: float) -> None:
    """A notice after the lease, before the work started (in the notice's thread, while the main
    thread may still be starting Ray): record it, stop what Ray started, exit 75 now."""
    DEADLINE.start(notice_ts)  # bounds the writes below
    saved = "nothing new to save"
    with contextlib.suppress(Exception):  # a write that fails must not keep the exit from happening
        saved = _nothing_new(job, events, notice_ts)
    print(
        f"spotrun: run {job.run_name!r} preempted during start-up; {saved}; exit {EXIT_PREEMPTED} (relaunch me)"
    )
    sys.stdout.flush()
    kill_ray_processes()
    os._exit(EXIT_PREEMPTED)


class Deadline:
    """Exit 75 `grace_s` after the notice, whatever the job is doing then. Until the config says how
    long this cloud's notice is, the shortest one counts (GCP's 30 s, less the margin)."""

    def __init__(self, grace_s: float = 30.0 - NOTICE_MARGIN_S):
        self.grace_s, self.events, self._timer = grace_s, None, None

    def configure(self, grace_s: float, events: EventLog) -> None:
        self.events = events
        if self._timer is None:  # a running clock is never lengthened
            self.grace_s = grace_s

    def start(self, notice_ts: float) -> None:
        if self._timer is not None:
            return
        sys.stderr.write("spotrun: preemption notice: committing what is new, then exiting\n")
        self._timer = threading.Timer(max(0.0, notice_ts + self.grace_s - time.time()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with contextlib.suppress(Exception):  # nothing may keep this exit from happening
            if self.events is not None:
                self.events.emit("preempted_timeout", waited_s=self.grace_s)
        sys.stderr.write("spotrun: notice deadline reached; exiting before the commit finished\n")
        sys.stderr.flush()
        os._exit(EXIT_PREEMPTED)


DEADLINE = Deadline()  # one per process, as the notice is


def hand_over(events: EventLog, run_name: str, reason: str) -> int:
    """End the spot stage: the on-demand task after it resumes from the committed checkpoint."""
    events.emit("fallback", reason=reason)
    print(f"spotrun: run {run_name!r} moves to on-demand ({reason}); exit 0 hands it to the next task")
    return EXIT_OK


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:300] if str(e).strip() else type(e).__name__
