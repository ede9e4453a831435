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
