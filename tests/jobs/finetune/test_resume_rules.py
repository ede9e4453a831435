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
