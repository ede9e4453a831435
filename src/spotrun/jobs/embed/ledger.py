"""The shard ledger: exactly-once batch output that survives any number of reclaims.

The input (n rows) is cut into deterministic shards of `shard_rows` rows: shard i holds rows
[i * shard_rows, (i + 1) * shard_rows). Under `<storage root>/<run>/embeddings/`:

    plan.json               what the shards were cut from (rows, shard size, input fingerprint, model)
    shard-00000.parquet     columns `id` and `embedding` (a fixed-size list of float32)
    shard-00000.json        the shard's manifest, written last: the shard counts only once it exists
    manifest.json           written once every shard is committed and verified: the run is finished

A shard's parquet has a fixed name, so a shard computed twice (a reclaim between its data and its
manifest, or a Ray task retry) overwrites itself: never two copies. A restart lists the folder once
and skips every shard with a manifest without reading its data.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spotrun.core.config import ConfigError
from spotrun.core.storage import Storage

FOLDER = "embeddings"
PLAN_KEYS = ("rows", "shard_rows", "fingerprint", "text_column", "id_column", "model")


def shard_bounds(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard, in order; the last one may be short."""
    return [(s, min(s + shard_rows, rows)) for s in range(0, rows, shard_rows)]


def fingerprint(table: pa.Table) -> str:
    """A hash of the (id, text) table: a relaunch on changed input must not mix two corpora."""
    h = hashlib.sha256()
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
    return h.hexdigest()[:32]


class ShardLedger:
    """One run's shard ledger in a storage root (local folder or bucket)."""

    def __init__(self, storage: Storage, run_name: str):
        self.storage = storage
        self.dir = storage.path(run_name, FOLDER)

    def _path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def _read_json(self, name: str) -> dict | None:
        path = self._path(name)
        return json.loads(self.storage.read_bytes(path)) if self.storage.exists(path) else None

    def _write_json(self, name: str, obj: dict) -> None:
        self.storage.write_bytes(self._path(name), json.dumps(obj, indent=1, sort_keys=True).encode())

    def is_finished(self) -> dict | None:
        """The final manifest when every shard was committed and verified, else None."""
        return self._read_json("manifest.json")

    def ensure_plan(self, plan: dict) -> dict:
        """Record the plan on the first start; on a relaunch, refuse a plan that differs (another
        input, shard size or model would break exactly-once output)."""
        old = self._read_json("plan.json")
        if old is None:
            self._write_json("plan.json", {**plan, "created": time.time()})
            return plan
        for key in PLAN_KEYS:
            if old.get(key) != plan.get(key):
                raise ConfigError(
                    f"embed.{key}={plan.get(key)!r}: expected {old.get(key)!r} as when run "
                    f"{self.dir.rsplit('/', 2)[-2]!r} started (its shards were cut that way); "
                    "pick a new run.name to start over"
                )
        return old

    def done_shards(self) -> set[int]:
        """Shards with a committed manifest: one listing, no data read."""
        names = self.storage.list_files(self.dir)
        return {int(n[6:11]) for n in names if n.startswith("shard-") and n.endswith(".json")}

    def commit(self, shard: int, ids: pa.Array, vectors, compression: str) -> dict:
        """Write a shard's parquet, then its manifest (the commit point). Idempotent. A superseded
        attempt (a newer one holds the run's lease) writes neither."""
        self.storage.check_fence(fresh=True)
        dim = int(vectors.shape[1])
        flat = pa.array(vectors.astype("float32", copy=False).reshape(-1), type=pa.float32())
        table = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=None if compression == "none" else compression)
        data = buf.getvalue()
        self.storage.write_bytes(self._path(f"shard-{shard:05d}.parquet"), data)
        manifest = {
            "shard": shard,
            "rows": len(table),
            "dim": dim,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "committed": time.time(),
        }
        self.storage.check_fence(fresh=True)
        self._write_json(f"shard-{shard:05d}.json", manifest)
        return manifest

    def trace_attempt(self, shard: int, attempt: str) -> None:
        """A marker per shard attempt, so tests can count recomputed shards."""
        self.storage.write_bytes(self._path(f"attempts/{shard:05d}-{attempt}"), b"")

    def verify(self, ids: pa.Array, shards: int) -> dict:
        """Every shard committed and intact, and every input id present exactly once.
        Raises RuntimeError on any gap, duplicate or corrupt shard."""
        done, found, dim = self.done_shards(), [], None
        missing = sorted(set(range(shards)) - done)
        if missing:
            raise RuntimeError(f"{len(missing)} shards not committed, e.g. {missing[:5]}")
        for shard in range(shards):
            manifest = self._read_json(f"shard-{shard:05d}.json")
            data = self.storage.read_bytes(self._path(f"shard-{shard:05d}.parquet"))
            if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
                raise RuntimeError(f"shard {shard}: parquet does not match its manifest")
            found.append(pq.read_table(io.BytesIO(data), columns=["id"]).column("id"))
            dim = manifest["dim"]
        out = pa.chunked_array([c for col in found for c in col.chunks], type=ids.type)
        if len(out) != len(ids) or pc.count_distinct(out).as_py() != len(ids):
            raise RuntimeError(f"{len(out)} output rows for {len(ids)} input ids: duplicates or gaps")
        if not pc.all(pc.is_in(ids, value_set=out.combine_chunks())).as_py():
            raise RuntimeError("some input ids are missing from the output")
        return {"rows": len(ids), "shards": shards, "dim": dim}

    def finish(self, summary: dict) -> None:
        self._write_json("manifest.json", {**summary, "finished": time.time()})
