"""The GCS emulator the outage tests SIGKILL must come back with its data, as a real bucket does."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

SIZE = 8 << 20  # a write long enough that a kill lands inside it


def test_a_kill_mid_write_never_leaves_the_gcs_emulator_a_torn_file(tmp_path):
    """The emulator rewrites `.meta` (its index of every object) on each upload; a kill that landed in
    the middle left half a file, and the restarted emulator exited on it. tests/gcs_server.py writes
    whole files or nothing: after each kill, the file is one of the two versions, complete (without
    it the first kill already leaves a short file)."""
    child = (
        "import sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r}); import gcs_server\n"
        "from gcp_storage_emulator.storage import _FileStore\n"
        f"store = _FileStore(use_memory=False, root=Path({str(tmp_path)!r}))\n"
        f"a, b = b'a' * {SIZE}, b'b' * {SIZE}\n"
        "store.write_bytes('.meta', a); print('ready', flush=True)\n"
        "while True:\n    store.write_bytes('.meta', b); store.write_bytes('.meta', a)\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(random.uniform(0.05, 0.2))
        proc.kill()
        proc.wait()
        data = (tmp_path / ".meta").read_bytes()
        assert len(data) == SIZE and data.count(data[:1]) == SIZE, (len(data), data[:1])
