"""A lease racer in its own process: imports only the storage layer (a spawned child imports this
module, not the test module with its torch-heavy imports)."""

from __future__ import annotations

from spotrun.core.storage import open_storage


def create(root: str, path: str, i: int, go, out) -> None:
    go.wait()
    out.put((i, open_storage(root).create_exclusive(path, f"racer {i}".encode())))
