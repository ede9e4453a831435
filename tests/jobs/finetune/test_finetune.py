"""The real fine-tune pipeline on a real local Ray cluster (2 CPU workers), reclaimed with real signals.

One uninterrupted reference run is shared; every reclaimed run must end with bit-identical weights.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import (
    args_for,
    events,
    run,
)

pytestmark = pytest.mark.slow


def test_tiny_run_writes_the_output_contract(reference):
    kinds = Counter(e["kind"] for e in events(reference))
    assert kinds["start"] == 1 and kinds["finish"] == 1 and kinds["checkpoint"] >= 4
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == [
        "step-00000016",
        "step-00000024",
        "step-00000032",
    ]  # checkpoint.keep=3
    metrics = json.loads((reference / "final" / "metrics.json").read_text())
    assert metrics["step"] == 40
    assert metrics["after"]["recall_at_1"] >= metrics["before"]["recall_at_1"]
    model_bytes = (reference / "final" / "model.safetensors").stat().st_size
    for e in events(reference):
        if e["kind"] == "checkpoint":  # every weight and both AdamW moments, written off the loop
            assert e["bytes"] > 2.5 * model_bytes and e["blocked_s"] < e["write_s"]
    for ckpt in (reference / "checkpoints").iterdir():
        names = set(json.loads((ckpt / "manifest.json").read_text())["files"])
        assert names == {"model.safetensors", "optim.safetensors", "rng.safetensors", "state.json"}
    from transformers import AutoModel

    AutoModel.from_pretrained(reference / "final")  # final/ is a loadable Hugging Face model


def test_relaunching_a_finished_run_exits_at_once(reference, tmp_path):
    launches = [e for e in events(reference) if e["kind"] == "launch"]
    assert run(args_for(reference.parent, "ref"), tmp_path / "log.txt", timeout=120) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "already finished" in log
    # no attempt (its `launch` event comes before Ray starts): no lease, no cluster, no cost
    assert [e for e in events(reference) if e["kind"] == "launch"] == launches


# SIGKILL (and SIGKILL during a checkpoint write) -> relaunch -> bit-identical weights: tests/test_chaos.py
# reclaims one run four ways and compares it with the same `reference`.


# A world-size change (2 workers -> 1, resumed from a checkpoint) covers every sample exactly once
# per epoch: tests/ops/test_chaos.py::test_node_loss_..., on a real node loss.
