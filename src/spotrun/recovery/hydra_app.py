"""Every pipeline is a Hydra app: Hydra's own command line around the spot contract.

    python -m pipelines.finetune --help                       # config groups, options, usage
    python -m pipelines.finetune --cfg job trainer.lr=3e-4    # the composed config; nothing starts
    python -m pipelines.finetune -m trainer.lr=1e-4,3e-4      # one run per point, each resumes by itself

Before Hydra sees the command line, each run (each point of a multirun) is composed and checked
with the compose API (`contract.load`): a mistake is one line and exit 2 before anything starts,
never Hydra's multi-line report and exit 1. Hydra writes its own folder under .spotrun/hydra/
(conf/<job>.yaml `hydra:`) and never changes the working directory. A multirun point gets its own
run name, `<run name>-<swept values>`, so two points never share a run folder and a rerun of the same
command finds each point's checkpoints again.
"""

from __future__ import annotations

import gc
import hashlib
import re
import sys
from collections.abc import Callable

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from spotrun.core.config import RUN_NAME_RE, job_overrides
from spotrun.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, ConfigError
from spotrun.core.errors import require as _require
from spotrun.recovery import contract, shield
from spotrun.recovery.runtime import resolve_run_name

# Worst first: the exit code of a multirun is its worst point's (a preempted point: relaunch it all;
# the finished points then cost nothing).
SEVERITY = (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PREEMPTED)
NO_RUN = ("help", "hydra_help", "shell_completion")  # flags that compose nothing to check


def main(kind: contract.JobKind, argv: list[str] | None, work: Callable[[list[str]], int]) -> int:
    """Check the command line, then run it as Hydra would. `work(overrides)` is one run's entry point
    (the contract); the exit code is its, or the worst of a multirun's points."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = get_args_parser().parse_args(argv)
        overrides = _checked(kind, args)
    except SystemExit as e:  # argparse: an unknown flag (its usage line, exit 2)
        return int(e.code or 0)
    except ConfigError as e:
        print(f"spotrun: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    swept = _swept_keys(overrides) if args.multirun else set()
    codes: list[int] = []
    task = _task(work, swept, codes)
    return _hydra(kind, task, [*_flags(argv, args.overrides), *overrides], codes)


def exit(code: int) -> None:
    """End the pipeline's process with `code`. Its heap (torch, transformers, Ray, Hydra: millions of
    objects) is frozen first, so Python's last garbage collection at exit skips it: ~2 s of a 2-core
    machine at the end of every attempt (py-spy: `gc_collect_main` after `main` returned). Everything
    else of a normal exit still runs (atexit handlers, joining threads, flushing)."""
    gc.freeze()
    sys.exit(code)


def _checked(kind: contract.JobKind, args) -> list[str]:
    """The overrides as Hydra should get them; every run they describe composed and checked."""
    for flag in ("config_path", "config_name", "config_dir"):
        _require(
            getattr(args, flag) is None,
            f"--{flag.replace('_', '-')}",
            getattr(args, flag),
            "no such flag: configs live in conf/ (add a file to a group there)",
        )
    overrides = job_overrides(kind.name, list(args.overrides), kind.conf_dir)
    if any(getattr(args, f) for f in NO_RUN):
        return overrides
    _parsed(overrides)  # a malformed override: named, before any compose
    points = _points(overrides) if args.multirun else [overrides]
    swept = _swept_keys(overrides) if args.multirun else set()
    for point in points:
        cfg = contract.load(kind, point)
        if args.multirun:
            contract.load(kind, named(point, swept, resolve_run_name(cfg)))
    return overrides


def _parsed(overrides: list[str]):
    """Hydra's parse of the overrides; a ConfigError naming the first one it cannot read."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException as e:
            raise ConfigError(f"{o}: {' '.join(str(e).split())[:240]}") from None
    return parser.parse_overrides(overrides)


def _points(overrides: list[str]) -> list[list[str]]:
    """Every combination a multirun of `overrides` runs (Hydra's basic sweeper, one batch)."""
    return [p for batch in BasicSweeper.split_arguments(_parsed(overrides), None) for p in batch]


def _swept_keys(overrides: list[str]) -> set[str]:
    return {o.get_key_element() for o in _parsed(overrides) if o.is_sweep_override()}


def named(point: list[str], swept: set[str], base: str) -> list[str]:
    """The point's overrides with its own run name: `<base>-<key>-<value>_...` of the swept keys
    (run.name swept itself: that value). Shortened or made legal: a hash of the exact values keeps
    two points apart."""
    values = [o for o in point if o.split("=", 1)[0] in swept and o.split("=", 1)[0] != "run.name"]
    if not values:
        return point
    raw = "_".join(o.replace("=", "-") for o in values)
    text = re.sub(r"[^A-Za-z0-9._-]", "_", raw)
    name = f"{base}-{text}"
    if text != raw or len(name) > 128:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:119]}-{digest}"
    _require(bool(RUN_NAME_RE.fullmatch(name)), "run.name", name, "letters, digits, . _ - (max 128)")
    return [*(o for o in point if o.split("=", 1)[0] != "run.name"), f"run.name={name}"]


def _task(work: Callable[[list[str]], int], swept: set[str], codes: list[int]):
    """Hydra's task function: one run through the contract; its exit code goes to `codes`."""

    def task(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        point = list(HydraConfig.get().overrides.task)
        if shield.NOTICE.is_set():  # a notice ended an earlier point: the VM is going, start nothing
            codes.append(EXIT_PREEMPTED)
            return
        if swept:
            point = named(point, swept, resolve_run_name(cfg))
        codes.append(work(point))

    return task


def _flags(argv: list[str], overrides: list[str]) -> list[str]:
    """argv without its overrides (they are positional: the rest are Hydra's flags and values)."""
    rest = list(overrides)
    out = []
    for a in argv:
        if rest and a == rest[0]:
            rest.pop(0)
        else:
            out.append(a)
    return out


def _hydra(kind: contract.JobKind, task, argv: list[str], codes: list[int]) -> int:
    """Run `task` as `@hydra.main` on conf/<job>.yaml with `argv` as the command line."""
    import hydra

    kind.schema()
    from spotrun.core.config import register

    register()
    app = hydra.main(config_path=kind.conf_dir, config_name=kind.name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [saved[0], *argv]  # argv[0]: the name shell completion registers (Hydra reads it)
    try:
        app()
    except SystemExit as e:  # --help, --version, or Hydra's own error (already printed)
        if e.code not in (None, 0):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    finally:
        sys.argv = saved
    return next((c for c in SEVERITY if c in codes), max(codes, default=EXIT_OK))
