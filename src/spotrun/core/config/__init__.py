"""The job's config: schemas (types and defaults), the checks Hydra cannot express, and composition.

Every user mistake becomes a `ConfigError` with one line: the key, the value, what was expected.
"""

from spotrun.core.config.checks import (
    check_fallback,
    check_local_package,
    parse_deadline,
    validate,
    worker_range,
)
from spotrun.core.config.compose import check_group_options, compose, job_overrides
from spotrun.core.config.schema import *  # noqa: F403 - the dataclasses, CLOUDS, RUN_NAME_RE
from spotrun.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_SUPERSEDED,
    ConfigError,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_SUPERSEDED",
    "ConfigError",
    "check_fallback",
    "check_group_options",
    "check_local_package",
    "compose",
    "job_overrides",
    "parse_deadline",
    "validate",
    "worker_range",
]
