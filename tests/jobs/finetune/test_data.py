"""Exact, O(1)-resumable sampling; the shipped stdlib pairs match what the miner produces."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import REPO

from spotrun.jobs.finetune.data import ExactSampler, Position
from spotrun.jobs.finetune.stdlib_pairs import mine, split


def consume(sampler: ExactSampler, pos: Position, world: int, steps: int):
    """Run `steps` group steps from `pos`; return the ids each step consumed (all ranks) and the end position."""
    seen = []
    for _ in range(steps):
        parts = []
        for rank in range(world):
            ids, nxt = sampler.step(pos, rank, world)
            assert len(ids) >= 1
            parts.append(ids)
        pos = nxt
        seen.append((pos.epoch if pos.offset else pos.epoch - 1, np.concatenate(parts)))
    return seen, pos


def test_ranks_partition_each_global_batch():
    s = ExactSampler(100, 4, seed=0)
    a, _ = s.step(Position(), 0, 2)
    b, nxt = s.step(Position(), 1, 2)
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert nxt == Position(0, 8)


@pytest.mark.parametrize("worlds", [(2, 1), (1, 3), (3, 2), (2, 2)])
def test_world_size_change_sees_every_sample_once_per_epoch(worlds):
    n = 60
    s = ExactSampler(n, 4, seed=3)
    first, pos = consume(s, Position(), worlds[0], 5)  # then "resize" and resume from `pos`
    rest, _ = consume(s, pos, worlds[1], 40)
    per_epoch = Counter()
    for epoch, ids in first + rest:
        if epoch == 0:
            per_epoch.update(ids.tolist())
    assert sorted(per_epoch) == list(range(n)) and set(per_epoch.values()) == {1}


def test_resume_is_a_jump_not_a_replay():
    s = ExactSampler(10_000_000, 8, seed=1)
    ids, _ = s.step(Position(epoch=0, offset=9_999_000), 0, 2)  # no iteration over consumed batches
    assert len(ids) == 8 and (ids == s.permutation(0)[9_999_000:9_999_008]).all()


def test_epochs_differ_and_are_deterministic():
    a, b = ExactSampler(50, 4, 7), ExactSampler(50, 4, 7)
    assert (a.permutation(1) == b.permutation(1)).all() and not (a.permutation(0) == a.permutation(1)).all()


def test_shipped_pairs_are_the_mined_pairs():
    import sysconfig
    from pathlib import Path

    train, held_out = split(mine(Path(sysconfig.get_paths()["stdlib"])))
    shipped = [json.loads(x) for x in (REPO / "data/stdlib_pairs/eval.jsonl").read_text().splitlines()]
    assert len(held_out) > 300 and len(train) > 3000
    assert {p["query"] for p in held_out} & {p["query"] for p in shipped}  # same stdlib family
    assert not {p["doc"] for p in train} & {p["doc"] for p in held_out}  # no doc in both splits
