"""Ray Train's fixed-size scaling policy, without asking Ray Data's autoscaling coordinator for the
resources. Ray Train sends that request at the controller's start and every 20 s after, to a
coordinator actor it creates for the purpose: one more process on every launch (~2.6 CPU-seconds, and
a wait of up to 5 s at start-up). A fixed-size group gains nothing from it: the group's placement group
is the request that a Ray autoscaler acts on, and spotrun's clusters (the local one, SkyPilot's) have a
fixed set of nodes. An elastic group keeps Ray's policy: it sizes itself from the coordinator's
reservations.

Kept apart from `trainer`: the Train controller unpickles this policy, and must not import torch or
spotrun's loop to do so. Pinned ray==2.60.0 (the three request methods are ScalingPolicy's own)."""

from __future__ import annotations

from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy


class FixedGroup(FixedScalingPolicy):
    def _maybe_send_resource_request(self) -> None:
        pass

    def _send_resource_request(self) -> None:
        pass

    def _cancel_resource_request(self) -> None:
        pass
