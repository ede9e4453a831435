"""A spot market on this machine: run the real pipeline, reclaim it on a schedule, relaunch it, and
report what the reclaims cost -- what a SkyPilot managed-job controller does in the cloud.

    spotrun chaos                                       # the default: tiny fine-tune, 3 mixed reclaims
                                                        # over ~27 min of training (see DEFAULT_OVERRIDES)
    spotrun chaos --schedule poisson:60 --seed 1 --kinds hard -- trainer.max_steps=200
    spotrun chaos --kinds node -- trainer.num_workers=[1,2]      # lose a Ray node mid-run

The reclaim clock of each attempt starts at its first training step (so every reclaim interrupts
training, not start-up). Kinds: group (SIGTERM to the job's whole process group, as a VM shutdown
sends it: driver, Ray daemons and workers; SIGKILL after --grace-s; group-start: during start-up, its
clock starting at the attempt's `launch` event; group-ckpt: mid-write), sigterm (the driver alone), metadata (the
cloud's notice endpoint flips; a 127.0.0.1 server answers like AWS/GCP/Azure), hard (SIGKILL, no
notice), ckpt (SIGKILL while a checkpoint is being written), node (a Ray node of a local
multi-node cluster is removed; elastic training shrinks and continues in the same driver).

With `cloud.fallback.*` set it plays SkyPilot's two-task chain too: when the spot stage hands over
(exit 0, a `fallback` event), the next attempt runs with `cloud.use_spot=false` and is not reclaimed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time

from spotrun.core import config as C
from spotrun.core.events import EventLog, read_events
from spotrun.core.paths import REPO_ROOT, scratch_dir
from spotrun.core.storage import storage_from_cfg
from spotrun.ops.chaos_verify import compare_final, final_line
from spotrun.ops.metadata_server import MetadataServer
from spotrun.ops.report import markdown, summarize, write_outputs
from spotrun.recovery import fallback

REPO = REPO_ROOT
# group*: SIGTERM to the job's whole process group, as a VM shutdown sends it -- mid-step (group),
# during start-up before the first step (group-start), while a checkpoint is being written (group-ckpt)
KINDS = ("group", "group-start", "group-ckpt", "sigterm", "metadata", "hard", "ckpt", "node")
# The default market: a reclaim every 4 min of training (3 in all) on a run of ~27 min (2,000 steps at
# ~0.8 s), long enough that its four start-ups are a small share and the goodput it reports means
# something (bench.goodput); a checkpoint every 25 steps bounds a hard kill's lost work to ~20 s.
DEFAULT_OVERRIDES = ["experiment=tiny", "logger=none", "trainer.max_steps=2000", "data.eval_size=64"]
DEFAULT_OVERRIDES += ["checkpoint.every_steps=25"]
DEFAULT_SCHEDULE = "at:240,240,240"


def schedule(spec: str, seed: int):
    """`at:30,45,60` (seconds after each attempt's first step) or `poisson:MEAN` (exponential gaps)."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "at":
            times = [float(x) for x in arg.split(",") if x]
            return lambda i: times[i] if i < len(times) else None
        if kind == "poisson" and float(arg) > 0:
            rng = random.Random(seed)
            return lambda i: rng.expovariate(1.0 / float(arg))
    except ValueError:
        pass
    raise C.ConfigError(f"--schedule={spec!r}: expected at:SECONDS[,SECONDS...] or poisson:MEAN_SECONDS")


class Market:
    """Starts attempts of one pipeline command and reclaims them."""

    def __init__(self, args, overrides: list[str]):
        self.args, self.overrides = args, overrides
        self.cfg = C.compose("finetune", overrides, conf_dir=f"{REPO}/conf")
        C.validate(self.cfg, REPO)
        from spotrun.recovery.runtime import resolve_run_name

        self.run_name = resolve_run_name(self.cfg)
        self.storage = storage_from_cfg(self.cfg, REPO)
        self.events = (
            EventLog(self.storage, self.run_name, source="market") if self.storage.is_local else None
        )
        self.metadata = MetadataServer().start() if "metadata" in args.kinds else None
        self.cluster = None
        self.on_demand = (
            False  # the second task of a fallback chain (spotrun.recovery.fallback): never reclaimed
        )
        self.log = open(args.log, "ab") if args.log else None  # noqa: SIM115 - open for the whole market

    def command(self) -> list[str]:
        extra = []
        if self.metadata:
            extra = [
                f"preemption.source={self.args.metadata_cloud}",
                f"preemption.endpoint={self.metadata.url}",
            ]
        if self.on_demand:
            extra.append("cloud.use_spot=false")
        return [sys.executable, "-m", "pipelines.finetune", *self.overrides, *extra]

    def env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
        env.pop(fallback.STAGE_ENV, None)
        if fallback.enabled(self.cfg) and not self.on_demand:
            env[fallback.STAGE_ENV] = "1"  # as in the rendered chain: an on-demand task follows
        if self.cluster is not None:
            # after a node loss, Train's first restart comes before Ray has marked the node dead (~10
            # s here): it asks for the lost node's worker too and waits out this timeout (Ray's
            # default: 60 s) before it asks again, from a fresh view (jobs/finetune/scaling.py). The
            # market's nodes are all up before the run starts, so a placement needs well under 5 s.
            env.update(RAY_ADDRESS=self.cluster.address, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="5")
        return env

    def start(self) -> subprocess.Popen:
        if self.metadata:
            self.metadata.clear()  # a fresh VM: no notice pending
        out = self.log or subprocess.DEVNULL
        return subprocess.Popen(
            self.command(),
            cwd=REPO,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def note(self, kind: str, **fields) -> None:
        print(f"spotrun chaos: reclaim ({kind}) {fields or ''}".rstrip(), flush=True)
        if self.events:
            self.events.emit("reclaim", reclaim=kind, **fields)

    # ----- watching the run -----
    def launch_seen(self, pid_after: float) -> bool:
        return any(e["kind"] == "launch" and e["ts"] >= pid_after for e in self._events())

    def first_step_seen(self, pid_after: float) -> bool:
        return any(e["kind"] == "first_step" and e["ts"] >= pid_after for e in self._events())

    def write_in_flight(self) -> bool:
        """A checkpoint folder without its manifest, or a staging copy: a write is in progress."""
        ck = self.storage.path(self.run_name, "checkpoints")
        staging = os.path.join(scratch_dir(REPO, self.storage.uri, self.run_name), "staging")
        if os.path.isdir(staging) and any(os.scandir(staging)):
            return True
        if not self.storage.is_local or not os.path.isdir(ck):
            return False
        return any(not os.path.exists(os.path.join(d.path, "manifest.json")) for d in os.scandir(ck))

    def handed_over(self, since: float) -> bool:
        """The attempt ended its spot stage (a `fallback` event): the chain's on-demand task is next."""
        return any(e["kind"] == "fallback" and e["ts"] >= since for e in self._events())

    def _events(self) -> list[dict]:
        try:
            return read_events(self.storage, self.run_name)
        except (OSError, ValueError):
            return []

    # ----- reclaiming -----
    def supervise(self, proc: subprocess.Popen, delay: float | None, kind: str, started: float) -> int:
        """Wait for the attempt; `delay` seconds after its first step, reclaim it as `kind`."""
        # one events read a second: on a bucket each read is a GET of the whole events.jsonl
        mark = self.launch_seen if kind == "group-start" else self.first_step_seen
        # group-start: its clock starts at the attempt's `launch` (config checked, lease taken), so the
        # notice lands while Ray and the workers start
        trained = delay is not None and self._wait(proc, lambda: mark(started), 900, interval=1.0)
        if trained and not self._wait(proc, lambda: False, delay):
            self.reclaim(proc, kind, delay)
        return proc.wait()

    def reclaim(self, proc: subprocess.Popen, kind: str, after_s: float) -> None:
        if kind in ("ckpt", "group-ckpt"):
            if not self._wait(proc, self.write_in_flight, 300, interval=0.01):
                return  # the run ended first
            if kind == "ckpt":
                self.note(kind, after_s=round(after_s, 1))
                return kill_tree(proc)
        if kind == "node":
            return self.lose_node(after_s)
        self.note(kind, after_s=round(after_s, 1))
        if kind == "hard":
            return kill_tree(proc)
        if kind.startswith("group"):  # a VM shutdown: SIGTERM to every process of the job at once
            os.killpg(proc.pid, signal.SIGTERM)
        elif kind == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            self.metadata.reclaim()
        if self._wait(proc, lambda: False, self.args.grace_s):
            return  # not reached: the predicate never holds
        if proc.poll() is None:
            print(f"spotrun chaos: grace period of {self.args.grace_s}s over: SIGKILL", flush=True)
            kill_tree(proc)

    def lose_node(self, after_s: float) -> None:
        nodes = [n for n in self.cluster.worker_nodes]
        if len(nodes) < 2:
            print("spotrun chaos: one worker node left; not removing it", flush=True)
            return
        self.note("node", after_s=round(after_s, 1), nodes_left=len(nodes) - 1)
        self.cluster.remove_node(nodes[-1], allow_graceful=False)

    def start_cluster(self, nodes: int) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(nodes):
            self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()

    @staticmethod
    def _wait(proc: subprocess.Popen, predicate, timeout: float, interval: float = 0.1) -> bool:
        """True once `predicate()` holds; False when `timeout` passes or the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if proc.poll() is not None:
                return False
            time.sleep(interval)
        return False

    def close(self) -> None:
        if self.metadata:
            self.metadata.stop()
        if self.cluster is not None:
            self.cluster.shutdown()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the attempt and every process it started (its own Ray cluster included)."""
    import contextlib

    import psutil

    from spotrun.core.procs import still_running

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.kill()
    for p in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()  # reap it here, not through psutil, so Popen keeps its exit status (-9)
    still_running(children, timeout=30)  # they went to the init process: a zombie has ended


def run_market(m: Market, args) -> int:
    """Attempts until the run finishes; returns the last exit code (0 done, 2 bad input, 1 gave up)."""
    next_delay, failures, reclaims = schedule(args.schedule, args.seed), 0, 0
    if "node" in args.kinds:
        m.start_cluster(args.nodes)
    while True:
        started = time.time()
        delay = next_delay(reclaims) if reclaims < args.max_reclaims and not m.on_demand else None
        kind = args.kinds[reclaims % len(args.kinds)]
        rc = m.supervise(m.start(), delay, kind, started)
        reclaims += delay is not None
        print(f"spotrun chaos: attempt ended with exit {rc}", flush=True)
        if rc == C.EXIT_OK and not m.on_demand and m.handed_over(started):
            print("spotrun chaos: the spot stage handed over; starting the on-demand stage", flush=True)
            m.on_demand = True
            continue
        if rc == C.EXIT_OK:
            return rc
        if rc == C.EXIT_BAD_INPUT:
            return rc
        if rc == C.EXIT_FAILED:
            failures += 1
            if failures > args.max_failures:
                return rc


def parse(argv: list[str]):
    ap = argparse.ArgumentParser(prog="spotrun chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="at:S1,S2,... or poisson:MEAN (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="group,hard,ckpt,metadata", help=f"comma list of {', '.join(KINDS)}")
    ap.add_argument("--max-reclaims", type=int, default=3)
    ap.add_argument("--grace-s", type=float, default=30.0, help="SIGKILL this long after a notice")
    ap.add_argument("--metadata-cloud", default="gcp", choices=("aws", "gcp", "azure"))
    ap.add_argument("--nodes", type=int, default=2, help="worker nodes of the local cluster (kind node)")
    ap.add_argument("--max-failures", type=int, default=2, help="exit-1 attempts tolerated")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the reference run")
    ap.add_argument("--log", default=None, help="append the pipeline's output to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the fine-tune (after --)")
    args = ap.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad or not args.kinds:
        raise C.ConfigError(f"--kinds={','.join(args.kinds)!r}: expected a comma list of {', '.join(KINDS)}")
    if args.grace_s <= 0 or args.max_reclaims < 0:
        raise C.ConfigError(f"--grace-s={args.grace_s!r}/--max-reclaims: expected > 0 / >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        overrides = args.overrides or DEFAULT_OVERRIDES
        if not any(o.startswith("run.name=") for o in overrides):
            overrides = [*overrides, f"run.name=chaos-{time.strftime('%Y%m%d-%H%M%S')}"]
        schedule(args.schedule, args.seed)
        market = Market(args, overrides)
    except C.ConfigError as e:
        print(f"spotrun: config error: {e}", file=sys.stderr)
        return C.EXIT_BAD_INPUT
    try:
        rc = run_market(market, args)
        if rc != C.EXIT_OK:
            print(f"spotrun chaos: run did not finish (exit {rc})", file=sys.stderr)
            return rc
        identical = compare_final(market, overrides) if args.verify else None
    finally:
        market.close()
    events = read_events(market.storage, market.run_name)
    from spotrun.core.cost import load_prices

    s = summarize(market.run_name, events, load_prices(f"{REPO}/conf/prices.yaml"))
    write_outputs(market.storage, market.run_name, s, events)
    print(markdown(s))
    print(final_line(s, identical))
    return C.EXIT_OK if identical is not False else C.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
