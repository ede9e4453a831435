"""The job kinds spotrun ships. Each registers itself with the spot contract
(spotrun.recovery.contract.JobKind) when its driver module is imported; a new kind is one more line here
(or a `contract.register` call of its own, as the test tree's toy job does)."""

from __future__ import annotations

import importlib

from spotrun.core.errors import ConfigError

BUILTIN = {
    "finetune": "spotrun.jobs.finetune.driver",
    "sweep": "spotrun.jobs.sweep.driver",
    "embed": "spotrun.jobs.embed.driver",
}


def kind(name: str):
    """The registered JobKind called `name`; a one-line ConfigError for an unknown one."""
    from spotrun.recovery.contract import KINDS

    if name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in KINDS:
        known = sorted({*BUILTIN, *KINDS})
        raise ConfigError(f"job={name!r}: expected one of {', '.join(known)}")
    return KINDS[name]
