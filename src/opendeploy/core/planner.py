"""Turning a deployment group's matching instances into an ordered deployment plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opendeploy.core.deployments import EventStatus, InstanceTarget, LifecycleEvent, TargetStatus
from opendeploy.core.rollout import Standing, Target, order_targets, standing

__all__ = ["InstanceHealth", "plan_targets", "standing_of"]


@dataclass(frozen=True)
class InstanceHealth:
    """What the group knows of an instance from earlier deployments (codedeploy-spec §6.2)."""

    healthy: bool
    revision_identity: str | None


def standing_of(health: InstanceHealth | None, deploying: str) -> Standing:
    """Never deployed counts as unhealthy, so such instances go first."""
    if health is None:
        return Standing.UNHEALTHY
    return standing(health.healthy, health.revision_identity, deploying)


def plan_targets(
    deployment_id: str,
    instances: Iterable[str],
    health: Mapping[str, InstanceHealth],
    *,
    revision_identity: str,
    events: tuple[str, ...],
    now: float,
    outdated_only: bool = False,
) -> tuple[InstanceTarget, ...]:
    """Targets in dispatch order. With ``outdated_only`` the instances already at this revision
    are planned as Skipped (updateOutdatedInstancesOnly)."""
    ordered = order_targets(
        Target(name, standing_of(health.get(name), revision_identity)) for name in instances
    )
    targets = []
    for position, target in enumerate(ordered):
        skip = outdated_only and target.standing is Standing.CURRENT_REVISION
        status = EventStatus.SKIPPED if skip else EventStatus.PENDING
        targets.append(
            InstanceTarget(
                deployment_id=deployment_id,
                instance_name=target.name,
                position=position,
                standing=int(target.standing),
                status=TargetStatus.SKIPPED if skip else TargetStatus.PENDING,
                events=tuple(LifecycleEvent(name, status) for name in events),
                last_updated=now,
            )
        )
    return tuple(targets)
