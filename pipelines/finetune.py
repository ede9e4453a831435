"""Fine-tune a pretrained model on Ray Train, resuming from the run's newest checkpoint by itself.

    python -m pipelines.finetune [experiment=tiny] [trainer.lr=3e-4] [run.name=my-run] ...

Exit codes: 0 finished, 1 failed, 2 bad input (nothing started), 75 preempted (relaunch me).
"""

import sys
import time

STARTED = time.time()  # the attempt's start (before Ray and torch load): the report counts start-up from here

from spotrun.recovery import shield  # noqa: E402 - stdlib only: armed before the slow imports

shield.arm()  # a notice during start-up is a notice, not a death

from spotrun.jobs.finetune.driver import KIND  # noqa: E402
from spotrun.recovery import contract  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return contract.main(KIND, sys.argv[1:] if argv is None else argv, started_ts=STARTED)


if __name__ == "__main__":
    sys.exit(main())
