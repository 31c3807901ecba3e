"""Deployments, their instance targets and host commands, with their status tables.

Status values are the API's enums (codedeploy-spec §4). Each lifecycle is a transition table;
``advance`` is the only way a status changes and raises ``IllegalTransition`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

from opendeploy.core.errors import IllegalTransition

__all__ = [
    "ACTIVE_DEPLOYMENT_STATUSES",
    "CommandStatus",
    "Deployment",
    "DeploymentStatus",
    "EventStatus",
    "HostCommand",
    "InstanceTarget",
    "LifecycleEvent",
    "TargetStatus",
    "advance",
]


class DeploymentStatus(StrEnum):
    CREATED = "Created"
    QUEUED = "Queued"
    IN_PROGRESS = "InProgress"
    BAKING = "Baking"
    READY = "Ready"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"


class TargetStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    UNKNOWN = "Unknown"
    READY = "Ready"


class EventStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    UNKNOWN = "Unknown"


class CommandStatus(StrEnum):
    """A host command: created (and possibly handed to the agent), acknowledged, finished."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


ACTIVE_DEPLOYMENT_STATUSES = frozenset(
    {
        DeploymentStatus.CREATED,
        DeploymentStatus.QUEUED,
        DeploymentStatus.IN_PROGRESS,
        DeploymentStatus.BAKING,
        DeploymentStatus.READY,
    }
)

S = TypeVar("S", bound=StrEnum)
_D = DeploymentStatus
_T = TargetStatus
_E = EventStatus
_C = CommandStatus
TRANSITIONS: Mapping[type[StrEnum], Mapping[StrEnum, frozenset[StrEnum]]] = {
    DeploymentStatus: {
        _D.CREATED: frozenset({_D.QUEUED, _D.IN_PROGRESS, _D.FAILED, _D.STOPPED}),
        _D.QUEUED: frozenset({_D.IN_PROGRESS, _D.FAILED, _D.STOPPED}),
        _D.IN_PROGRESS: frozenset({_D.BAKING, _D.READY, _D.SUCCEEDED, _D.FAILED, _D.STOPPED}),
        _D.BAKING: frozenset({_D.SUCCEEDED, _D.FAILED, _D.STOPPED}),
        _D.READY: frozenset({_D.IN_PROGRESS, _D.FAILED, _D.STOPPED}),
        _D.SUCCEEDED: frozenset(),
        _D.FAILED: frozenset(),
        _D.STOPPED: frozenset(),
    },
    TargetStatus: {
        _T.PENDING: frozenset({_T.IN_PROGRESS, _T.SKIPPED}),
        # Skipped: a stop took back the host's first command before any agent received it.
        _T.IN_PROGRESS: frozenset({_T.SUCCEEDED, _T.FAILED, _T.READY, _T.SKIPPED}),
        _T.READY: frozenset({_T.IN_PROGRESS, _T.SUCCEEDED, _T.FAILED}),
        _T.SUCCEEDED: frozenset(),
        _T.FAILED: frozenset(),
        _T.SKIPPED: frozenset(),
        _T.UNKNOWN: frozenset(),
    },
    EventStatus: {
        _E.PENDING: frozenset({_E.IN_PROGRESS, _E.SUCCEEDED, _E.FAILED, _E.SKIPPED}),
        _E.IN_PROGRESS: frozenset({_E.SUCCEEDED, _E.FAILED}),
        _E.SUCCEEDED: frozenset(),
        _E.FAILED: frozenset(),
        _E.SKIPPED: frozenset(),
        _E.UNKNOWN: frozenset(),
    },
    CommandStatus: {
        _C.PENDING: frozenset({_C.IN_PROGRESS, _C.SUCCEEDED, _C.FAILED}),
        _C.IN_PROGRESS: frozenset({_C.SUCCEEDED, _C.FAILED}),
        _C.SUCCEEDED: frozenset(),
        _C.FAILED: frozenset(),
    },
}


def advance(current: S, target: S) -> S:
    """``target`` if the table allows ``current -> target``; staying put is always allowed."""
    if current == target:
        return target
    allowed = TRANSITIONS[type(current)][current]
    if target not in allowed:
        raise IllegalTransition(type(current).__name__, current.value, target.value)
    return target


@dataclass(frozen=True)
class LifecycleEvent:
    name: str
    status: EventStatus = EventStatus.PENDING
    start_time: float | None = None
    end_time: float | None = None
    #: ``errorCode``, ``scriptName``, ``message``, ``logTail`` as the API shows them.
    diagnostics: Mapping[str, str] | None = None

    def to_api(self) -> dict[str, Any]:
        shape: dict[str, Any] = {"lifecycleEventName": self.name, "status": self.status.value}
        if self.start_time is not None:
            shape["startTime"] = self.start_time
        if self.end_time is not None:
            shape["endTime"] = self.end_time
        if self.diagnostics is not None:
            shape["diagnostics"] = dict(self.diagnostics)
        return shape


@dataclass(frozen=True)
class InstanceTarget:
    """One instance of one deployment. ``position`` is its place in the dispatch order;
    ``standing`` its health class at creation (core.rollout.Standing)."""

    deployment_id: str
    instance_name: str
    position: int
    standing: int
    status: TargetStatus
    events: tuple[LifecycleEvent, ...]
    last_updated: float

    def event(self, name: str) -> LifecycleEvent:
        return next(event for event in self.events if event.name == name)

    def with_event(self, updated: LifecycleEvent, now: float) -> InstanceTarget:
        events = tuple(updated if e.name == updated.name else e for e in self.events)
        return replace(self, events=events, last_updated=now)


@dataclass(frozen=True)
class HostCommand:
    command_id: str
    deployment_id: str
    instance_name: str
    event: str
    status: CommandStatus
    created_time: float
    dispatched_time: float | None = None
    acked_time: float | None = None
    completed_time: float | None = None


@dataclass(frozen=True)
class Deployment:
    """A deployment. ``details`` holds the DeploymentInfo members the engine does not
    interpret (description, creator, autoRollbackConfiguration, ...), as the API shows them."""

    deployment_id: str
    application_id: str
    application_name: str
    group_id: str
    group_name: str
    config_name: str
    minimum_healthy_hosts: Mapping[str, Any]
    revision: Mapping[str, Any]
    status: DeploymentStatus
    create_time: float
    ignore_application_stop_failures: bool = False
    file_exists_behavior: str | None = None
    deployment_type: str = "IN_PLACE"
    start_time: float | None = None
    complete_time: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    stop_requested: bool = False
    #: Set by StopDeployment(autoRollbackEnabled): True/False as asked; None follows the config.
    rollback_on_stop: bool | None = None
    status_messages: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_DEPLOYMENT_STATUSES
