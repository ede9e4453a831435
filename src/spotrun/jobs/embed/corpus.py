"""The embedding job's input -> an Arrow table with columns `id` and `text`, read before Ray starts.

`embed.input` is a file (jsonl, json, csv, parquet), a folder of them (sorted by name), the same on
s3:// or gs://, or a Hugging Face dataset name. Every mistake (missing file, missing column, duplicate
ids, an unreadable file) is a one-line ConfigError.
"""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.compute as pc

from spotrun.core.config import ConfigError
from spotrun.core.storage import Storage, open_storage, scheme_of

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _format(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def _parse(data: bytes, fmt: str) -> pa.Table:
    if fmt == "json":
        import pyarrow.json as pajson

        return pajson.read_json(io.BytesIO(data))
    if fmt == "csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(io.BytesIO(data))
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def _files(st: Storage, spec: str) -> list[str]:
    """The data files an input names: itself, or the supported files under a folder/prefix."""
    if st.exists(st.base) and _format(st.base):
        return [st.base]
    names = [n for n in st.list_files(st.base) if _format(n)]
    if not names:
        raise ConfigError(f"embed.input={spec!r}: expected an existing jsonl, json, csv or parquet file")
    return [f"{st.base}/{n}" for n in names]


def _looks_like_path(spec: str, repo_root: str) -> bool:
    local = spec if os.path.isabs(spec) else os.path.join(repo_root, spec)
    return (
        scheme_of(spec) != "file"
        or spec.startswith(("/", ".", "~", "file://"))
        or (bool(_format(spec)) or os.path.exists(local))
    )


def _read_files(spec: str, repo_root: str, endpoint, region) -> pa.Table:
    st = open_storage(spec, repo_root, endpoint, region)
    tables = []
    for path in _files(st, spec):
        try:
            tables.append(_parse(st.read_bytes(path), _format(path)))
        except (pa.ArrowInvalid, OSError) as e:
            reason = str(e).splitlines()[0][:160]
            raise ConfigError(
                f"embed.input={spec!r}: expected a readable {_format(path)} file ({reason})"
            ) from None
    return pa.concat_tables(tables, promote_options="permissive")


def _read_hub(spec: str, split: str) -> pa.Table:
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        return datasets.load_dataset(spec, split=split).data.table
    except Exception as e:  # noqa: BLE001 - any failure to load means the same to the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"embed.input={spec!r}: expected a file, folder, bucket URI or loadable Hugging Face dataset ({reason})"
        ) from None


def _column(table: pa.Table, key: str, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ConfigError(f"{key}={name!r}: expected one of the input's columns {table.column_names}")
    return table.column(name)


def _ids(table: pa.Table, id_column: str | None) -> pa.Array:
    if id_column is None:
        return pa.array(range(len(table)), type=pa.int64())
    ids = _column(table, "embed.id_column", id_column).combine_chunks()
    if not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)):
        ids = ids.cast(pa.string())
    if ids.null_count or pc.count_distinct(ids).as_py() != len(ids):
        raise ConfigError(f"embed.id_column={id_column!r}: expected a unique, non-null id in every row")
    return ids.cast(pa.int64()) if pa.types.is_integer(ids.type) else ids


def load_corpus(e, repo_root: str, endpoint=None, region=None) -> pa.Table:
    """The input as a table (id, text): ids unique, texts non-null, in the input's order."""
    if _looks_like_path(e.input, repo_root):
        table = _read_files(e.input, repo_root, endpoint, region)
    else:
        table = _read_hub(e.input, e.split)
    if e.max_rows is not None:
        table = table.slice(0, e.max_rows)
    if len(table) == 0:
        raise ConfigError(f"embed.input={e.input!r}: expected at least one row")
    text = _column(table, "embed.text_column", e.text_column)
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise ConfigError(f"embed.text_column={e.text_column!r}: expected a text column, got {text.type}")
    if text.null_count:
        raise ConfigError(f"embed.text_column={e.text_column!r}: expected text in every row (some are null)")
    return pa.table({"id": _ids(table, e.id_column), "text": text.combine_chunks().cast(pa.string())})
