"""The embedding job on Ray Data: pending shards -> `map_batches` (an actor pool holding the model,
one shard per batch, each committed by the actor that computed it) -> tiny acks back to the driver.

A reclaim costs at most the shards in flight (one per actor): every committed shard is skipped on
relaunch. On a notice (SIGTERM to any of the job's processes, under the spot contract) the actors
stop taking new shards, in-flight shards commit, and the job exits 75.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid

import pyarrow as pa
import ray
from tqdm import tqdm

from spotrun.core import config as C
from spotrun.core.errors import ConfigError
from spotrun.core.events import EventLog
from spotrun.core.paths import REPO_ROOT
from spotrun.core.storage import Storage, storage_from_cfg
from spotrun.jobs.embed import config as embed_config
from spotrun.jobs.embed.ledger import ShardLedger, shard_bounds
from spotrun.recovery import shield
from spotrun.recovery.contract import JobKind, Outcome, register
from spotrun.recovery.notices import NAMESPACE, board_name
from spotrun.recovery.runtime import resolve_run_name


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
        if shield.sigterm_pending() or ray.get(self.board.get.remote()) is not None:  # take no new shard
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
    on CPUs the actors split every node's cores and leave none idle: by default one single-threaded
    actor per core (1-CPU actors would hang if a read task had to feed them; here the driver feeds
    them, no read task)."""
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


class EmbedJob:
    """The embedding job's work under the spot contract (spotrun.recovery.contract)."""

    def __init__(self, cfg, storage: Storage, run_name: str, model_path: str, corpus: pa.Table):
        self.cfg, self.storage, self.run_name = cfg, storage, run_name
        self.model_path, self.corpus = model_path, corpus
        self.bounds = shard_bounds(len(corpus), cfg.embed.shard_rows)

    @property
    def uri(self) -> str:
        return f"{self.storage.uri}/{self.run_name}/embeddings"

    def finished(self) -> str | None:
        return f"output {self.uri}" if ShardLedger(self.storage, self.run_name).is_finished() else None

    def committed(self) -> str | None:
        done = len(ShardLedger(self.storage, self.run_name).done_shards())
        return f"{done} of {len(self.bounds)} shards" if done else None

    def run(self, attempt) -> Outcome:
        """Embed every pending shard, verify, write the final manifest."""
        t0, ledger = time.time(), ShardLedger(self.storage, self.run_name)
        events = EventLog(self.storage, self.run_name, source="driver")
        done = ledger.done_shards()
        pending = [(i, a, b) for i, (a, b) in enumerate(self.bounds) if i not in done]
        kind = "resume" if done else "start"
        events.emit(kind, shards=len(self.bounds), shards_done=len(done), rows=len(self.corpus))
        print(
            f"spotrun: run {self.run_name!r}: {len(pending)} of {len(self.bounds)} shards to embed -> {self.uri}"
        )
        rows = self._embed(pending) if pending else 0
        seconds = time.time() - t0
        stats = {"rows_embedded": rows, "seconds": round(seconds, 2), "shards_skipped": len(done)}
        print(summary_line(self.run_name, rows, seconds, len(done), self.uri))
        left = len(self.bounds) - len(ledger.done_shards())
        if left and attempt.noticed():  # a notice after the last shard committed changes nothing
            events.emit("preemption_notice", source="sigterm", notice_ts=round(attempt.notice.ts, 3))
            events.emit("preempted", **stats, shards_left=left, saved=True)
            return Outcome(saved=f"in-flight shards committed, {left} of {len(self.bounds)} left")
        if left:
            raise RuntimeError(f"{left} shards left unembedded without a notice")
        if finish(ledger, self.corpus, len(self.bounds), events, stats) != C.EXIT_OK:
            raise RuntimeError("verification failed")
        return Outcome(finished=True)

    def _embed(self, pending) -> int:
        """Stream the pending shards through the actor pool; rows embedded in this launch."""
        quiet_ray_data()
        total, left = len(self.corpus), sum(b - a for _, a, b in pending)
        bar = tqdm(
            total=total,
            initial=total - left,
            unit="rows",
            disable=not self.cfg.logger.progress,
            mininterval=1,
        )
        try:
            ds = build_dataset(
                self.corpus, pending, self.model_path, self.storage, self.run_name, self.cfg.embed
            )
            return embed_pending(ds, bar)
        finally:
            bar.close()


def prepare(cfg) -> EmbedJob:
    """Run name, model, storage, the corpus loaded and checked against the run's plan; before Ray."""
    from spotrun.core.models import check_model
    from spotrun.jobs.embed.corpus import load_corpus
    from spotrun.jobs.embed.ledger import fingerprint

    run_name = resolve_run_name(cfg)
    model_path = check_model(cfg.embed.model)
    storage = storage_from_cfg(cfg, REPO_ROOT)
    unreachable = storage.probe()
    if unreachable:
        raise ConfigError(
            f"storage.root={cfg.storage.root!r}: expected a reachable folder or bucket ({unreachable})"
        )
    e = cfg.embed
    corpus = load_corpus(e, REPO_ROOT, cfg.storage.endpoint, cfg.storage.region)
    plan = {"rows": len(corpus), "shard_rows": e.shard_rows, "fingerprint": fingerprint(corpus)}
    plan |= {"text_column": e.text_column, "id_column": e.id_column, "model": e.model.name}
    ShardLedger(storage, run_name).ensure_plan(plan)
    return EmbedJob(cfg, storage, run_name, model_path, corpus)


KIND = register(
    JobKind(
        name="embed",
        check=embed_config.validate,
        prepare=prepare,
        schema=embed_config.register,
        summary="embed a corpus with Ray Data; every committed shard survives a reclaim",
    )
)
