"""Training state <-> (tensors for safetensors, plain data for JSON). Nothing here pickles.

A checkpoint is a `states` mapping (name -> Stateful component, torchtitan style): `snapshot` asks
each component for its tensors and JSON data, `restore` hands them back. `<name>.safetensors` holds
a component's tensors, state.json["states"][name] its data.

Optimizer state is flattened to `"<param index>.<key>"` tensors plus JSON param groups; RNG states of
torch, numpy and Python are split the same way, one entry per rank.
"""

from __future__ import annotations

import random
from typing import Protocol

import numpy as np
import torch


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: (tensors, json-able)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = meta["python"]
    random.setstate((version, tuple(state), py_gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----- stateful components: each saves and loads itself; a checkpoint is one `states` mapping -----
class Stateful(Protocol):
    def save(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors for `<name>.safetensors`, JSON-able data for state.json). May be a collective."""

    def load(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Put what `save()` returned back."""


def snapshot(states: dict[str, Stateful]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict]]:
    """(tensor groups by name, JSON data by name). Every rank calls it (a component may gather)."""
    groups, metas = {}, {}
    for name, component in states.items():
        tensors, metas[name] = component.save()
        if tensors:  # no empty files: a component of plain data lives in state.json alone
            groups[name] = tensors
    return groups, metas


def restore(states: dict[str, Stateful], files: dict[str, bytes], metas: dict[str, dict]) -> None:
    """Load every component from a checkpoint's files; a component the checkpoint lacks is an error."""
    from spotrun.recovery.checkpoint import bytes_to_tensors

    missing = [name for name in states if name not in metas]
    if missing:
        raise ValueError(f"checkpoint holds no state for {', '.join(missing)}")
    for name, component in states.items():
        data = files.get(f"{name}.safetensors")
        component.load(bytes_to_tensors(data) if data else {}, metas[name])


class OptimizerState:
    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def save(self):
        return optimizer_to_flat(self.optimizer)

    def load(self, tensors, meta) -> None:
        optimizer_from_flat(self.optimizer, tensors, meta)


class SchedulerState:
    def __init__(self, scheduler):
        self.scheduler = scheduler

    def save(self):
        return {}, self.scheduler.state_dict()

    def load(self, tensors, meta) -> None:
        self.scheduler.load_state_dict(meta)


class RNGState:
    """Every rank's RNG streams (gathered to one checkpoint). At another world size each rank starts
    a fresh, deterministic stream instead (the data order does not depend on it)."""

    def __init__(self, rank: int, world: int, seed: int, step_of):
        self.rank, self.world, self.seed, self.step_of = rank, world, seed, step_of

    def save(self):
        import torch.distributed as dist

        mine, meta = capture_rng()
        gathered = [None] * self.world
        dist.all_gather_object(gathered, ({k: v.tolist() for k, v in mine.items()}, meta))
        tensors = {
            f"{r}.{k}": torch.tensor(v, dtype=mine[k].dtype)
            for r, (ts, _) in enumerate(gathered)
            for k, v in ts.items()
        }
        return tensors, {"world_size": self.world, "ranks": {str(r): m for r, (_, m) in enumerate(gathered)}}

    def load(self, tensors, meta) -> None:
        if meta["world_size"] != self.world:
            seed_everything(self.seed + 1000 * self.step_of() + self.rank)
            return
        r = str(self.rank)
        restore_rng(
            {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(r + ".")}, meta["ranks"][r]
        )
