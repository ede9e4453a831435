"""Hyperparameter sweep over the fine-tune job with Ray Tune; rerun the same command to resume it.

    python -m pipelines.sweep [experiment=tiny] [sweep.search=optuna] [sweep.num_trials=16] ...

Exit codes: 0 finished, 1 a trial failed for good, 2 bad input (nothing started), 75 preempted (relaunch me).
"""

from __future__ import annotations

import sys

from spotrun.core.config import EXIT_BAD_INPUT, ConfigError, compose, validate
from spotrun.core.paths import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    try:
        from spotrun.jobs.sweep.config import register, validate_sweep

        register()
        cfg = compose("sweep", overrides, conf_dir=f"{REPO_ROOT}/conf")
        validate(cfg, REPO_ROOT)
        found = validate_sweep(cfg)
        from spotrun.jobs.finetune.preflight import preflight

        run_name, model_path = preflight(cfg, REPO_ROOT)
    except ConfigError as e:
        print(f"spotrun: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from spotrun.jobs.sweep.driver import run_sweep

    return run_sweep(cfg, REPO_ROOT, run_name, model_path, found)


if __name__ == "__main__":
    sys.exit(main())
