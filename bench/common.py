"""Helpers shared by the benchmarks: run names, events.jsonl, process trees, tables, results JSON."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import signal
import subprocess
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def read_events(storage_root: str, run_name: str) -> list[dict]:
    """Complete lines of <root>/<run>/events.jsonl (a half-written last line is skipped)."""
    path = Path(storage_root, run_name, "events.jsonl")
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil (ray/thirdparty_files), put on sys.path by `import ray`
        import ray  # noqa: F401

        psutil = importlib.import_module("psutil")
    return psutil


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything it started: its
    descendants, its process group, and whatever else is left in its session (reparented)."""
    psutil = _psutil()
    try:
        root = psutil.Process(proc.pid)
        procs = {root, *root.children(recursive=True)}
    except psutil.NoSuchProcess:
        procs = set()
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == proc.pid:
                procs.add(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    from spotrun.core.procs import still_running  # zombies left to init count as ended

    still_running(list(procs), timeout=15)
    proc.wait(timeout=15)


def busy_note(loads: list[float]) -> str:
    """How busy the machine was (1-minute load average); a warning when other work shared it."""
    note = f"1-min load average {min(loads)}-{max(loads)} on {os.cpu_count()} cores"
    if max(loads) <= (os.cpu_count() or 1):
        return note + ": a quiet machine"
    return note + ": other work shared the machine; differences of 10-20 % can be noise, re-run when quiet"


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    """A table via `rich` when installed, else aligned plain text."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
        print(f"\n{title}")
        for row in [headers, ["-" * w for w in widths], *cells]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # a pipe would get 80 columns


def write_results(name: str, data: dict) -> Path:
    """bench/results/<name>.json, with the host and time the numbers were taken on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    host = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    path = RESULTS / f"{name}.json"
    payload = {"bench": name, "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host, **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
