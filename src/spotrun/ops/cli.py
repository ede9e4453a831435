"""`spotrun <command> ...`: the commands around the pipelines.

spotrun launch finetune|sweep|embed [--dryrun] [key=value ...]   submit a SkyPilot managed job
spotrun chaos [options]                                          reclaim a run on purpose, report
spotrun report RUN [options]                                     goodput and cost of a run
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"launch": "spotrun.ops.launch", "chaos": "spotrun.ops.chaos", "report": "spotrun.ops.report"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return importlib.import_module(COMMANDS[args[0]]).main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
