"""Fine-tune a pretrained model on Ray Train, resuming from the run's newest checkpoint by itself.

    python -m pipelines.finetune [experiment=tiny] [trainer.lr=3e-4] [run.name=my-run] ...

Exit codes: 0 finished, 1 failed, 2 bad input (nothing started), 75 preempted (relaunch me).
"""

from __future__ import annotations

import sys
import time

from spotrun.core.config import EXIT_BAD_INPUT, ConfigError, compose, validate
from spotrun.core.paths import REPO_ROOT

STARTED = time.time()  # the attempt's start (before Ray and torch load): the report counts start-up from here


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    try:
        cfg = compose("finetune", overrides, conf_dir=f"{REPO_ROOT}/conf")
        validate(cfg, REPO_ROOT)
        from spotrun.jobs.finetune.preflight import preflight

        run_name, model_path = preflight(cfg, REPO_ROOT)
    except ConfigError as e:
        print(f"spotrun: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from spotrun.jobs.finetune.driver import run_finetune

    return run_finetune(cfg, REPO_ROOT, run_name, model_path, started_ts=STARTED)


if __name__ == "__main__":
    sys.exit(main())
