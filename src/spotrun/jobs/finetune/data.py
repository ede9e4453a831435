"""Pairs from Hugging Face `datasets`, and exact, O(1)-resumable sampling across any world size.

The position in the data is (epoch, offset): how many samples of the epoch's permutation the whole
group has consumed. A step takes the next `batch_size * world_size` samples of that permutation, and
rank r takes its r-th share, so a resume (at any world size) jumps straight to `offset`: no batch is
replayed, none is skipped, and every sample of an epoch is seen exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}  # extension -> loader


def builder_for(path: str) -> str | None:
    """The `datasets` loader of a file by its extension; `.gz` ones too (datasets decompresses)."""
    name = path[: -len(".gz")] if path.endswith(".gz") else path
    return BUILDERS.get(os.path.splitext(name)[1].lstrip("."))


def load_pairs(data_cfg, repo_root: str, split: str) -> tuple[list[str], list[str]]:
    """(queries, docs) of one split, read through `datasets` from local files or a hub name."""
    from datasets import load_dataset

    files = data_cfg.train_files if split == "train" else data_cfg.eval_files
    if files is not None:
        paths = [p if os.path.isabs(p) else os.path.join(repo_root, p) for p in files.split(",")]
        ds = load_dataset(builder_for(paths[0]), data_files=paths, split="train")
    else:
        ds = load_dataset(data_cfg.hub_name, split=split)
    return list(ds[data_cfg.query_field]), list(ds[data_cfg.doc_field])


@dataclass
class Position:
    epoch: int = 0
    offset: int = 0  # samples of this epoch's permutation already consumed by the whole group


class ExactSampler:
    """Deterministic per-epoch permutations; `step()` is a pure function of (position, rank, world)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        if num_samples < 1:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._cache[1]

    def step(self, pos: Position, rank: int, world: int) -> tuple[np.ndarray, Position]:
        """This rank's sample ids for the step at `pos`, and the position after the step.

        The epoch's last step shares out what remains (fewer than a full global batch); a remainder
        smaller than the world size is carried to no one, so each rank always gets >= 1 sample.
        """
        if self.n - pos.offset < world:
            pos = Position(pos.epoch + 1, 0)
        take = min(self.batch_size * world, self.n - pos.offset)
        ids = self.permutation(pos.epoch)[pos.offset : pos.offset + take]
        mine = np.array_split(ids, world)[rank]
        return mine, Position(pos.epoch, pos.offset + take)
