"""The checks Hydra cannot express. Every user mistake is a `ConfigError` with one line: the key,
the value, what was expected; the pipelines print it and exit 2 before Ray starts or money is spent."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from spotrun.core.config.schema import CLOUDS, RUN_NAME_RE
from spotrun.core.errors import ConfigError
from spotrun.core.errors import require as _require
from spotrun.core.storage import SCHEMES, scheme_of


def worker_range(num_workers: Any) -> tuple[int, int]:
    """`trainer.num_workers` as (min, max); equal for a fixed world size."""
    value = OmegaConf.to_object(num_workers) if isinstance(num_workers, ListConfig) else num_workers
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, value
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 1 <= value[0] <= value[1]
    )
    _require(ok, "trainer.num_workers", value, "a positive int or a [min, max] pair with 1 <= min <= max")
    return int(value[0]), int(value[1])


def _check_interval(c) -> None:
    auto = c.every_seconds == "auto"
    number = isinstance(c.every_seconds, int | float) and not isinstance(c.every_seconds, bool)
    _require(
        auto or (number and c.every_seconds > 0),
        "checkpoint.every_seconds",
        c.every_seconds,
        "a number of seconds > 0 or auto",
    )
    _require(
        0 < c.min_seconds <= c.max_seconds,
        "checkpoint.min_seconds",
        c.min_seconds,
        f"0 < min_seconds <= max_seconds ({c.max_seconds})",
    )


def _check_preemption(p) -> None:
    sources = ("auto", "none", "aws", "gcp", "azure")
    _require(p.source in sources, "preemption.source", p.source, f"one of {', '.join(sources)}")
    if p.endpoint is not None:
        _require(
            p.endpoint.startswith(("http://", "https://")),
            "preemption.endpoint",
            p.endpoint,
            "an http:// or https:// URL",
        )
    _require(p.poll_s is None or p.poll_s > 0, "preemption.poll_s", p.poll_s, "seconds > 0")
    _require(p.mtbr_s is None or p.mtbr_s > 0, "preemption.mtbr_s", p.mtbr_s, "seconds > 0")


def parse_deadline(value) -> float | None:
    """`cloud.fallback.deadline` as a Unix time; ConfigError unless ISO 8601 with a timezone."""
    if value in (None, ""):
        return None
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(
            f"cloud.fallback.deadline={value!r}: expected an ISO 8601 time with a timezone, "
            f"e.g. 2026-12-01T18:00:00Z"
        )
    return when.timestamp()


def check_fallback(cfg) -> None:
    """The on-demand floor keys (spotrun.recovery.fallback). Raises ConfigError."""
    f = cfg.cloud.fallback
    n = f.after_reclaims
    ok = n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1)
    _require(ok, "cloud.fallback.after_reclaims", n, "an int >= 1, or null")
    parse_deadline(f.deadline)


def _check_files(key: str, spec: str | None, root: str) -> None:
    if spec is None:
        return
    for part in spec.split(","):
        path = part if os.path.isabs(part) else os.path.join(root, part)
        _require(os.path.exists(path), key, spec, "an existing file (json, jsonl, csv or parquet)")


def validate(cfg: DictConfig, repo_root: str) -> None:
    """Semantic checks beyond types. Raises ConfigError; touches no cluster and no network."""
    worker_range(cfg.trainer.num_workers)
    t, c = cfg.trainer, cfg.checkpoint
    for key in ("batch_size", "max_steps", "threads_per_worker", "eval_batch_size"):
        _require(t[key] >= 1, f"trainer.{key}", t[key], "an int >= 1")
    _require(t.lr > 0, "trainer.lr", t.lr, "a float > 0")
    _require(t.warmup_steps >= 0, "trainer.warmup_steps", t.warmup_steps, "an int >= 0")
    _require(t.max_failures >= 0, "trainer.max_failures", t.max_failures, "an int >= 0")
    _require(c.every_steps >= 1, "checkpoint.every_steps", c.every_steps, "an int >= 1")
    _check_interval(c)
    _check_preemption(cfg.preemption)
    _require(c.keep >= 1, "checkpoint.keep", c.keep, "an int >= 1")
    _require(cfg.cloud.notice_s >= 10, "cloud.notice_s", cfg.cloud.notice_s, "seconds >= 10")
    _require(cfg.cloud.name in CLOUDS, "cloud.name", cfg.cloud.name, f"one of {', '.join(CLOUDS)}")
    check_fallback(cfg)
    _require(cfg.data.max_length >= 4, "data.max_length", cfg.data.max_length, "an int >= 4")
    _require(cfg.data.eval_size >= 2, "data.eval_size", cfg.data.eval_size, "an int >= 2")
    _require(cfg.model.pooling in ("mean", "cls"), "model.pooling", cfg.model.pooling, "mean or cls")
    _validate_llm(cfg)
    check_local_package(cfg.model)
    _require(
        cfg.logger.wandb_mode in ("auto", "online", "offline", "disabled"),
        "logger.wandb_mode",
        cfg.logger.wandb_mode,
        "auto, online, offline or disabled",
    )
    if cfg.run.name is not None:
        _require(
            bool(RUN_NAME_RE.fullmatch(str(cfg.run.name))),
            "run.name",
            cfg.run.name,
            "letters, digits, . _ - (max 128)",
        )
    _require(
        cfg.data.train_files is not None or cfg.data.hub_name is not None,
        "data.train_files",
        None,
        "a local file, or data.hub_name",
    )
    _require(
        scheme_of(cfg.storage.root) in SCHEMES,
        "storage.root",
        cfg.storage.root,
        "a path, file://, s3://bucket/prefix or gs://bucket/prefix",
    )
    _check_files("data.train_files", cfg.data.train_files, repo_root)
    _check_files("data.eval_files", cfg.data.eval_files, repo_root)


def _ships_model(spec, gguf_file: str | None) -> bool:
    """Whether an installed package (found, not imported) ships a model: the GGUF file in its folder,
    or a top-level `get_model_path()` in its `__init__.py` (read as source, never run)."""
    import ast

    folder = os.path.dirname(spec.origin or "")
    if gguf_file:
        return os.path.isfile(os.path.join(folder, gguf_file))
    try:
        with open(spec.origin, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, TypeError, ValueError, SyntaxError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "get_model_path" for n in tree.body)


def check_local_package(m) -> None:
    """`model.local_package` is a top-level package name; when installed it must ship a model, so
    nothing else is ever imported in its name. Not installed: `model.name` loads instead (the
    documented fallback). Raises ConfigError."""
    import importlib.util

    name = m.get("local_package")
    if name is None:
        return
    ok = isinstance(name, str) and name.isidentifier()  # a dotted name: find_spec imports its parents
    _require(ok, "model.local_package", name, "null or an installed package name (letters, digits, _)")
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    what = f"a package that ships {m.gguf_file}" if m.get("gguf_file") else "a package with get_model_path()"
    _require(_ships_model(spec, m.get("gguf_file")), "model.local_package", name, what)


def _validate_llm(cfg: DictConfig) -> None:
    m, lora = cfg.model, cfg.model.lora
    _require(m.kind in ("encoder", "causal_lm"), "model.kind", m.kind, "encoder or causal_lm")
    _require(cfg.trainer.parallel in ("ddp", "fsdp"), "trainer.parallel", cfg.trainer.parallel, "ddp or fsdp")
    if cfg.trainer.parallel == "fsdp":
        _require(m.kind == "causal_lm", "trainer.parallel", "fsdp", "ddp for model.kind=encoder")
        fsdp = "with trainer.parallel=fsdp"  # shards go through the storage layer (shard_io.py)
        _require(not m.save_merged, "model.save_merged", True, f"false {fsdp} (no rank has all weights)")
    _require(lora.r >= 1, "model.lora.r", lora.r, "an int >= 1")
    _require(lora.alpha > 0, "model.lora.alpha", lora.alpha, "a number > 0")
    _require(0 <= lora.dropout < 1, "model.lora.dropout", lora.dropout, "a float in [0, 1)")
