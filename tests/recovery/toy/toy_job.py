"""A fourth job kind, added through the registration alone: it gets the spot contract for free.

    python tests/recovery/toy/toy_job.py storage.root=/tmp/runs run.name=t toy.steps=50

Its work: a Ray actor counts to `toy.steps`; the count is the job's state. On a notice the driver
commits the count (`state.json`) and returns; a relaunch resumes from the committed count.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from spotrun.core.config import CloudConf, RunConf, StorageConf
from spotrun.core.errors import require
from spotrun.core.storage import storage_from_cfg
from spotrun.recovery import contract, shield
from spotrun.recovery.contract import JobKind, Outcome


@dataclass
class ToyConf:
    steps: int = 20
    step_s: float = 0.2


@dataclass
class ToyJobConf:
    toy: ToyConf = field(default_factory=ToyConf)
    run: RunConf = field(default_factory=RunConf)
    storage: StorageConf = field(default_factory=StorageConf)
    cloud: CloudConf = field(default_factory=CloudConf)


class ToyJob:
    def __init__(self, cfg):
        self.cfg, self.run_name = cfg, cfg.run.name
        self.storage = storage_from_cfg(cfg)
        self.state = self.storage.path(self.run_name, "state.json")

    def _count(self) -> int:
        return (
            json.loads(self.storage.read_bytes(self.state))["count"] if self.storage.exists(self.state) else 0
        )

    def finished(self) -> str | None:
        done = self.storage.path(self.run_name, "done.json")
        return "counted to the end" if self.storage.exists(done) else None

    def committed(self) -> str | None:
        return f"count {self._count()}" if self.storage.exists(self.state) else None

    def run(self, attempt) -> Outcome:
        import ray

        counter = ray.remote(Counter).remote(self._count())
        count = self._count()
        while count < self.cfg.toy.steps and not attempt.noticed():
            count = ray.get(counter.step.remote(self.cfg.toy.step_s))
            print(f"toy: step {count}", flush=True)
        self._commit(count)
        if count >= self.cfg.toy.steps:
            self.storage.write_bytes(self.storage.path(self.run_name, "done.json"), b"{}")
            return Outcome(finished=True)
        attempt.events.emit("preemption_notice", source="sigterm", notice_ts=attempt.notice.ts)
        attempt.events.emit("preempted", saved=True, count=count)
        return Outcome(saved=f"count {count} committed")

    def _commit(self, count: int) -> None:
        self.storage.check_fence(fresh=True)
        self.storage.write_bytes(self.state, json.dumps({"count": count, "pid": os.getpid()}).encode())


class Counter:
    """A Ray actor: it must outlive the SIGTERM a VM shutdown sends to every process."""

    def __init__(self, start: int):
        self.count = start

    def step(self, seconds: float) -> int:
        time.sleep(seconds)
        self.count += 1
        return self.count


def check(cfg) -> None:
    require(cfg.toy.steps >= 1, "toy.steps", cfg.toy.steps, "an int >= 1")
    require(cfg.run.name is not None, "run.name", cfg.run.name, "a run name")


KIND = contract.register(
    JobKind(
        name="toy",
        check=check,
        prepare=ToyJob,
        schema=lambda: ConfigStore.instance().store(name="toy_schema", node=ToyJobConf),
        conf_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"),
        summary="counts to toy.steps (a test of the spot contract)",
    )
)

if __name__ == "__main__":
    shield.arm()
    sys.exit(contract.main(KIND, sys.argv[1:]))
