"""Where the template's own files live: the repository root, its conf/ and sky/ folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[3])  # src/spotrun/core/paths.py -> the repository
CONF_DIR = f"{REPO_ROOT}/conf"
SKY_DIR = f"{REPO_ROOT}/sky"
PRICES = f"{CONF_DIR}/prices.yaml"


def scratch_dir(repo_root: str, storage_uri: str, run_name: str) -> str:
    """This machine's scratch folder for one run (checkpoint staging, final/ before its upload, the
    logger's files): `.spotrun/<run name>-<hash of the storage root>`, so two runs of one name under
    two storage roots (two buckets, two test folders) never share it."""
    key = hashlib.sha256(storage_uri.encode()).hexdigest()[:8]
    return os.path.join(repo_root, ".spotrun", f"{run_name}-{key}")
