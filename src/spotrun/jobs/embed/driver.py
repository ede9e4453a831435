"""The embedding job on Ray Data: pending shards -> `map_batches` (an actor pool holding the model,
one shard per batch, each committed by the actor that computed it) -> tiny acks back to the driver.

A reclaim costs at most the shards in flight (one per actor): every committed shard is skipped on
relaunch. On SIGTERM the actors stop taking new shards, in-flight shards commit, and the job exits 75.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid

import pyarrow as pa
import ray
from tqdm import tqdm

from spotrun.core import config as C
from spotrun.core.events import EventLog
from spotrun.core.storage import Storage
from spotrun.jobs.embed.ledger import ShardLedger, shard_bounds
from spotrun.recovery.notices import NAMESPACE, board_name, create_board, install_sigterm
from spotrun.recovery.runtime import init_ray

NOTICE_MARGIN_S = 5.0  # exit this long before the provider's notice runs out


class Embedder:
    """A Ray Data actor: loads the model once, then embeds and commits one whole shard per call."""

    def __init__(self, model_path: str, storage: Storage, run_name: str, opts: dict):
        import torch
        from sentence_transformers import SentenceTransformer

        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        device = "cuda" if torch.cuda.is_available() and opts["gpu"] else "cpu"
        self.model = SentenceTransformer(model_path, device=device)
        if opts["max_seq_length"]:
            self.model.max_seq_length = opts["max_seq_length"]
        self.opts, self.ledger = opts, ShardLedger(storage, run_name)
        self.board = ray.get_actor(board_name(run_name), namespace=NAMESPACE)

    def __call__(self, batch: pa.Table) -> pa.Table:
        shards = batch.column("shard").unique().to_pylist()
        if len(shards) != 1:  # one block per shard and whole blocks as batches: never happens
            raise RuntimeError(f"a batch spans shards {shards}")
        shard = shards[0]
        if ray.get(self.board.get.remote()) is not None:  # a reclaim notice: take no new shard
            return pa.table({"shard": [shard], "rows": [0]})
        if self.opts["trace"]:
            self.ledger.trace_attempt(shard, uuid.uuid4().hex[:8])
        vectors = self.model.encode(
            batch.column("text").to_pylist(),
            batch_size=self.opts["batch_size"],
            normalize_embeddings=self.opts["normalize"],
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        time.sleep(self.opts["sleep_s"])
        self.ledger.commit(shard, batch.column("id").combine_chunks(), vectors, self.opts["compression"])
        return pa.table({"shard": [shard], "rows": [len(batch)]})


def actor_layout(e, node_cpus: list[int], gpus: int) -> tuple[int, float, int]:
    """(actors, CPUs per actor, GPUs per actor) that fit the cluster's nodes. One actor per GPU;
    on CPUs the actors split every node's cores and leave none idle (two 1-CPU actors on 2 CPUs
    hang when a read task must feed them; here the driver feeds them, no read task)."""
    cpus = max(1, sum(node_cpus))
    if gpus:
        n = e.actors or gpus
        return n, max(1, cpus // n) if cpus >= n else 0.5, 1
    per = min(e.cpus_per_actor, max(node_cpus, default=1))
    if e.actors:
        per = max(1, min(per, cpus // e.actors))
    return e.actors or max(1, sum(c // per for c in node_cpus)), per, 0


def cluster_shape() -> tuple[list[int], int]:
    """CPUs of each alive node, and the cluster's GPUs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes]
    return [c for c in node_cpus if c > 0], int(ray.cluster_resources().get("GPU", 0))


def build_dataset(corpus: pa.Table, pending: list[tuple[int, int, int]], model_path, storage, run_name, e):
    """One block per pending shard (so a batch is exactly one shard) through the actor pool."""
    n, cpus, gpus = actor_layout(e, *cluster_shape())
    print(f"spotrun: {n} embedding actor(s), {cpus} CPU and {gpus} GPU each", flush=True)
    refs = [
        ray.put(corpus.slice(start, stop - start).append_column("shard", pa.array([i] * (stop - start))))
        for i, start, stop in pending
    ]
    opts = {
        "threads": int(cpus) if not gpus else 0,
        "gpu": bool(gpus),
        "max_seq_length": e.max_seq_length,
        "batch_size": e.batch_size,
        "normalize": e.normalize,
        "compression": e.compression,
        "trace": e.trace_attempts,
        "sleep_s": e.shard_sleep_s,
    }
    return ray.data.from_arrow_refs(refs).map_batches(
        Embedder,
        batch_size=None,  # whole blocks: a batch is one shard
        batch_format="pyarrow",
        fn_constructor_args=(model_path, storage, run_name, opts),
        compute=ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=2),
        num_cpus=cpus,
        num_gpus=gpus,
    )


def quiet_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours shows rows/s and the ETA of the whole run
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def embed_pending(ds, bar: tqdm) -> int:
    """Drain the acks (one per shard; 0 rows for a shard skipped after a notice): rows embedded."""
    rows = 0
    for ack in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        done = sum(ack.column("rows").to_pylist())
        rows += done
        bar.update(done)
    return rows


def finish(ledger: ShardLedger, corpus, n_shards, events, stats: dict) -> int:
    try:
        result = ledger.verify(corpus.column("id").combine_chunks(), n_shards)
    except RuntimeError as err:
        events.emit("failed", error=str(err)[:300])
        print(f"spotrun: verification failed: {err}", file=sys.stderr)
        return C.EXIT_FAILED
    ledger.finish({**result, **stats})
    events.emit("finish", **result, **stats)
    return C.EXIT_OK


def summary_line(run_name, rows, seconds, skipped, uri) -> str:
    rate = rows / seconds if seconds > 0 else 0.0
    return (
        f"spotrun: run {run_name!r}: embedded {rows} rows in {seconds:.1f} s ({rate:.1f} rows/s); "
        f"{skipped} shards skipped as already done; output {uri}"
    )


def run_embed(cfg, storage: Storage, run_name: str, model_path: str, corpus: pa.Table) -> int:
    """Embed every pending shard, verify, write the final manifest. Exit code per spotrun.core.config."""
    t0, e = time.time(), cfg.embed
    ledger, events = ShardLedger(storage, run_name), EventLog(storage, run_name, source="driver")
    uri = f"{storage.uri}/{run_name}/embeddings"
    if ledger.is_finished():
        print(f"spotrun: run {run_name!r} already finished; output {uri}; pick a new run.name to embed again")
        return C.EXIT_OK
    bounds = shard_bounds(len(corpus), e.shard_rows)
    done = ledger.done_shards()
    pending = [(i, a, b) for i, (a, b) in enumerate(bounds) if i not in done]
    events.emit("resume" if done else "start", shards=len(bounds), shards_done=len(done), rows=len(corpus))
    print(f"spotrun: run {run_name!r}: {len(pending)} of {len(bounds)} shards to embed -> {uri}")
    rows, noticed = 0, threading.Event()
    try:
        if pending:
            rows = _run_ray(cfg, storage, run_name, model_path, corpus, pending, noticed, events)
    except Exception as err:  # noqa: BLE001 - any failure of the job ends in the same exit path
        if not noticed.is_set():
            events.emit("failed", error=str(err).splitlines()[0][:300] if str(err) else type(err).__name__)
            print(f"spotrun: run {run_name!r} failed: {err}", file=sys.stderr)
            return C.EXIT_FAILED
    seconds = time.time() - t0
    stats = {"rows_embedded": rows, "seconds": round(seconds, 2), "shards_skipped": len(done)}
    left = len(bounds) - len(ledger.done_shards()) if noticed.is_set() else 0
    if left:  # a notice that came after the last shard committed changes nothing: finish
        events.emit("preempted", **stats, shards_left=left)
        print(summary_line(run_name, rows, seconds, len(done), uri))
        print(
            f"spotrun: preempted; in-flight shards committed, {left} left; exit {C.EXIT_PREEMPTED} (relaunch me)"
        )
        return C.EXIT_PREEMPTED
    code = finish(ledger, corpus, len(bounds), events, stats)
    print(summary_line(run_name, rows, time.time() - t0, len(done), uri))
    return code


def _run_ray(cfg, storage, run_name, model_path, corpus, pending, noticed, events) -> int:
    """Start Ray, stream the pending shards through the actor pool; rows embedded in this launch."""
    init_ray()
    quiet_ray_data()
    board = create_board(run_name)
    grace_s = cfg.cloud.notice_s - NOTICE_MARGIN_S

    def on_notice():
        noticed.ts = time.time()
        noticed.set()
        sys.stderr.write("spotrun: SIGTERM: committing the shards in flight, taking no new ones\n")

    def on_deadline():
        events.emit("preempted_timeout", waited_s=grace_s)
        sys.stderr.write("spotrun: notice deadline reached; exiting with shards in flight\n")
        os._exit(C.EXIT_PREEMPTED)

    install_sigterm(board, grace_s, on_notice, on_deadline)
    total, left = len(corpus), sum(b - a for _, a, b in pending)
    bar = tqdm(total=total, initial=total - left, unit="rows", disable=not cfg.logger.progress, mininterval=1)
    try:
        ds = build_dataset(corpus, pending, model_path, storage, run_name, cfg.embed)
        rows = embed_pending(ds, bar)
    finally:
        bar.close()
        ray.shutdown()
    if noticed.is_set():
        events.emit("preemption_notice", source="sigterm", notice_ts=round(noticed.ts, 3))
    return rows
