"""Where the template's own files live: the repository root, its conf/ and sky/ folders."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[3])  # src/spotrun/core/paths.py -> the repository
CONF_DIR = f"{REPO_ROOT}/conf"
SKY_DIR = f"{REPO_ROOT}/sky"
PRICES = f"{CONF_DIR}/prices.yaml"
