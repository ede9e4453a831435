"""Ray Tune sweep around the fine-tune job: every trial is a fine-tune run of its own.

A trial is a function trainable that builds the same TorchTrainer as `make finetune` (no second
training loop) with its run folder at `<root>/<sweep run>/trials/<trial>/`. Its checkpoints are
spotrun's, so a trial that Tune retries, or that a restored sweep starts again, resumes from its own
newest committed checkpoint. Tune's own (pickled) state stays on local disk (`.spotrun/tune/<hash of the run URI>/`), never in
the bucket; rerunning the same command restores it: finished trials are kept, unfinished ones
continue. On a new machine the seeded search recreates the trials, which find their folders again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time

import ray
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from spotrun.core import config as C
from spotrun.core.config import validate
from spotrun.core.events import read_events
from spotrun.core.paths import REPO_ROOT
from spotrun.core.storage import open_storage, storage_from_cfg
from spotrun.jobs.finetune.driver import job_spec
from spotrun.jobs.finetune.outputs import is_finished, read_final_metrics
from spotrun.jobs.sweep.config import register as register_schema
from spotrun.jobs.sweep.config import validate_sweep
from spotrun.jobs.sweep.results import write_results
from spotrun.recovery.contract import JobKind, Outcome, register
from spotrun.recovery.notices import NAMESPACE, NoticeBoard, board_name

TRIAL_MEMORY = 1 << 20  # bytes; a token request (see run_sweep)


def to_domain(leaf: DictConfig):
    """One validated `{kind: args}` leaf as a Ray Tune search domain."""
    ((kind, args),) = leaf.items()
    args = OmegaConf.to_container(args)
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    return (tune.loguniform if kind == "loguniform" else tune.uniform)(*args)


def param_space(found: dict[str, DictConfig]) -> dict:
    """Dotted keys -> the nested dict Tune samples; a trial's config merges onto the job config."""
    space: dict = {}
    for key, leaf in found.items():
        *parents, last = key.split(".")
        node = space
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = to_domain(leaf)
    return space


def trial_run_name(trial_id: str, params: dict) -> str:
    """The trial's index in the search (the counter Tune puts after the `_` of a trial id) plus a
    hash of its params. A seeded search makes the same trials in the same order, so a sweep started
    afresh on another machine finds each trial's folder again; a different trial never does."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:6]
    return f"t{trial_id.rsplit('_', 1)[-1]}-{digest}"


class ReportToTune(TuneReportCallback):
    """Forwards the trial's Train reports that carry the sweep metric to Tune (runs in Train's
    controller); reports without it (e.g. recall_at_1 before the end) would break Tune's checks."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if self.metric in metrics[0]:
            # checkpoint=None: spotrun's store, not Tune, owns the trial's checkpoints
            super().after_report(run_context, metrics, None)


def run_trial(params: dict, spec: dict) -> None:
    """A Tune trial: one fine-tune run (resumed when its folder already holds checkpoints)."""
    cfg = OmegaConf.merge(OmegaConf.create(spec["cfg"]), params)
    name = trial_run_name(tune.get_context().get_trial_id(), params)
    storage = storage_from_cfg(cfg, spec["repo_root"])
    if is_finished(storage, name):  # finished, but the sweep state missed it: report, do not rerun
        m = read_final_metrics(storage, name)
        tune.report({"step": m["step"], "loss": float("nan"), **m["after"]})
        return
    board = NoticeBoard.options(
        name=board_name(name), namespace=NAMESPACE, get_if_exists=True, lifetime=None
    ).remote()
    from spotrun.jobs.finetune.trainer import build_trainer  # torch, Ray Train: in the trial's process

    job = job_spec(cfg, spec["repo_root"], name, spec["model_path"], storage.uri)
    job["report_checkpoints"] = True  # `loss` at every checkpoint, for ASHA and sweep.metric=loss
    build_trainer(cfg, name, storage, job, callbacks=[ReportToTune(spec["metric"])]).fit()
    if is_finished(storage, name):
        return
    if ray.get(board.get.remote()) is not None:  # checkpointed for a notice: the driver exits 75
        time.sleep(3600)
    raise RuntimeError(f"trial {name} stopped before its last step")


def trial_cfg(cfg: DictConfig, run_uri: str) -> dict:
    """The fine-tune config every trial starts from: the sweep's, with storage under the sweep run."""
    base = OmegaConf.to_container(cfg, resolve=True)
    base.pop("sweep")
    base["run"] = {"name": None, "job": "finetune"}
    base["storage"]["root"] = f"{run_uri}/trials"
    return base


def _scheduler(cfg: DictConfig):
    s = cfg.sweep
    if s.scheduler == "none":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="step",  # training steps survive restarts; Tune's iteration counter does not
        max_t=cfg.trainer.max_steps,
        grace_period=s.grace_steps,
        reduction_factor=s.reduction_factor,
    )


def _search(cfg: DictConfig):
    if cfg.sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.seed)  # Tune caps it at max_concurrent_trials
    # A generator is not capped by max_concurrent_trials (Tune ignores it): it takes its own cap.
    return tune.search.BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.sweep.concurrency)


def _tuner(cfg, trainable, found, state_dir: str, run_name: str) -> tune.Tuner:
    """Restore the sweep when its Tune state exists (the driver restarted here), else start it.

    Tune's state is pickled, so it stays on this machine's disk and never goes to the bucket. On a
    new machine the seeded search starts again and every trial finds its own folder in the bucket:
    finished trials report their final metrics at once, unfinished ones resume from checkpoints."""
    path = os.path.join(state_dir, run_name)
    if tune.Tuner.can_restore(path):
        print(f"spotrun: restoring sweep {run_name!r}: finished trials are kept, the rest resume")
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    s = cfg.sweep
    return tune.Tuner(
        trainable,
        param_space=param_space(found),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_trials,
            max_concurrent_trials=s.concurrency if s.search == "optuna" else None,
            scheduler=_scheduler(cfg),
            search_alg=_search(cfg),
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=state_dir,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            verbose=1,
        ),
    )


def _in_flight(sweep: str) -> list[str]:
    """Run names of the trials running now: each has a notice board (this cluster is the sweep's),
    and so does the sweep itself (the spot contract's), which is no trial."""
    prefix = board_name("")
    names = [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE
    ]
    return [n[len(prefix) :] for n in names if n.startswith(prefix) and n != board_name(sweep)]


def drain(trials, sweep: str, grace_s: float, events, notice_ts: float) -> None:
    """At a notice: post it to every running trial, wait (until just before the notice's deadline)
    until each has committed its checkpoint or finished, then exit 75 without Ray's teardown: Tune
    would take the trials that returned for finished ones, and the restored sweep must pick them up.
    A VM shutdown signals the trials' workers too, so a trial may commit before this even starts."""
    t0, running = notice_ts - 2.0, _in_flight(sweep)
    for name in running:
        ray.get_actor(board_name(name), namespace=NAMESPACE).post.remote("sigterm", grace_s)

    def settled(name: str) -> bool:
        kinds = {e["kind"] for e in read_events(trials, name) if e["ts"] >= t0}
        return bool(kinds & {"preempted", "finish"})

    while time.time() < notice_ts + grace_s - 1.0 and not all(settled(n) for n in running):
        time.sleep(0.5)
    done = sum(settled(n) for n in running)
    with contextlib.suppress(Exception):  # nothing may keep this exit from happening
        events.emit("preemption_notice", source="sigterm", notice_ts=round(notice_ts, 3))
        events.emit("preempted", saved=bool(done), trials_committed=done, trials_running=len(running))
    sys.stderr.write(f"spotrun: preempted; {done}/{len(running)} running trials committed; exit 75\n")
    sys.stderr.flush()
    os._exit(C.EXIT_PREEMPTED)


def reap_orphaned_placement_groups(every_s: float = 5.0) -> None:
    """Free the CPUs of trials that ended: remove placement groups whose creating actor is dead.

    Tune ends a trial by killing its actor, and with it the trial's Train controller; the worker
    group's placement group stays behind. Ray Train's own cleaner finds those through the state API,
    which needs the dashboard (off here) and one Ray cluster per host; without this the next trials
    wait for CPUs forever. GCS's table says who created each group and whether it is still alive."""
    from ray._private.state import state  # pinned ray==2.60.0: the GCS table, no dashboard needed
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    created = gcs_pb2.PlacementGroupTableData.CREATED
    while ray.is_initialized():
        with contextlib.suppress(Exception):  # a missed round is retried; the sweep must not die of it
            for raw in state._connect_and_get_accessor().get_placement_group_table():
                pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
                by_dead_actor = pg.creator_actor_dead and not ray.ActorID(pg.creator_actor_id).is_nil()
                if pg.state == created and by_dead_actor and not pg.is_detached:
                    ray.util.remove_placement_group(
                        PlacementGroup(ray.PlacementGroupID(pg.placement_group_id))
                    )
        time.sleep(every_s)


class SweepJob:
    """The sweep's work under the spot contract (spotrun.recovery.contract)."""

    def __init__(self, cfg: DictConfig, run_name: str, model_path: str, found: dict):
        self.cfg, self.run_name, self.model_path, self.found = cfg, run_name, model_path, found
        self.storage = storage_from_cfg(cfg, REPO_ROOT)

    def finished(self) -> str | None:
        return None  # a rerun of a finished sweep restores it and rewrites its results: cheap

    def committed(self) -> str | None:
        return None  # each trial's checkpoints are its own (trials/<trial>/)

    def run(self, attempt) -> Outcome:
        """Run (or restore) the sweep; write the results."""
        cfg, run_uri = self.cfg, f"{self.storage.uri}/{self.run_name}"
        spec = {"cfg": trial_cfg(cfg, run_uri), "repo_root": REPO_ROOT, "model_path": self.model_path}
        spec["metric"] = cfg.sweep.metric
        root = spec["cfg"]["storage"]["root"]
        trials = open_storage(root, REPO_ROOT, cfg.storage.endpoint, cfg.storage.region)
        threading.Thread(target=reap_orphaned_placement_groups, daemon=True).start()
        # The trial function only waits on its TorchTrainer: it takes no CPU, its workers take them.
        # (Tune refuses an all-zero request, so it asks for a token 1 MiB of memory instead.)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, spec=spec), {"cpu": 0, "memory": TRIAL_MEMORY}
        )
        attempt.notice.on_notice(lambda ts: _drain_in_thread(trials, attempt))
        print(f"spotrun: sweep {self.run_name!r} in {run_uri}")
        # keyed by the run's full URI: the same run name under another storage root is another sweep
        key = hashlib.sha256(run_uri.encode()).hexdigest()[:12]
        state_dir = os.path.join(REPO_ROOT, ".spotrun", "tune", key)
        grid = _tuner(cfg, trainable, self.found, state_dir, self.run_name).fit()
        rows = write_results(cfg, grid, self.storage, trials, self.run_name, REPO_ROOT, trial_run_name)
        if not rows or any(r["status"] == "error" for r in rows):
            raise RuntimeError(f"{sum(r['status'] == 'error' for r in rows)} of {len(rows)} trials failed")
        return Outcome(finished=True)


def _drain_in_thread(trials, attempt) -> None:
    args = (trials, attempt.run_name, attempt.grace_s, attempt.events, attempt.notice.ts)
    threading.Thread(target=drain, args=args, daemon=True).start()


def prepare(cfg: DictConfig) -> SweepJob:
    from spotrun.jobs.finetune.preflight import preflight

    run_name, model_path = preflight(cfg, REPO_ROOT)
    return SweepJob(cfg, run_name, model_path, validate_sweep(cfg))


def _check(cfg: DictConfig) -> None:
    validate(cfg, REPO_ROOT)
    validate_sweep(cfg)


KIND = register(
    JobKind(
        name="sweep",
        check=_check,
        prepare=prepare,
        schema=register_schema,
        summary="hyperparameter sweep with Ray Tune; every trial is a fine-tune that resumes",
    )
)
