"""trainer.parallel=fsdp with its storage root on the S3 and GCS servers: DCP shards staged locally,
uploaded by the rank that wrote them and hashed into the manifest; a SIGKILL mid-run and a relaunch
(the shards downloaded again) end bit-identical to an uninterrupted FSDP run (on local disk)."""

from __future__ import annotations

import json

import pytest
from conftest import kill_tree, launch, run, wait_for
from safetensors.torch import load

from spotrun.core.storage import open_storage
from spotrun.recovery.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow


def fsdp_args(tiny_lm, root: str, name: str, extra: list[str] = ()) -> list[str]:
    return [
        "experiment=llm_sft_tiny",
        "logger=none",
        f"model.name={tiny_lm}",
        "model.local_package=null",
        "model.gguf_file=null",
        "trainer.parallel=fsdp",
        "trainer.max_steps=8",
        "checkpoint.every_steps=2",
        f"storage.root={root}",
        f"run.name={name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def fsdp_reference(tiny_lm, tmp_path_factory):
    """One uninterrupted FSDP run on local disk (the shards written straight into the step folders):
    storage does not change a number, so it is the reference for the runs on both servers."""
    root = tmp_path_factory.mktemp("fsdp-ref")
    assert run(fsdp_args(tiny_lm, str(root), "ref"), root / "log.txt", timeout=900) == 0, (
        root / "log.txt"
    ).read_text()[-3000:]
    return root / "ref"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("server", ["s3_server", "gs_server"])
def test_fsdp_on_a_bucket_sigkilled_then_relaunched_is_bit_identical(
    server, request, tiny_lm, fsdp_reference, tmp_path, monkeypatch
):
    srv = request.getfixturevalue(server)
    env = srv.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = open_storage(srv.root)
    name, log = f"killed-{server}", tmp_path / "log.txt"
    store = CheckpointStore(storage, name)
    proc = launch(fsdp_args(tiny_lm, srv.root, name, ["debug.step_sleep_s=1.0"]), log, env)
    try:
        wait_for(lambda: 2 in store.committed_steps(), proc, timeout=900, what="a committed FSDP step")
    finally:
        kill_tree(proc)
    step = store.committed_steps()[-1]
    assert "state.json" in store.read(step)  # verified: every file, DCP shards too, by its sha256
    folder = storage.path(name, "checkpoints", f"step-{step:08d}")
    listed = json.loads(storage.read_bytes(f"{folder}/manifest.json"))["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= set(listed), listed
    assert run(fsdp_args(tiny_lm, srv.root, name), log, timeout=900, env=env) == 0, log.read_text()[-3000:]
    a = load((fsdp_reference / "final" / "adapter_model.safetensors").read_bytes())
    b = load(storage.read_bytes(storage.path(name, "final/adapter_model.safetensors")))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
