"""What a relaunch may change and what it may not (spotrun.jobs.finetune.resume): the fingerprint a
checkpoint records, compared in-process. The end-to-end refusal: test_adapt.py; a resume at another
world size covering every sample once: tests/ops/test_chaos.py (node loss)."""

from __future__ import annotations

import pytest
from conftest import REPO

from spotrun.core.config import compose
from spotrun.jobs.finetune.resume import fingerprint, refusal

BASE = ["experiment=tiny", "trainer.num_workers=[1,2]"]


def fp(*overrides: str) -> dict:
    return fingerprint(compose("finetune", [*BASE, *overrides], str(REPO / "conf")))


@pytest.mark.parametrize(
    "override",
    ["trainer.num_workers=1", "trainer.max_steps=500", "checkpoint.every_steps=3", "data.eval_size=7"],
)
def test_an_elastic_or_longer_relaunch_resumes(override):
    assert refusal("r", fp(), fp(override)) is None


def test_a_relaunch_that_changes_what_trains_is_refused_naming_the_key():
    line = refusal("r", fp(), fp("trainer.lr=0.5"))
    assert line.startswith("run.name='r': its checkpoints were made with other settings (trainer.lr: ")
    assert "\n" not in line and line.endswith("expected the same values to resume it, or a new run.name")


def test_a_relaunch_of_the_same_settings_skips_the_parts_and_model_checks(tmp_path, monkeypatch):
    """A first launch finds the task, optimizer and schedule and reads the model's config
    (transformers, ~2-4 s); a relaunch whose newest commit has its very fingerprint only checks the
    model folder is there: an earlier attempt built all of it. (A changed setting is refused: above.)"""
    import json

    from conftest import TINY_MODEL_ARGS

    from spotrun.core.storage import open_storage
    from spotrun.jobs.finetune import preflight as pf
    from spotrun.recovery.checkpoint import CheckpointStore

    def tripwire(*_):
        raise AssertionError("checked again")

    monkeypatch.setattr(pf, "check_parts", tripwire)
    args = ["experiment=tiny", *TINY_MODEL_ARGS, f"storage.root={tmp_path}", "run.name=r"]
    cfg = compose("finetune", args, str(REPO / "conf"))
    with pytest.raises(AssertionError, match="checked again"):
        pf.preflight(cfg, str(REPO))  # a first launch
    store = CheckpointStore(open_storage(str(tmp_path)), "r")
    store.write(8, {"state.json": json.dumps({"step": 8, "fingerprint": fingerprint(cfg)}).encode()})
    assert pf.preflight(cfg, str(REPO)) == ("r", TINY_MODEL_ARGS[0].split("=", 1)[1])  # resumed
