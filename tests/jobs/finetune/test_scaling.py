"""Ray Train's elastic policy as spotrun runs it: a group restarted after a node loss is sized from
the cluster as it is now, not from the autoscaling coordinator's view of up to 20 s before."""

from __future__ import annotations

import time
import types

import pytest

pytestmark = pytest.mark.slow


def test_a_restart_after_a_node_loss_is_sized_from_the_nodes_left(monkeypatch):
    import ray  # (Ray Train's imports here, not in every xdist worker's collection)
    from ray.cluster_utils import Cluster
    from ray.train import ScalingConfig

    from spotrun.jobs.finetune.scaling import ElasticGroup

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        policy = ElasticGroup(ScalingConfig(num_workers=(1, 2)))
        policy.after_controller_start(types.SimpleNamespace(run_id="scaling"))  # the controller's call
        assert policy.make_decision_for_non_running_worker_group().num_workers == 2
        cluster.remove_node(nodes[1])
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) > 2 and time.monotonic() < deadline:  # head + 1
            time.sleep(0.2)
        # the coordinator's own refresh is 20 s away: Ray's policy would still count the lost node
        assert policy.make_decision_for_non_running_worker_group().num_workers == 1
    finally:
        ray.shutdown()
        cluster.shutdown()
