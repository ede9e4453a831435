"""FSDP checkpoints: DCP's pickled `.metadata` is read back without running code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from spotrun.jobs.finetune.fsdp import safe_reader


def test_real_dcp_metadata_loads_through_the_restricted_reader(tmp_path):
    state = {"w": torch.randn(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "step": 7}
    dcp.save(state, checkpoint_id=str(tmp_path), no_dist=True)
    meta = safe_reader(str(tmp_path)).read_metadata()
    assert set(meta.state_dict_metadata) >= {"w", "b"}
    out = {"w": torch.empty(4, 3), "b": torch.ones(3, dtype=torch.bfloat16), "step": 0}
    dcp.load(out, checkpoint_id=str(tmp_path), storage_reader=safe_reader(str(tmp_path)), no_dist=True)
    assert torch.equal(out["w"], state["w"]) and torch.equal(out["b"], state["b"])


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_planted_pickle_in_the_metadata_is_refused(tmp_path):
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path), no_dist=True)
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_reader(str(tmp_path)).read_metadata()
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def _global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-4 pickle bytes that call module.name(arg) on load (STACK_GLOBAL resolves dotted names)."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE

    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


PLANTED = [
    ("torch.distributed.checkpoint.filesystem", "os.system"),  # dotted: os.system via an allowed module
    ("torch.distributed.checkpoint.metadata", "os.system"),
    ("torch", "_C._dynamo.os.system"),
    ("builtins", "eval"),
    ("os", "system"),
    ("torch", "load"),  # in torch, but not a dtype/layout value
    ("torch.distributed.checkpoint.metadata", "dataclass"),  # lives there, but is dataclasses' function
    ("torch.distributed.checkpoint.metadata", "os"),
]


@pytest.mark.parametrize(("module", "name"), PLANTED, ids=lambda v: v)
def test_planted_globals_never_run(tmp_path, module, name):
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path), no_dist=True)
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(_global_call(module, name, f"touch {marker}"))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_reader(str(tmp_path)).read_metadata()
    assert not marker.exists()


def test_the_dotted_payload_is_real(tmp_path):
    """The bytes above do run code through a plain unpickler: the refusal is what stops them."""
    marker = tmp_path / "ran"
    pickle.loads(_global_call("torch.distributed.checkpoint.filesystem", "os.system", f"touch {marker}"))
    assert marker.exists()
