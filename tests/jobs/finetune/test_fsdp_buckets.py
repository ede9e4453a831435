"""trainer.parallel=fsdp (FSDP2 on CPU/gloo) on the tiny causal LM. On local disk, one uninterrupted
run: each rank writes its own DCP shard file into the step folder (no rank gathers the model) and
the manifest hashes them. With the storage root on the GCS server: shards staged locally, uploaded
by the rank that wrote them, SIGKILL mid-run, a relaunch that downloads them again, bit-identical
to the local run (storage changes no number). The storage layer is the same for every bucket
(pyarrow.fs); S3 is exercised end to end by tests/core/test_storage_buckets.py."""

from __future__ import annotations

import json

import pytest
from conftest import adapter, kill_tree, launch, lm_args, run, wait_for
from safetensors.torch import load

from spotrun.core.storage import open_storage
from spotrun.recovery.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow
FSDP = ["trainer.parallel=fsdp"]
SHARDS = {".metadata", "__0_0.distcp", "__1_0.distcp"}


@pytest.fixture(scope="module")
def fsdp_reference(tiny_lm, tmp_path_factory):
    """One uninterrupted FSDP run on local disk (the shards written straight into the step folders)."""
    root = tmp_path_factory.mktemp("fsdp-ref")
    log = root / "log.txt"
    assert run(lm_args(tiny_lm, str(root), "ref", FSDP), log, timeout=900) == 0, log.read_text()[-3000:]
    return root / "ref"


def test_fsdp_checkpoints_are_one_shard_per_rank_and_match_ddp_closely(fsdp_reference, lm_reference):
    """FSDP reduces gradients and clips their norm in another order than DDP: the adapter matches the
    DDP run closely, not bit for bit."""
    for ckpt in (fsdp_reference / "checkpoints").iterdir():
        listed = set(json.loads((ckpt / "manifest.json").read_text())["files"])
        assert listed == {"rng.safetensors", "state.json", *(f"dcp/{n}" for n in SHARDS)}  # shards hashed
        assert {p.name for p in (ckpt / "dcp").iterdir()} == SHARDS
    a, b = adapter(lm_reference), adapter(fsdp_reference)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, worst


@pytest.mark.timeout(1800)
def test_fsdp_on_a_bucket_sigkilled_then_relaunched_is_bit_identical(
    gs_server, tiny_lm, fsdp_reference, tmp_path, monkeypatch
):
    env = gs_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = open_storage(gs_server.root)
    name, log = "killed-fsdp", tmp_path / "log.txt"
    store = CheckpointStore(storage, name)
    proc = launch(lm_args(tiny_lm, gs_server.root, name, [*FSDP, "debug.step_sleep_s=1.0"]), log, env)
    try:
        wait_for(lambda: 2 in store.committed_steps(), proc, timeout=900, what="a committed FSDP step")
    finally:
        kill_tree(proc)
    step = store.committed_steps()[-1]
    assert "state.json" in store.read(step)  # verified: every file, DCP shards too, by its sha256
    folder = storage.path(name, "checkpoints", f"step-{step:08d}")
    listed = json.loads(storage.read_bytes(f"{folder}/manifest.json"))["files"]
    assert {f"dcp/{n}" for n in SHARDS} <= set(listed), listed
    assert run(lm_args(tiny_lm, gs_server.root, name, FSDP), log, timeout=900, env=env) == 0, log.read_text()[
        -3000:
    ]
    a = load((fsdp_reference / "final" / "adapter_model.safetensors").read_bytes())
    b = load(storage.read_bytes(storage.path(name, "final/adapter_model.safetensors")))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
