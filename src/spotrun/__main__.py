"""`python -m spotrun ...` is the `spotrun` command."""

import sys

from spotrun.ops.cli import main

sys.exit(main())
