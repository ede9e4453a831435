"""Render a SkyPilot managed-job task from a composed config, and validate it offline.

The task is `sky/job.yaml` (setup, run, secrets: the glue users can also launch by hand) with its
`name`, `resources`, `num_nodes` and `envs` filled in from the config. Validation uses SkyPilot's own
schema and loaders, plus the `job_recovery` checks SkyPilot's client schema leaves out. Nothing here
touches the network, a cloud account or an API server.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from typing import Any

import yaml
from omegaconf import DictConfig

from spotrun.core.config import EXIT_PREEMPTED, ConfigError
from spotrun.core.errors import require as _require
from spotrun.core.paths import REPO_ROOT
from spotrun.core.storage import scheme_of
from spotrun.recovery import fallback

# The strategies registered in SkyPilot 0.14 (sky/jobs/recovery_strategy.py) and the job_recovery
# keys its controller reads; the client schema accepts any string and any extra key.
RECOVERY_STRATEGIES = ("EAGER_NEXT_REGION", "FAILOVER")
RECOVERY_KEYS = ("strategy", "max_restarts_on_errors", "recover_on_exit_codes")
SECRETS = ("WANDB_API_KEY", "HF_TOKEN", "RAY_AUTH_TOKEN")  # RAY_AUTH_TOKEN: per job, made by launch
# Credentials a name or an override must never carry (they would land in the task name, the run
# folder, the rendered YAML and the logs): their values, wherever they are set here.
SECRET_ENVS = (
    *SECRETS,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_KEY",
)
ACCELERATOR_RE = re.compile(r"^[A-Za-z0-9-]+(:[1-9][0-9]*)?$")
# Overrides the launcher turns into envs instead of forwarding as ARGS.
_OWN_KEYS = ("cloud", "storage.root")


def check_launchable(cfg: DictConfig) -> None:
    """What a cloud launch needs beyond the job's own checks. Raises ConfigError."""
    c = cfg.cloud
    _require(c.name != "local", "cloud", c.name, "gcp, aws or azure (cloud=local runs here, not on SkyPilot)")
    _require(
        scheme_of(cfg.storage.root) in ("s3", "gs"),
        "storage.root",
        cfg.storage.root,
        "an s3:// or gs:// bucket for a cloud launch (checkpoints must outlive the VMs)",
    )
    for acc in c.accelerators:
        _require(bool(ACCELERATOR_RE.match(str(acc))), "cloud.accelerators", acc, "NAME or NAME:COUNT")
    _require(c.num_nodes >= 1, "cloud.num_nodes", c.num_nodes, "an int >= 1")
    _require(
        c.recovery in RECOVERY_STRATEGIES, "cloud.recovery", c.recovery, " or ".join(RECOVERY_STRATEGIES)
    )
    _require(
        c.max_restarts_on_errors >= 0, "cloud.max_restarts_on_errors", c.max_restarts_on_errors, "an int >= 0"
    )
    if fallback.enabled(cfg):
        _require(
            cfg.run.job == "finetune",
            "cloud.fallback.after_reclaims",
            c.fallback.after_reclaims,
            f"null with cloud.fallback.deadline null for the {cfg.run.job} job (the on-demand fallback "
            "hands over a fine-tune's checkpoint; sweeps and embedding jobs stay on spot)",
        )
    codes = list(c.recover_on_exit_codes)
    _require(
        EXIT_PREEMPTED in codes and all(0 < x < 256 for x in codes),
        "cloud.recover_on_exit_codes",
        codes,
        f"exit codes 1-255 including {EXIT_PREEMPTED} (preempted, relaunch me)",
    )


def _infra(cloud: str, region: str) -> str:
    return region if "/" in region else f"{cloud}/{region}"


def resources(cfg: DictConfig, on_demand: bool = False) -> dict:
    """`resources:` from cfg.cloud: accelerator candidates x cloud/region candidates, spot, recovery.

    Normally `any_of` (SkyPilot picks the cheapest candidate it can get). With `on_demand_floor` the
    candidates are `ordered`: every spot candidate in the listed order, then the same on demand.
    SkyPilot walks that list at launch and at each recovery and takes the first it can provision, so
    on-demand is used only when no spot capacity is left anywhere on the list."""
    c = cfg.cloud
    spot = bool(c.use_spot) and not on_demand
    res: dict[str, Any] = {
        "use_spot": spot,
        "job_recovery": {
            "strategy": c.recovery,
            "max_restarts_on_errors": int(c.max_restarts_on_errors),
            "recover_on_exit_codes": [int(x) for x in c.recover_on_exit_codes],
        },
    }
    accs = [{a.split(":")[0]: int(a.split(":")[1]) if ":" in a else 1} for a in c.accelerators]
    places = [{"infra": _infra(c.name, r)} for r in c.regions] or [{"infra": c.name}]
    if c.on_demand_floor and spot:
        # `ordered` takes one accelerator per candidate: the product, spot before on-demand.
        del res["use_spot"]
        res["ordered"] = [
            {**p, **({"accelerators": a} if a else {}), "use_spot": spot}
            for spot in (True, False)
            for a in accs or [None]
            for p in places
        ]
    else:
        if accs:
            res["accelerators"] = {k: v for a in accs for k, v in a.items()}
        res["any_of"] = places
    return res


def _hydra_value(value) -> str:
    """A resolved value as a Hydra override value: a quoted string (nothing left to interpolate)."""
    if value is None or isinstance(value, bool | int | float):
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    text = str(value)
    _require("${" not in text, "override", text, "a value without an unresolved ${...}")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def forwarded(overrides: list[str], cfg: DictConfig | None = None) -> list[str]:
    """The user's Hydra overrides the pipeline gets as ARGS (cloud and bucket travel as envs),
    resolved here, once: an override with an interpolation (`${oc.env:X}`) travels as its value
    on this machine, so the VM never resolves it again."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in _OWN_KEYS:
            continue
        if cfg is not None and "${" in value:
            from omegaconf import OmegaConf

            o = f"{key}={_hydra_value(OmegaConf.select(cfg, key.lstrip('+~')))}"
        out.append(o)
    return out


def check_no_secrets(name: str, overrides: list[str], env=os.environ) -> None:
    """Refuse a credential's value (or a reference to one) in the task name or an override: it
    would be rendered into the YAML, the run folder and the logs. The message never shows it."""
    values = {k: v for k in SECRET_ENVS if len(v := env.get(k) or "") >= 4}
    for where, text in [("run.name", name), *((o.split("=", 1)[0], o) for o in overrides)]:
        leaked = [k for k, v in values.items() if v in text]
        leaked += [k for k in SECRET_ENVS if re.search(rf"oc\.env\s*:\s*{k}\b", text)]
        if leaked:
            raise ConfigError(
                f"{where}: expected no secret in a name or override; it holds ${leaked[0]} "
                f"(pass secrets as SkyPilot secrets, never as config)"
            )


def render(cfg: DictConfig, template: dict, overrides: list[str]) -> dict:
    """The task: the template's glue with name, resources, nodes and envs from the config.

    Secret values never enter it: `secrets:` keeps the template's empty placeholders."""
    task = dict(template)
    experiment = re.sub(r"[^a-z0-9-]", "-", str(cfg.experiment).lower())
    task["name"] = cfg.run.name or f"spotrun-{cfg.run.job}-{experiment}"
    check_no_secrets(task["name"], overrides)
    args = forwarded(overrides, cfg)
    check_no_secrets(task["name"], args)  # after resolving: a value that came from elsewhere
    # the repository, wherever this runs: never the current folder (from $HOME it would be ~/.ssh...);
    # REPO_ROOT/.skyignore keeps credentials and local outputs out of the upload
    task["workdir"] = REPO_ROOT
    task["resources"] = resources(cfg)
    task["num_nodes"] = int(cfg.cloud.num_nodes)
    task["envs"] = {
        **(template.get("envs") or {}),
        "JOB": cfg.run.job,
        "CLOUD": cfg.cloud.name,
        "BUCKET": cfg.storage.root,
        "ARGS": " ".join(shlex.quote(a) for a in args),  # one shell word each: `run:` evals it
    }
    # "" placeholders, never null: SkyPilot 0.14 reads a null secret as a managed-secret reference
    # and fails the job at launch when no value or provider supplies it
    task["secrets"] = dict.fromkeys((template.get("secrets") or {}) or SECRETS, "")
    return task


def render_chain(cfg: DictConfig, template: dict, overrides: list[str]) -> list[dict]:
    """The tasks to submit: one, or with `cloud.fallback` the chain spot -> on-demand.

    The spot task hands over (exit 0) when the fallback fires; SkyPilot then runs the on-demand
    task, which resumes from the same checkpoint (both use the chain's first task id as run name)."""
    task = render(cfg, template, overrides)
    if not fallback.enabled(cfg):
        return [task]
    spot = {**task, "envs": {**task["envs"], fallback.STAGE_ENV: "1"}}
    on_demand = {
        **task,
        "name": f"{task['name']}-on-demand",
        "resources": resources(cfg, on_demand=True),
        "envs": {**task["envs"], "ARGS": f"{task['envs']['ARGS']} cloud.use_spot=false".strip()},
    }
    return [spot, on_demand]


def load_template(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def check_recovery(task: dict) -> None:
    """The job_recovery keys and strategy name SkyPilot's client schema lets through. Raises ConfigError."""
    res = task.get("resources") or {}
    for candidate in [res, *(res.get("any_of") or []), *(res.get("ordered") or [])]:
        rec = candidate.get("job_recovery")
        if rec is None:
            continue
        rec = {"strategy": rec} if isinstance(rec, str) else rec
        for key in rec:
            _require(
                key in RECOVERY_KEYS, f"job_recovery.{key}", rec[key], f"one of {', '.join(RECOVERY_KEYS)}"
            )
        strategy = rec.get("strategy")
        _require(
            strategy is None or strategy in RECOVERY_STRATEGIES,
            "job_recovery.strategy",
            strategy,
            " or ".join(RECOVERY_STRATEGIES),
        )


def validate(task: dict) -> None:
    """Validate with SkyPilot's own code (schema, Task loader, chain-DAG loader) and check_recovery.

    Raises ConfigError with SkyPilot's first line."""
    from sky.utils import common_utils, dag_utils, schemas

    import sky

    check_recovery(task)
    try:
        common_utils.validate_schema(task, schemas.get_task_schema(), "Invalid task: ")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(task, f, sort_keys=False)
        try:
            sky.Task.from_yaml(f.name)
            dag_utils.load_chain_dag_from_yaml(f.name)
        finally:
            os.unlink(f.name)
    except (ValueError, sky.exceptions.InvalidSkyPilotConfigError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(f"rendered task: {first}") from None


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, as a person would write them."""


_Dumper.ignore_aliases = lambda self, data: True  # no &id001 anchors in a file people read
_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def to_yaml(tasks: dict | list[dict]) -> str:
    """One task, or a chain: a `name:` document, then the tasks in order (SkyPilot's pipeline YAML)."""
    if isinstance(tasks, dict) or len(tasks) == 1:
        task = tasks if isinstance(tasks, dict) else tasks[0]
        return yaml.dump(task, Dumper=_Dumper, sort_keys=False, width=110)
    docs = [{"name": tasks[0]["name"]}, *tasks]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=110)


def validate_chain(tasks: list[dict]) -> None:
    """Each task as `validate` checks it, and the whole as SkyPilot loads a pipeline YAML."""
    from sky.utils import dag_utils

    for task in tasks:
        validate(task)
    if len(tasks) > 1:
        try:
            dag = dag_utils.load_chain_dag_from_yaml_str(to_yaml(tasks))
        except ValueError as e:
            raise ConfigError(f"rendered chain: {str(e).splitlines()[0]}") from None
        if not dag.is_chain() or len(dag.tasks) != len(tasks):
            raise ConfigError(f"rendered chain: SkyPilot read {len(dag.tasks)} tasks, not {len(tasks)}")
