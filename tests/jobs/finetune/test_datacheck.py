"""Bad training data is refused before Ray starts: one line on stderr, exit 2, no Ray session.

Each case runs the real entry point (`python -m pipelines.finetune experiment=tiny ...`) with Ray's
temp root pointed at a private folder: a Ray start of any kind would create it.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY, pipeline_env
from omegaconf import OmegaConf

from spotrun.core.config import ConfigError, compose
from spotrun.jobs.finetune.data import load_pairs
from spotrun.jobs.finetune.datacheck import check_data


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pairs(n: int) -> list[dict]:
    return [{"query": f"q{i}", "doc": f"d{i}"} for i in range(n)]


def _parquet_truncated(path) -> str:
    pq.write_table(pa.table({"query": [f"q{i}" for i in range(200)], "doc": ["d"] * 200}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _non_utf8(path) -> str:
    path.write_bytes(b'{"query": "caf\xe9 \xff", "doc": "d"}\n' * 20)
    return str(path)


# (name, overrides built from tmp_path, the key the one line must name)
CASES = {
    "empty": (lambda t: [f"data.train_files={(t / 'e.jsonl').touch() or t / 'e.jsonl'}"], "data.train_files"),
    "missing_column": (
        lambda t: [f"data.train_files={_jsonl(t / 'm.jsonl', [{'q': 'a', 'doc': 'b'}] * 50)}"],
        "data.query_field",
    ),
    "null_text": (
        lambda t: [f"data.train_files={_jsonl(t / 'n.jsonl', _pairs(40) + [{'query': 'x', 'doc': None}])}"],
        "data.doc_field",
    ),
    "wrong_field": (
        lambda t: [f"data.train_files={_jsonl(t / 'w.jsonl', _pairs(50))}", "data.query_field=question"],
        "data.query_field",
    ),
    "non_utf8": (lambda t: [f"data.train_files={_non_utf8(t / 'u.jsonl')}"], "data.train_files"),
    "corrupt_parquet": (
        lambda t: [f"data.train_files={_parquet_truncated(t / 'c.parquet')}"],
        "data.train_files",
    ),
    "unsupported_format": (
        lambda t: [f"data.train_files={(t / 'p.txt').write_text('hello') and t / 'p.txt'}"],
        "data.train_files",
    ),
    "batch_past_data": (
        lambda t: [f"data.train_files={_jsonl(t / 'b.jsonl', _pairs(7))}"],
        "trainer.batch_size",
    ),
    "max_length_past_model": (lambda t: ["data.max_length=100000"], "data.max_length"),
    "hub_name_with_files": (lambda t: ["data.hub_name=someone/some-dataset"], "data.hub_name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_line_and_exit_2_before_ray(case, tmp_path, capsys):
    """The entry point's main() in this process (no interpreter start per case): exit 2, one line."""
    import ray

    from pipelines.finetune import main

    make, key = CASES[case]
    assert main([*TINY, f"storage.root={tmp_path}", *make(tmp_path)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: "), lines
    assert key in lines[0], lines[0]
    assert not ray.is_initialized()


def test_bad_data_through_the_real_command_line(tmp_path):
    """The same as a user types it: `python -m pipelines.finetune ...`, and no Ray session at all."""
    make, key = CASES["null_text"]
    overrides = make(tmp_path)
    ray_root = tmp_path / "ray"
    env = {**pipeline_env(), "RAY_TMPDIR": str(ray_root), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.finetune", *TINY, *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("spotrun: config error: "), lines
    assert key in lines[0], lines[0]
    assert not ray_root.exists() and "ray" not in proc.stdout.lower()  # no Ray session was ever started


def _cfg(tmp_path, train_files: str):
    cfg = compose("finetune", [*TINY, f"data.train_files={train_files}"], conf_dir=f"{REPO}/conf")
    OmegaConf.update(cfg, "trainer.num_workers", 1)
    return cfg


def test_gzipped_jsonl_is_accepted_and_reads_like_training(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in _pairs(12))
    cfg = _cfg(tmp_path, str(path))
    check_data(cfg, str(REPO))  # no error
    queries, docs = load_pairs(cfg.data, str(REPO), "train")
    assert queries[:2] == ["q0", "q1"] and len(docs) == 12


def test_a_large_file_is_checked_by_a_sample(tmp_path, monkeypatch):
    """Past LARGE_BYTES the file streams: the first rows are checked, the whole is never loaded."""
    from spotrun.jobs.finetune import datacheck

    monkeypatch.setattr(datacheck, "LARGE_BYTES", 100)
    cfg = _cfg(tmp_path, _jsonl(tmp_path / "big.jsonl", [{"query": None, "doc": "d"}] + _pairs(2000)))
    with pytest.raises(ConfigError, match="row 0 is null"):
        check_data(cfg, str(REPO))
