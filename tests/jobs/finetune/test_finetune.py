"""The real fine-tune pipeline on a real local Ray cluster (2 CPU workers), reclaimed with real signals.

One uninterrupted reference run is shared; every reclaimed run must end with bit-identical weights.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import (
    TINY,
    args_for,
    checkpoint_steps,
    events,
    kill_tree,
    launch,
    run,
    wait_for,
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


def test_world_size_change_keeps_exactly_once_coverage(storage):
    rows = [json.loads(x) for x in Path("data/stdlib_pairs/train.jsonl").read_text().splitlines()[:60]]
    data = storage / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        *TINY,
        f"storage.root={storage}",
        "run.name=elastic",
        f"data.train_files={data}",
        "debug.trace_samples=true",
        "trainer.max_steps=30",
        "checkpoint.every_steps=5",
        "debug.step_sleep_s=0.2",  # room to reclaim mid-run (the numbers stay the same)
    ]
    log = storage / "log.txt"
    proc = launch([*common, "trainer.num_workers=[1,2]"], log)  # elastic range; gets 2 here
    run_dir = storage / "elastic"
    wait_for(lambda: any(s >= 10 for s in checkpoint_steps(run_dir)), proc, what="checkpoint at step 10")
    kill_tree(proc)
    assert run([*common, "trainer.num_workers=1"], log) == 0, log.read_text()[-3000:]
    (resume,) = [e for e in events(run_dir) if e["kind"] == "resume"]
    assert resume["world_size"] == 1

    latest: dict[tuple, dict] = {}  # (world, step, rank) -> the last write wins (replayed steps)
    for trace in (run_dir / "trace").glob("rank*.jsonl"):
        rank = int(trace.stem[4:])
        for line in trace.read_text().splitlines():
            rec = json.loads(line)
            latest[(rec["world"], rec["step"], rank)] = rec
    by_epoch = defaultdict(Counter)
    for (world, step, _), rec in latest.items():
        if (world == 2 and step <= resume["step"]) or (world == 1 and step > resume["step"]):
            by_epoch[rec["epoch"]].update(rec["ids"])
    complete = [e for e in by_epoch if e < max(by_epoch)]
    assert len(complete) >= 2  # the resize happened inside epoch 0 or 1; both are complete
    for epoch in complete:
        assert sorted(by_epoch[epoch]) == list(range(60)), epoch
        assert set(by_epoch[epoch].values()) == {1}, epoch
