"""`make sweep` on a real local Ray cluster: Ray Tune over the real fine-tune job, 1 worker per
trial, 2 trials at a time (the test runs 2, so both start together). One sweep of the SFT task by
eval_loss (a tiny causal LM built from a config) is reclaimed twice in two launches: a whole-group
SIGTERM mid-sweep (exit 75), then, in the rerun, a real SIGKILL of a trial's Train worker, retried
from its checkpoint. The encoder sweep with ASHA (`make sweep`'s own kind) runs too: ASHA stops its
worse trial early. The tiny encoder sweep (`experiment=tiny`) is composed and checked in-process."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pytest
import ray
from conftest import REPO, TINY_MODEL_ARGS, events, kill_tree, launch, wait_for

# The sweep's tiny experiment (4 trials of 20 steps, a checkpoint every 5), smaller evaluation, the
# tiny model of conftest.
TINY = ["experiment=tiny", "data.eval_size=16", *TINY_MODEL_ARGS]

# The timeout allows for cores shared with other test runs (the reclaimed sweep's two launches take
# ~2 min on 2 cores with little else running, several on a busy host).
SLOW_TIMEOUT_S = 1800


def trial_dirs(run_dir: Path) -> list[Path]:
    trials = run_dir / "trials"
    return sorted(p for p in trials.iterdir() if p.is_dir()) if trials.exists() else []


def kinds(trial: Path) -> list[str]:
    return [e["kind"] for e in events(trial)]


def results(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def first_checkpoint(run_dir: Path, since: float = 0.0) -> dict | None:
    """The first trial checkpoint event seen at or after `since` (its pid is that trial's rank-0
    Train worker)."""
    for trial in trial_dirs(run_dir):
        for e in events(trial):
            if e["kind"] == "checkpoint" and e["ts"] >= since:
                return {**e, "trial": trial}
    return None


def sft_sweep_args(root: Path, tiny_lm: Path) -> list[str]:
    """A sweep of the SFT task (the tiny causal LM, SmolLM2's tokenizer) ranked by eval_loss, mode
    min: 20 steps, a commit every 4, paced so a reclaim lands mid-trial. The SIGTERM follows a
    first commit (step 4) and reaches the trials a few steps later (up to 5 seen on a loaded host),
    so the rerun's first commit is at step 12 at most: its worker kill leaves 8 or more steps."""
    return [
        "experiment=tiny",
        "model=smollm2",  # picks task=sft by itself
        f"model.name={tiny_lm}",
        "model.local_package=null",
        "model.gguf_file=null",
        "data=stdlib_sft",
        "data.max_length=96",  # the chat template alone takes ~30 tokens
        "data.eval_size=8",
        "trainer.batch_size=2",
        "trainer.max_steps=20",
        "checkpoint.every_steps=4",
        "debug.step_sleep_s=0.3",
        "sweep.metric=eval_loss",
        "sweep.mode=min",
        "sweep.scheduler=none",
        "sweep.num_trials=2",
        f"storage.root={root}",
        "run.name=reclaimed",
        f"sweep.export_dir={root}/exp",
    ]


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
def test_sweep_survives_a_whole_group_sigterm_and_a_killed_trial_worker_in_its_rerun(storage, tiny_lm):
    """A VM shutdown mid-sweep: SIGTERM to every process (driver, Ray's daemons, the trials' Train
    workers). Each running trial commits its step, the sweep exits 75, the rerun restores it. In the
    rerun a trial's only Train worker is SIGKILLed after its first commit there: it is retried from
    that checkpoint and counted as a reclaim. The sweep is of the SFT task by eval_loss (mode min):
    it ends with results and a best experiment that names the task."""
    args = sft_sweep_args(storage, tiny_lm)
    log, run_dir = storage / "log.txt", storage / "reclaimed"
    proc = launch(args, log, module="pipelines.sweep")
    try:
        wait_for(lambda: first_checkpoint(run_dir), proc, timeout=600, what="a trial checkpoint")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    noticed = {t.name: [e for e in events(t) if e["kind"] == "preempted"] for t in trial_dirs(run_dir)}
    assert any(noticed.values()) and "running trials committed; exit 75" in log.read_text()
    [pre] = [e for e in events(run_dir) if e["kind"] == "preempted"]  # the sweep's own: its trials only
    assert 0 < pre["trials_running"] <= 2 and pre["trials_committed"] == pre["trials_running"], pre
    committed = {  # what each trial had committed when the sweep exited
        t.name: max(e["step"] for e in events(t) if e["kind"] == "checkpoint")
        for t in trial_dirs(run_dir)
        if any(e["kind"] == "checkpoint" for e in events(t))
    }
    assert committed and not (run_dir / "results.csv").exists()

    rerun_ts = time.time()
    proc = launch(args, log, module="pipelines.sweep")
    try:
        ckpt = wait_for(lambda: first_checkpoint(run_dir, rerun_ts), proc, timeout=600, what="a rerun commit")
        killed_ts = time.time()
        os.kill(ckpt["pid"], signal.SIGKILL)  # that trial's only Train worker, mid-trial
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert "restoring sweep" in log.read_text()
    rows = results(run_dir)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}, rows
    history = {t.name: kinds(t) for t in trial_dirs(run_dir)}
    assert len(history) == 2
    for trial, seen in history.items():
        assert seen.count("finish") == 1, (trial, seen)

    # The killed worker: retried from its checkpoint (not from step 0), counted as a reclaim.
    killed = ckpt["trial"].name
    retry = [e for e in events(ckpt["trial"]) if e["kind"] in ("start", "resume") and e["ts"] >= killed_ts]
    assert retry and retry[0]["kind"] == "resume" and retry[0]["step"] >= ckpt["step"], (ckpt, retry)
    assert "start" not in [e["kind"] for e in retry], retry
    resumes = [e for e in events(ckpt["trial"]) if e["kind"] == "resume"]
    row = next(r for r in rows if r["trial"] == killed)
    assert int(row["reclaims"]) == len(resumes) > sum(e["ts"] < killed_ts for e in resumes), (row, resumes)

    def restarts(trial: str) -> list[dict]:
        """A trial's start and resume events, less the killed worker's retry."""
        seen = [e for e in events(run_dir / "trials" / trial) if e["kind"] in ("start", "resume")]
        return [e for e in seen if trial != killed or e["ts"] < killed_ts]

    for trial, step in committed.items():  # no trial with a checkpoint started over
        seen = restarts(trial)
        assert [e["kind"] for e in seen].count("start") == 1, (trial, seen)
        assert seen[1]["kind"] == "resume" and seen[1]["step"] >= step, (trial, step, seen)
    assert any(p[0]["saved"] for p in noticed.values() if p)  # the trial that was training committed
    for trial, [pre] in ((t, p) for t, p in noticed.items() if p):  # nothing lost: from the notice's step
        seen = restarts(trial)
        if pre["saved"] or pre["committed"] is not None:  # its notice's commit, or one just before
            resumed = next(e for e in seen if e["kind"] == "resume")
            assert resumed["step"] == (pre["step"] if pre["saved"] else pre["committed"]), (trial, pre)
        else:  # noticed in its start-up, before a step: nothing to save or lose; it starts again
            assert pre["committed"] is None and trial not in committed, (trial, pre)
            assert [e["kind"] for e in seen] == ["start", "start"], (trial, seen)

    assert all(float(r["eval_loss"]) > 0 for r in rows)
    best = min(rows, key=lambda r: float(r["eval_loss"]))
    text = (run_dir / "best_experiment.yaml").read_text()
    assert text.startswith("# @package _global_") and "experiment: best-reclaimed" in text
    assert f"Best trial {best['trial']}" in text and "SFTTask" in text  # the task travels with it
    assert (storage / "exp" / "best-reclaimed.yaml").read_text() == text
    assert (run_dir / "metric.png").read_bytes()[:4] == b"\x89PNG"
    assert "| trial |" in (run_dir / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
def test_asha_stops_the_worse_trial_of_the_encoder_sweep_early(storage):
    """`make sweep`'s own kind: the encoder sweep, ranked by loss, with ASHA. One trial at a time
    and a grid over lr only, so the order is fixed: a trial that learns (lr 1e-3), then one that
    does not (lr 1e-9, the same batches and start). ASHA compares the second with the first at its
    rungs (steps 5 and 10) and stops it there; the first runs to the end and is the best."""
    args = [*TINY, "~sweep.space.model", "~sweep.space.trainer.warmup_steps", "~sweep.space.trainer.lr"]
    args += ["+sweep.space.trainer.lr.grid=[0.001,1e-9]", "sweep.num_trials=1", "sweep.concurrency=1"]
    args += ["sweep.grace_steps=5", f"storage.root={storage}", "run.name=asha"]
    args += [f"sweep.export_dir={storage}/exp"]
    log, run_dir = storage / "log.txt", storage / "asha"
    proc = launch(args, log, module="pipelines.sweep")
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    learns, frozen = sorted(results(run_dir), key=lambda r: -float(r["trainer.lr"]))
    assert float(learns["trainer.lr"]) == 0.001 and float(frozen["trainer.lr"]) == 1e-9
    assert learns["status"] == "finished" and int(learns["step"]) == 20, learns
    assert frozen["status"] == "stopped_early" and int(frozen["step"]) in (5, 10), frozen
    assert float(frozen["loss"]) > float(learns["loss"])
    stopped = run_dir / "trials" / frozen["trial"]
    steps = [e["step"] for e in events(stopped) if e["kind"] == "checkpoint"]
    # stopped, not finished: a few more steps may run while Tune ends the trial's actors
    assert steps and max(steps) < 20 and "finish" not in kinds(stopped), steps
    text = (run_dir / "best_experiment.yaml").read_text()
    assert f"Best trial {learns['trial']}" in text and "lr: 0.001" in text


@pytest.mark.parametrize(
    "override, expected",
    [
        ("+sweep.space.trainer.lrr.choice=[1,2]", "sweep.space.trainer.lrr: unknown key"),
        ("+sweep.space.trainer.batch_size.normal=[1,2]", "expected one distribution"),
        ("sweep.space.trainer.lr.loguniform=[1e-3,1e-5]", "expected low <= high"),
        ("sweep.space.model.scale.uniform=[1]", "expected [low, high]"),
        ("sweep.space.trainer.lr.loguniform=[0,1]", "expected low > 0"),
        ("sweep.scheduler=hyperband", "sweep.scheduler='hyperband': expected one of asha, none"),
        ("sweep.metric=recall_at_1", "for ASHA"),
        ("+sweep.space.trainer.batch_size.grid=[4,8]", None),  # valid with random search
    ],
)
def test_bad_search_space_is_one_line_and_exit_2_before_ray(override, expected, capsys):
    from pipelines.sweep import main
    from spotrun.jobs.sweep.config import register, validate_sweep

    if expected is None:  # the valid case: passes validation (not run: that needs Ray)
        from spotrun.core.config import compose

        register()
        cfg = compose("sweep", [*TINY, override], str(REPO / "conf"))
        assert "trainer.batch_size" in validate_sweep(cfg)
        assert main([*TINY, override, "sweep.search=optuna"]) == 2
        assert "random when the space has grid keys" in capsys.readouterr().err
        return
    assert main([*TINY, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spotrun: config error: sweep."), err
    assert expected in err[0]
    assert not ray.is_initialized()


def test_tiny_sweep_composes_from_the_finetune_tiny_experiment():
    from spotrun.core.config import compose
    from spotrun.jobs.sweep.config import register

    register()
    cfg = compose("sweep", TINY, str(REPO / "conf"))
    assert cfg.run.job == "sweep" and cfg.experiment == "tiny" and cfg.sweep.num_trials == 4
    assert cfg.sweep.scheduler == "asha" and cfg.sweep.metric == "loss" and cfg.sweep.grace_steps == 10
    assert cfg.data.max_length == 24 and cfg.trainer.batch_size == 4  # from conf/experiment/tiny.yaml
    assert set(cfg.sweep.space.trainer) == {"lr", "warmup_steps"}
