"""Hyperparameter sweep with Ray Tune: every trial is a fine-tune that resumes by itself.

    python -m pipelines.sweep [experiment=tiny] [sweep.num_samples=8] [run.name=my-sweep] ...
    python -m pipelines.sweep --help            # config groups and options; --cfg job, --info, -m

Exit codes: 0 finished, 1 failed, 2 bad input (nothing started), 75 preempted (relaunch me).
"""

import time

STARTED = time.time()  # the attempt's start: the report counts start-up from here

from spotrun.recovery import shield  # noqa: E402 - stdlib only: armed before the slow imports

if __name__ == "__main__":  # (not when a test imports main): this process and all it starts
    shield.arm()  # a notice during start-up is a notice, not a death

from spotrun.jobs.sweep.driver import KIND  # noqa: E402
from spotrun.recovery import contract, hydra_app  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """A Hydra app (--help, --cfg job, -m ...): each run it describes goes through the spot contract."""
    return hydra_app.main(KIND, argv, lambda overrides: contract.main(KIND, overrides, started_ts=STARTED))


if __name__ == "__main__":
    hydra_app.exit(main())
