"""`spotrun launch JOB [--dryrun] [key=value ...]`: submit a job as a SkyPilot managed job.

Compose and validate `conf/<JOB>.yaml`, render `sky/job.yaml` (one template for every job kind) from
it (src/spotrun/ops/skytask.py), validate the task offline, then submit it with `sky.jobs.launch` and watch it through SkyPilot's
prechecks. `--dryrun` prints the rendered task and stops. Exit codes: 0 submitted (or printed),
1 SkyPilot failed, 2 bad input or no access to the cloud (nothing runs, nothing is billed).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import sys
import time

from spotrun import jobs
from spotrun.core.config import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, ConfigError
from spotrun.core.paths import SKY_DIR
from spotrun.core.storage import scheme_of
from spotrun.ops import buckets, skytask
from spotrun.recovery import contract

JOBS = tuple(jobs.BUILTIN)
WATCH_S = 45.0  # long enough for SkyPilot's prechecks; provisioning itself takes minutes
# The Python packages each SkyPilot cloud extra brings; without them `sky check` fails that cloud.
EXTRA_MODULES = {"gcp": ("googleapiclient",), "aws": ("boto3",), "azure": ("azure.mgmt.compute",)}
TERMINAL_OK = ("RUNNING", "RECOVERING", "SUCCEEDED")


class LaunchError(RuntimeError):
    """SkyPilot refused or failed the job; the message is one line. `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def load_config(job: str, overrides: list[str]):
    """The job's composed config, checked as its pipeline checks it. Raises ConfigError."""
    cfg = contract.load(jobs.kind(job), overrides)
    skytask.check_launchable(cfg)
    return cfg


def with_bucket(job: str, overrides: list[str]) -> tuple[list[str], str | None]:
    """The overrides plus `storage.root=<the user's own bucket>` when a cloud launch names no bucket
    (spotrun.ops.buckets); the bucket chosen, or None. Raises ConfigError."""
    if any(o.lstrip("+~").split("=", 1)[0] == "storage.root" for o in overrides):
        return overrides, None  # the user's choice, checked as given
    cfg = contract.load(jobs.kind(job), overrides)
    if cfg.cloud.name == "local" or scheme_of(cfg.storage.root) != "file":
        return overrides, None
    root = buckets.choose(cfg.cloud.name)
    return [*overrides, f"storage.root={root}"], root


def build(job: str, overrides: list[str]) -> list[dict]:
    """Compose, check, render and validate: the task (or the spot -> on-demand chain) ready to
    submit. Raises ConfigError."""
    skytask.check_no_secrets("", overrides)  # first: a later error message would show the value
    cfg = load_config(job, overrides)
    template = skytask.load_template(f"{SKY_DIR}/job.yaml")  # one template; the config names the job
    tasks = skytask.render_chain(cfg, template, overrides)
    skytask.validate_chain(tasks)
    return tasks


def check_extra(cloud: str) -> None:
    """Raise LaunchError (exit 2) when SkyPilot's extra for `cloud` is not installed."""
    missing = [m for m in EXTRA_MODULES.get(cloud, ()) if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise LaunchError(
            f"no access to {cloud}: SkyPilot's {cloud} extra is not installed; run "
            f"`pip install -e '.[{cloud}]'`, set up {cloud} credentials, then `sky check {cloud}`",
            EXIT_BAD_INPUT,
        )


def submit(tasks: list[dict]) -> int:
    """Submit through SkyPilot's SDK (it starts a local API server if none is set); the job id.

    A chain goes as one managed job whose tasks run in order. Secret values are added to the
    in-memory tasks only, from this process's environment."""
    from sky.utils import dag_utils

    import sky

    dag = dag_utils.load_chain_dag_from_yaml_str(skytask.to_yaml(tasks))  # one task, or the chain
    values = {k: os.environ[k] for k in (tasks[0].get("secrets") or {}) if os.environ.get(k)}
    if "RAY_AUTH_TOKEN" in (tasks[0].get("secrets") or {}):  # Ray's token auth across the nodes:
        values["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # one per job, in memory only, never in YAML
    for t in dag.tasks:
        t.update_secrets(values)
        if t.managed_secret_refs:  # a null secret: SkyPilot would fail the job at launch, not here
            names = ", ".join(r.name for r in t.managed_secret_refs)
            raise LaunchError(f'secrets {names} have no value: give them "" in sky/*.yaml', EXIT_BAD_INPUT)
    name = tasks[0]["name"]
    try:
        job_ids, _ = sky.get(sky.jobs.launch(dag, name=name))
    except sky.exceptions.SkyPilotExcludeArgsBaseException as e:
        raise LaunchError(f"SkyPilot refused the job: {_first_line(e)}") from None
    except Exception as e:  # the SDK re-raises server-side errors of any type
        raise LaunchError(f"SkyPilot refused the job: {type(e).__name__}: {_first_line(e)}") from None
    return int(job_ids[0])


def _first_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)


def job_state(job_id: int) -> tuple[str, str]:
    """(status, failure reason) of one managed job, as SkyPilot's controller records it."""
    import sky

    rows = sky.get(
        sky.jobs.queue_v2(
            refresh=False, all_users=True, job_ids=[job_id], fields=["job_id", "status", "failure_reason"]
        )
    )[0]
    row = next((r for r in rows if r["job_id"] == job_id), None)
    if row is None:
        return "UNKNOWN", ""
    status = getattr(row["status"], "value", str(row["status"]))
    return status, row.get("failure_reason") or ""


def watch(job_id: int, cloud: str, timeout_s: float = WATCH_S) -> str:
    """Follow the job through SkyPilot's prechecks; its status, or LaunchError if it failed."""
    deadline = time.monotonic() + timeout_s
    status = "PENDING"
    while time.monotonic() < deadline:
        status, reason = job_state(job_id)
        if status.startswith("FAILED") or status == "CANCELLED":
            if "NoCloudAccessError" in reason or "CloudUserIdentityError" in reason:
                raise LaunchError(
                    f"no access to {cloud}: set up {cloud} credentials and run `sky check {cloud}` "
                    f"(pip install -e '.[{cloud}]' if it reports a missing extra); managed job {job_id} "
                    f"stopped at SkyPilot's prechecks, nothing was provisioned",
                    EXIT_BAD_INPUT,
                )
            raise LaunchError(f"managed job {job_id} {status}: {_first_line(Exception(reason)) or status}")
        if status in TERMINAL_OK:
            break
        time.sleep(2)
    return status


def follow_hint(job_id: int, tasks: list[dict], status: str) -> str:
    task = tasks[0]
    chain = f" as a chain: {' -> '.join(t['name'] for t in tasks)}" if len(tasks) > 1 else ""
    return (
        f"spotrun: managed job {job_id} ({task['name']}) submitted{chain}, {status}\n"
        f"  sky jobs logs {job_id}        # follow it (recoveries included)\n"
        f"  sky jobs queue               # status, recoveries, region\n"
        f"  spotrun report {task['envs']['BUCKET'].rstrip('/')}/<run name>   # goodput and cost "
        f"(the run name is the job's SKYPILOT_TASK_ID, printed at the top of its log)"
    )


def main(argv: list[str]) -> int:
    """spotrun launch JOB [--dryrun] [key=value ...]"""
    args = list(argv)
    dryrun = "--dryrun" in args
    args = [a for a in args if a != "--dryrun"]
    if not args or args[0].startswith("-") or "=" in args[0]:
        print(f"usage: spotrun launch {{{','.join(JOBS)}}} [--dryrun] [key=value ...]", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(args[0], args[1:], dryrun)


def run(job: str, overrides: list[str], dryrun: bool = False) -> int:
    """Build the task, then print it (dry run) or make the bucket, submit and watch. The exit code."""
    try:
        overrides, chosen = with_bucket(job, overrides)
        tasks = build(job, overrides)
        if chosen:
            own_bucket(tasks[0]["envs"]["CLOUD"], chosen, dryrun)
    except ConfigError as e:
        print(f"spotrun: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if dryrun:
        print(skytask.to_yaml(tasks), end="")
        return EXIT_OK
    cloud = tasks[0]["envs"]["CLOUD"]
    try:
        check_extra(cloud)
        job_id = submit(tasks)
        status = watch(job_id, cloud)
    except LaunchError as e:
        print(f"spotrun: {e}", file=sys.stderr)
        return e.code
    print(follow_hint(job_id, tasks, status))
    return EXIT_OK


def own_bucket(cloud: str, root: str, dryrun: bool) -> None:
    """Say which bucket the launch uses; on a real launch create it if missing and remember it."""
    if dryrun:
        print(
            f"spotrun: storage.root={root} (your {cloud} bucket; a real launch creates it if missing)",
            file=sys.stderr,
        )
        return
    made = buckets.ensure(root)
    buckets.remember(cloud, root)
    print(
        f"spotrun: storage.root={root} (your {cloud} bucket, {'created' if made else 'found'}; "
        f"remembered in {buckets.memory_path()})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
