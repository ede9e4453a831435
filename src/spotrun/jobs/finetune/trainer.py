"""Ray Train's TorchTrainer around `loop.train_loop`, as every fine-tune (and every sweep trial) runs
it. Imported when the work starts: a config mistake is reported before torch and Ray Train load."""

from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy, FixedScalingPolicy

from spotrun.core import config as C
from spotrun.jobs.finetune.loop import train_loop
from spotrun.jobs.finetune.scaling import ElasticGroup, FixedGroup

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2 CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


class SpotTrainer(TorchTrainer):
    """Ray Train's TorchTrainer without three helper actors (a process each, ~2.5-3 CPU-seconds to
    start on every launch) that a spotrun run never uses: the dataset manager, when no Ray Dataset is
    given; the placement-group cleaner, which asks the state API whether the controller still lives and
    cannot here (the state API needs the dashboard that spotrun's clusters, local and on SkyPilot,
    start without; it failed every second); and, for a fixed-size group, the autoscaling coordinator
    (`scaling.FixedGroup` says why). An elastic group restarts from a fresh view of the cluster
    (`scaling.ElasticGroup`).
    Pinned ray==2.60.0: `_create_default_callbacks` is Ray Train's own list of callbacks, and
    `_initialize_and_run_controller` receives the scaling policy `fit` made."""

    def _create_default_callbacks(self) -> list:
        unused = (
            (PlacementGroupCleanerCallback,)
            if self.datasets
            else (PlacementGroupCleanerCallback, DatasetsCallback)
        )
        return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        ours = {FixedScalingPolicy: FixedGroup, ElasticScalingPolicy: ElasticGroup}
        policy = ours.get(type(controller_init_kwargs.get("scaling_policy")))
        if policy is not None:
            controller_init_kwargs["scaling_policy"] = policy(self.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)


def build_trainer(cfg, run_name: str, storage, job: dict, callbacks: list | None = None) -> TorchTrainer:
    # spotrun's store decides what a run resumes from. Ray's own snapshot of reported checkpoints
    # would still name folders the store has since pruned (checkpoint.keep), and Ray refuses to start
    # on a snapshot with a missing checkpoint: start Ray's record afresh on every launch.
    storage.delete_file(storage.path(run_name, RAY_SNAPSHOT))
    lo, hi = C.worker_range(cfg.trainer.num_workers)
    return SpotTrainer(
        train_loop,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if cfg.trainer.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=lo if lo == hi else (lo, hi), use_gpu=cfg.trainer.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.base,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            # spotrun's store owns retention: it also sees checkpoints Ray never recorded.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks,  # a sweep forwards each report to Ray Tune
        ),
    )
