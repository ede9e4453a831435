"""The fine-tune's data, checked before Ray starts: loaded the way training loads it (Hugging Face
`datasets`), or by schema and a sample for large files. Every problem is one ConfigError line naming
the key, the value and what was expected, so a bad file costs seconds here instead of a GPU VM's
start-up and `max_restarts_on_errors` retries on SkyPilot.
"""

from __future__ import annotations

import os

from spotrun.core.config import worker_range
from spotrun.core.errors import ConfigError
from spotrun.core.errors import require as _require
from spotrun.jobs.finetune.data import BUILDERS, builder_for

LARGE_BYTES = 256 << 20  # above this a file is checked by schema and a sample, not loaded whole
SAMPLE_ROWS = 1000


def check_data(cfg, repo_root: str) -> None:
    """Refuse data the fine-tune would fail on inside Ray. Raises ConfigError; starts nothing. Reads
    the data only, no model: a data mistake is reported before the model's config is (~4 s of
    transformers imports). The model's position limit: `check_length`."""
    d = cfg.data
    both = d.hub_name is not None and (d.train_files is not None or d.eval_files is not None)
    _require(not both, "data.hub_name", d.hub_name, "null when data.train_files / eval_files are given")
    rows = None
    for key in ("train_files", "eval_files"):
        if d[key] is not None:
            n = _check_split(f"data.{key}", d[key], d, repo_root)
            rows = n if key == "train_files" else rows
    workers = worker_range(cfg.trainer.num_workers)[1]
    if rows is not None:
        global_batch = cfg.trainer.batch_size * workers
        _require(
            global_batch <= rows,
            "trainer.batch_size",
            cfg.trainer.batch_size,
            f"batch_size x {workers} workers = {global_batch} <= the {rows} rows of data.train_files",
        )


def _paths(spec: str, repo_root: str) -> list[str]:
    return [p if os.path.isabs(p) else os.path.join(repo_root, p) for p in spec.split(",")]


def _check_split(key: str, spec: str, d, repo_root: str) -> int | None:
    """Rows of one split (None when only sampled); ConfigError on the first bad file."""
    paths = _paths(spec, repo_root)
    builders = {builder_for(p) for p in paths}
    supported = f"one format of {', '.join(BUILDERS)} (optionally .gz)"
    _require(None not in builders and len(builders) == 1, key, spec, supported)
    for p in paths:
        _require(os.path.isfile(p), key, p, "an existing file")
        _require(os.path.getsize(p) > 0, key, p, "a non-empty file")
    builder = builders.pop()
    large = sum(os.path.getsize(p) for p in paths) > LARGE_BYTES
    records, rows = _load(key, spec, builder, paths, sample=large)
    _require(len(records) > 0, key, spec, "at least one row")
    for field in ("query_field", "doc_field"):
        _check_column(key, spec, f"data.{field}", d[field], records)
    return rows


def _load(key: str, spec: str, builder: str, paths: list[str], sample: bool) -> tuple[list[dict], int | None]:
    """(records, row count or None) through `datasets`, as load_pairs reads them."""
    from datasets import load_dataset
    from datasets.utils import logging as ds_logging

    before = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # its own error lines would repeat ours, unasked
    ds_logging.disable_progress_bar()
    try:
        if sample:  # a streamed dataset reads lazily: schema and the first rows only
            ds = load_dataset(builder, data_files=paths, split="train", streaming=True)
            return list(ds.take(SAMPLE_ROWS)), None
        ds = load_dataset(builder, data_files=paths, split="train")
        return ds.to_list(), len(ds)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same to the user: a bad file
        raise ConfigError(f"{key}={spec!r}: expected a readable {builder} file ({_reason(e)})") from None
    finally:
        ds_logging.set_verbosity(before)
        ds_logging.enable_progress_bar()


def _reason(e: BaseException) -> str:
    """The innermost cause's first line: `datasets` wraps parse errors in a generic one."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _check_column(key: str, spec: str, field_key: str, column: str, records: list[dict]) -> None:
    _require(
        column in records[0], field_key, column, f"a column of {key}={spec!r} (it has {sorted(records[0])})"
    )
    for i, rec in enumerate(records):
        value = rec.get(column)
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise ConfigError(
                f"{field_key}={column!r}: expected text in every row of {spec!r}; row {i} is {kind}"
            )


def check_length(cfg, model_path: str, config) -> None:
    """data.max_length within the position limit (max_position_embeddings / n_positions) of the
    model's transformers `config`, as the model check read it."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int):
        _require(
            cfg.data.max_length <= limit,
            "data.max_length",
            cfg.data.max_length,
            f"<= {limit}, the position limit of {model_path}",
        )
