"""The fine-tune's own stateful components: the data position, the run's carried metadata, the
task's model tensors. Each snapshots and restores itself (spotrun.recovery.state.Stateful)."""

from __future__ import annotations

from spotrun.jobs.finetune.data import Position


class DataState:
    """The step and the position in the data (the sampler itself is a pure function of them)."""

    def __init__(self, worker):
        self.w = worker

    def save(self):
        return {}, {"step": self.w.step, "position": vars(self.w.pos)}

    def load(self, tensors, meta) -> None:
        self.w.step, self.w.pos = meta["step"], Position(**meta["position"])


class RunState:
    """What the run carries across launches: metrics before training, the wandb id, resume count."""

    def __init__(self, meta: dict):
        self.meta = meta

    def save(self):
        return {}, dict(self.meta)

    def load(self, tensors, meta) -> None:
        self.meta.clear()
        self.meta.update(meta)


class ModelState:
    """The task's checkpointed model tensors (a LoRA run: the adapter only)."""

    def __init__(self, task):
        self.task = task

    def save(self):
        return self.task.state_tensors(), {}

    def load(self, tensors, meta) -> None:
        self.task.load_state(tensors)
