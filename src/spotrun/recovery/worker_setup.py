"""What every Ray worker process of a run runs first (Ray's `worker_process_setup_hook`).

Train's controller and its helper actors run it too, and import nothing else of spotrun: this module
imports the standard library only (a hook in spotrun.recovery.runtime cost each of them ~0.3 s of
imports: psutil, omegaconf, tenacity, spotrun's config)."""

from __future__ import annotations

import logging


def quiet_logs() -> None:
    """Ray Train logs each report at INFO, noise in a local cluster. transformers is quieted by the
    environment (spotrun.recovery.runtime)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
