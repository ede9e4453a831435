"""Ray Train's scaling policies, as spotrun runs them. Pinned ray==2.60.0: the request methods and
the decision for a group that is not running are ScalingPolicy's and ElasticScalingPolicy's own.

Fixed size: Ray's policy without asking Ray Data's autoscaling coordinator for the resources. Ray
Train sends that request at the controller's start and every 20 s after, to a coordinator actor it
creates for the purpose: one more process on every launch (~2.6 CPU-seconds, and a wait of up to 5 s
at start-up). A fixed-size group gains nothing from it: the group's placement group is the request
that a Ray autoscaler acts on, and spotrun's clusters (the local one, SkyPilot's) have a fixed set of
nodes.

Elastic ([lo, hi] workers): Ray's policy, which sizes the group from the coordinator's reservations;
the coordinator refreshes its view of the cluster every 20 s. After a node was lost, the restarted
group was sized from the stale view: it asked for the lost node's worker too, waited out the worker
group's start timeout, and again until the next refresh. Before each decision for a group that is not
running (its start or a restart; not the running group's polling) the coordinator recomputes from the
cluster as it is now: its own `recompute`, meant for callers that turn the answer into a placement.

Kept apart from `trainer`: the Train controller unpickles these policies, and must not import torch
or spotrun's loop to do so."""

from __future__ import annotations

import contextlib

import ray
from ray.train.v2._internal.execution.scaling_policy import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
    ElasticScalingPolicy,
    FixedScalingPolicy,
)


class FixedGroup(FixedScalingPolicy):
    def _maybe_send_resource_request(self) -> None:
        pass

    def _send_resource_request(self) -> None:
        pass

    def _cancel_resource_request(self) -> None:
        pass


class ElasticGroup(ElasticScalingPolicy):
    def make_decision_for_non_running_worker_group(self):
        with contextlib.suppress(Exception):  # unanswered: Ray's own query below reports it
            ray.get(
                self._autoscaling_coordinator.get_reserved_resources.remote(
                    self._requester_id, recompute=True
                ),
                timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
            )
            self._latest_reserved_resources_query_time = float("-inf")  # read the fresh view now
        return super().make_decision_for_non_running_worker_group()
