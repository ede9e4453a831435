"""Setup cost: a fresh venv of this project with pip vs with uv (cold and warm uv cache), and a no-op
re-setup (what a SkyPilot recovery on a disk that keeps the venv pays). Everything goes into a
temporary folder, never .venv.

    python -m bench.setup            # minutes (pip is capped at PIP_LIMIT_S), ~5 GB of temporary disk

pip installs as `make venv` did before uv (`pip install -e ".[dev]"`, this machine's pip.conf in
effect); uv as `make venv` does now (`uv pip install -r requirements.lock -e . --no-deps`); the no-op
re-setup runs sky/setup.sh twice on one venv and times the second run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, busy_note, print_table, write_results

UV_VERSION = "0.13.9"
PYTHON = os.environ.get("PYTHON", "python3")
PIP_LIMIT_S = float(os.environ.get("PIP_LIMIT_S", 1200))  # pip can backtrack for many minutes


def sh(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> float:
    """Seconds `cmd` took; raises with its output if it failed (TimeoutExpired past `timeout`)."""
    t0 = time.perf_counter()
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def uv_from() -> list[str]:
    """Where uv finds the CPU torch wheel (the Makefile's UV_FROM)."""
    if Path("/opt/wheels").is_dir():
        return ["--find-links", "/opt/wheels"]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def pip_venv(venv: Path) -> float | None:
    """Seconds, or None when pip had not finished within PIP_LIMIT_S."""
    t = sh([PYTHON, "-m", "venv", str(venv)])
    try:
        return t + sh([str(venv / "bin/pip"), "install", "-q", "-e", ".[dev]"], timeout=PIP_LIMIT_S)
    except subprocess.TimeoutExpired:
        return None


def uv_venv(venv: Path, cache: Path | None) -> float:
    env = {"UV_CACHE_DIR": str(cache)} if cache else None
    t = sh([PYTHON, "-m", "venv", str(venv)])
    t += sh([str(venv / "bin/pip"), "install", "-q", f"uv=={UV_VERSION}"])
    lock = ["-r", "requirements.lock", "-e", ".", "--no-deps"]
    return t + sh(
        [
            str(venv / "bin/uv"),
            "pip",
            "install",
            "-q",
            "--compile-bytecode",  # as the Makefile: without it every import compiles from source
            "--python",
            str(venv / "bin/python"),
            *uv_from(),
            *lock,
        ],
        env,
    )


def noop_resetup(tmp: Path) -> tuple[float, float]:
    """(first setup, second setup) of sky/setup.sh on one venv, with the dev/CI lock."""
    env = {
        "SPOTRUN_VENV": str(tmp / "sky-venv"),
        "SPOTRUN_LOCK": "requirements.lock",
        "SPOTRUN_SETUP_RECORD": str(tmp / "setup.json"),
    }
    flag, where = uv_from()  # sky/setup.sh passes no flags: uv reads the same from its environment
    env["UV_FIND_LINKS" if flag == "--find-links" else "UV_EXTRA_INDEX_URL"] = where
    first = sh(["bash", "sky/setup.sh"], env)
    return first, sh(["bash", "sky/setup.sh"], env)


def main() -> None:
    loads = [os.getloadavg()[0]]
    tmp = Path(tempfile.mkdtemp(prefix="spotrun-setup-bench-"))
    try:
        rows = {"uv, fresh venv, cold cache": uv_venv(tmp / "uv-cold", tmp / "uv-cache")}
        shutil.rmtree(tmp / "uv-cold")
        rows["uv, fresh venv, warm cache"] = uv_venv(tmp / "uv-warm", tmp / "uv-cache")
        shutil.rmtree(tmp / "uv-warm")
        loads.append(os.getloadavg()[0])
        first, again = noop_resetup(tmp)
        rows["sky/setup.sh, first (uv, user cache)"] = first
        rows["sky/setup.sh, no-op re-setup"] = again
        rows["pip, fresh venv"] = pip_venv(tmp / "pip")
        loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows["pip, fresh venv"] or PIP_LIMIT_S  # a pip that timed out: at least the limit
    more = "" if rows["pip, fresh venv"] else ">"
    print_table(
        "Setting up spotrun's venv",
        ["setup", "seconds", "pip / this"],
        [
            [k, "n/a" if v is None else f"{v:.1f}", f"{more}{base / (v or base):.1f}x"]
            for k, v in rows.items()
        ],
    )
    print(busy_note(loads))
    path = write_results("setup", {"seconds": rows, "load_avg": loads, "python": sys.version.split()[0]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
