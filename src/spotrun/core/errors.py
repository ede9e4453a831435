"""Exit codes and the user-facing error every job and command shares.

A user mistake is a `ConfigError` with one line: the key, the value, what was expected. `user_errors`
turns it into that line on stderr and exit 2, before any cluster starts or money is spent.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# "Preempted, relaunch me": EX_TEMPFAIL from sysexits.h. Never 0, or a managed-job controller would
# mark the job succeeded. sky/*.yaml lists it under job_recovery.recover_on_exit_codes.
EXIT_PREEMPTED = 75
# "A newer attempt of this run holds the lease": the managed-job controller already runs that one.
EXIT_SUPERSEDED = 76


class ConfigError(ValueError):
    """A user-facing configuration mistake, printed as one line."""


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise `ConfigError("key=value: expected ...")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def user_errors(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point: a ConfigError becomes one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            print(f"spotrun: config error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper
