"""The driver side of a fine-tune: Ray Train's TorchTrainer around `loop.train_loop` (trainer.py), run
under the spot contract (spotrun.recovery.contract: the notice, the commit, the exit code). torch and
Ray Train load when the work starts, so a mistake in the config is reported in ~1 s."""

from __future__ import annotations

import time

from omegaconf import OmegaConf

from spotrun.core.config import validate
from spotrun.core.events import read_events
from spotrun.core.paths import REPO_ROOT, scratch_dir
from spotrun.core.storage import storage_from_cfg
from spotrun.jobs.finetune.outputs import final_dir, is_finished, read_final_metrics
from spotrun.recovery import fallback
from spotrun.recovery.contract import JobKind, Outcome, register
from spotrun.recovery.lease import JOB_KEY


def job_spec(cfg, repo_root: str, run_name: str, model_path: str, storage_uri: str) -> dict:
    """What every rank's `train_loop` needs: plain data only (it is pickled to the workers)."""
    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "run_name": run_name,
        "repo_root": repo_root,
        "model_path": model_path,
        "local_dir": scratch_dir(repo_root, storage_uri, run_name),
        # rank 0 hands over to on-demand when the projected spot finish passes it (spotrun.recovery.fallback)
        "fallback_deadline": fallback.parse_deadline(cfg.cloud.fallback.deadline)
        if fallback.active(cfg)
        else None,
    }


def summary(metrics: dict) -> str:
    name = next(iter(metrics.get("after", {})), "recall_at_1")  # the task's headline metric
    before = metrics.get("before", {}).get(name)
    after = metrics.get("after", {}).get(name)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    label = "recall@1" if name == "recall_at_1" else name
    return f"{label} before {fmt(before)} -> after {fmt(after)} (step {metrics.get('step')})"


class FinetuneJob:
    """The fine-tune's work under the spot contract (spotrun.recovery.contract)."""

    def __init__(self, cfg, run_name: str, model_path: str, repo_root: str = REPO_ROOT):
        self.cfg, self.run_name, self.model_path, self.repo_root = cfg, run_name, model_path, repo_root
        self.storage = storage_from_cfg(cfg, repo_root)

    def finished(self) -> str | None:
        if not is_finished(self.storage, self.run_name):
            return None
        outputs = final_dir(self.storage, self.run_name)
        return f"{summary(read_final_metrics(self.storage, self.run_name))}; outputs in {outputs}"

    def committed(self) -> str | None:
        from spotrun.recovery.checkpoint import CheckpointStore  # torch

        steps = CheckpointStore(self.storage, self.run_name).committed_steps()
        return f"checkpoint at step {steps[-1]}" if steps else None

    def run(self, attempt) -> Outcome:
        from spotrun.jobs.finetune.trainer import build_trainer  # torch, Ray Train

        job = job_spec(self.cfg, self.repo_root, self.run_name, self.model_path, self.storage.uri)
        job[JOB_KEY] = attempt.lease.epoch  # the workers fence their writes with it
        job["phases"] = {**attempt.phases, "fit": time.time()}  # rank 0 records them at its first step
        print(f"spotrun: run {self.run_name!r} in {self.storage.path(self.run_name)}")
        build_trainer(self.cfg, self.run_name, self.storage, job).fit()
        if is_finished(self.storage, self.run_name):
            print(
                f"spotrun: run {self.run_name!r} finished: {summary(read_final_metrics(self.storage, self.run_name))}"
            )
            return Outcome(finished=True)
        return Outcome(saved=self._saved_at_notice(attempt.phases.get("lease", 0.0)))

    def _saved_at_notice(self, since: float) -> str | None:
        """What rank 0's notice path committed in this attempt (its `preempted` event), or None
        (one read of the events, after the workers are done; Ray's result carries no checkpointless
        report's metrics)."""
        ours = [
            e
            for e in read_events(self.storage, self.run_name)
            if e["kind"] == "preempted" and e["source"] == "rank0" and e["ts"] >= since
        ]
        if not ours:
            return None
        e = ours[-1]
        newest = f"checkpoint at step {e['committed']}" if e.get("committed") else "none yet"
        return (
            f"checkpoint at step {e['step']} committed"
            if e["saved"]
            else f"nothing new to save; newest commit: {newest}"
        )


def prepare(cfg) -> FinetuneJob:
    """The checks that look outside the config, then the job ready to run. Raises ConfigError."""
    from spotrun.jobs.finetune.preflight import preflight

    run_name, model_path = preflight(cfg, REPO_ROOT)
    return FinetuneJob(cfg, run_name, model_path)


KIND = register(
    JobKind(
        name="finetune",
        check=lambda cfg: validate(cfg, REPO_ROOT),
        prepare=prepare,
        summary="fine-tune a pretrained model on Ray Train (DDP/FSDP)",
    )
)
