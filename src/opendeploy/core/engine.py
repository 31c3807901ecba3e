"""The deployment engine: ``decide(snapshot, event, now) -> Decision``.

Every change of a deployment's state is an event fed here; the result is applied by the store
in one transaction. The engine never reads a clock, a database or the network, so any replica
(or a restarted server) reaches the same decision from the same stored snapshot.

Per instance, the events of ``core.lifecycle`` run one host command at a time; across
instances, ``core.rollout`` decides who may start and how the deployment ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from opendeploy.core.deployments import (
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventStatus,
    HostCommand,
    InstanceTarget,
    LifecycleEvent,
    TargetStatus,
    advance,
)
from opendeploy.core.lifecycle import STOP_EVENTS, lifecycle_error_code
from opendeploy.core.revisions import revision_identity
from opendeploy.core.rollout import (
    MAX_INSTANCES_PER_DEPLOYMENT,
    MinimumHealthyHosts,
    RolloutState,
    Standing,
    Target,
    check_start,
    is_stuck,
    next_dispatch,
    outcome,
)

__all__ = [
    "ROLLBACK_CREATOR",
    "AlarmActive",
    "CommandAcked",
    "CommandCompleted",
    "Decision",
    "Event",
    "HealthUpdate",
    "HostLost",
    "Notification",
    "Snapshot",
    "Started",
    "StopRequested",
    "command_id",
    "decide",
]

HOST_LOST_PREFIX = "Agent heartbeat lost:"
ROLLBACK_CREATOR = "codeDeployRollback"
_DEPLOYMENT_EVENTS = {
    DeploymentStatus.IN_PROGRESS: "DeploymentStart",
    DeploymentStatus.SUCCEEDED: "DeploymentSuccess",
    DeploymentStatus.FAILED: "DeploymentFailure",
    DeploymentStatus.STOPPED: "DeploymentStop",
}
_INSTANCE_EVENTS = {
    TargetStatus.IN_PROGRESS: "InstanceStart",
    TargetStatus.SUCCEEDED: "InstanceSuccess",
    TargetStatus.FAILED: "InstanceFailure",
}
HEALTH_CONSTRAINTS_MESSAGE = (
    "The overall deployment failed because too many individual instances failed deployment, "
    "too few healthy instances are available for deployment, or some instances in your "
    "deployment group are experiencing problems."
)
#: Failed instances the deployment's error message names; the rest are counted.
_FAILURES_NAMED = 10
_START_FAILURES = {
    "NO_INSTANCES": "The deployment group matches no registered instances.",
    "OVER_MAX_INSTANCES": "The deployment group matches more instances than one deployment "
    "may target.",
    "HEALTH_CONSTRAINTS_INVALID": "The deployment configuration's minimum number of healthy "
    "hosts cannot be met with this many instances.",
}


@dataclass(frozen=True)
class Snapshot:
    deployment: Deployment
    targets: Mapping[str, InstanceTarget]
    #: Unfinished host commands, by instance name.
    commands: Mapping[str, HostCommand] = field(default_factory=dict)


@dataclass(frozen=True)
class Started:
    """The deployment was created with its targets: begin the rollout. More targets than
    ``max_instances`` (AWS's quota is 1000, adjustable) fail it with OVER_MAX_INSTANCES."""

    max_instances: int | None = MAX_INSTANCES_PER_DEPLOYMENT


@dataclass(frozen=True)
class CommandAcked:
    command_id: str
    #: The command's host, when the caller knows it: finds the command without a scan.
    instance_name: str = ""


@dataclass(frozen=True)
class CommandCompleted:
    """An agent reported a command's outcome.

    ``take_next``: the agent takes the host's next command of this deployment in the answer
    (OpenDeploy's agent does): that command is issued handed over and acknowledged, so the
    host's next lifecycle event costs no poll, no hand-over and no acknowledgement.
    """

    command_id: str
    succeeded: bool
    agent_code: int = 0
    script_name: str = ""
    message: str = ""
    log_tail: str = ""
    take_next: bool = False
    #: The command's host, when the caller knows it: finds the command without a scan.
    instance_name: str = ""


@dataclass(frozen=True)
class HostLost:
    """The instance's agent stopped answering while it had work (heartbeat lost)."""

    instance_name: str
    silent_seconds: float
    timeout_seconds: float

    @property
    def message(self) -> str:
        return (
            f"{HOST_LOST_PREFIX} the agent on {self.instance_name} has not contacted the server "
            f"for {self.silent_seconds:.0f} s (heartbeat timeout {self.timeout_seconds:.0f} s). "
            "The lifecycle event did not complete; no script was reported failing."
        )


@dataclass(frozen=True)
class StopRequested:
    """StopDeployment. ``rollback``: True or False as asked (autoRollbackEnabled); None
    follows the deployment's DEPLOYMENT_STOP_ON_REQUEST setting."""

    message: str = "Deployment stopped by user."
    rollback: bool | None = None


@dataclass(frozen=True)
class AlarmActive:
    """A monitored alarm fired (or could not be read, failing closed): stop the deployment."""

    message: str


Event = Started | CommandAcked | CommandCompleted | HostLost | StopRequested | AlarmActive


@dataclass(frozen=True)
class Notification:
    """A trigger event (codedeploy-spec §8.7) the deployment's state change produced."""

    event: str
    instance_name: str | None = None


@dataclass(frozen=True)
class HealthUpdate:
    """An instance's standing in its group after it finished in this deployment."""

    instance_name: str
    healthy: bool
    revision_identity: str | None


@dataclass(frozen=True)
class Decision:
    """What changed. Empty when the event changed nothing (e.g. a duplicate completion)."""

    deployment: Deployment | None = None
    targets: tuple[InstanceTarget, ...] = ()
    commands: tuple[HostCommand, ...] = ()
    health: tuple[HealthUpdate, ...] = ()
    notifications: tuple[Notification, ...] = ()
    #: When the decision was taken (the ``now`` it was given).
    now: float = 0.0
    #: The deployment ended in a way its autoRollbackConfiguration answers with a rollback.
    rollback: bool = False

    @property
    def new_commands(self) -> tuple[HostCommand, ...]:
        return tuple(c for c in self.commands if c.status is CommandStatus.PENDING)

    @property
    def empty(self) -> bool:
        return self.deployment is None and not self.targets and not self.commands


class _Work:
    """The mutable scratch state of one decision."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self.now = now
        self.original = snapshot.deployment
        self.deployment = snapshot.deployment
        self.original_targets = snapshot.targets
        self.targets = dict(snapshot.targets)
        self.commands = dict(snapshot.commands)
        self.changed_targets: set[str] = set()
        self.changed_commands: dict[str, HostCommand] = {}
        self.health: list[HealthUpdate] = []
        #: Some target changed status: the rollout may move (start hosts, end).
        self.rollout_moved = False

    def set_target(self, target: InstanceTarget) -> None:
        if target.status is not self.targets[target.instance_name].status:
            self.rollout_moved = True
        self.targets[target.instance_name] = target
        self.changed_targets.add(target.instance_name)

    def set_command(self, command: HostCommand) -> None:
        self.changed_commands[command.command_id] = command
        if command.status in (CommandStatus.SUCCEEDED, CommandStatus.FAILED):
            self.commands.pop(command.instance_name, None)
        else:
            self.commands[command.instance_name] = command

    def command_by_id(self, command_id: str, instance_name: str = "") -> HostCommand | None:
        """The open command ``command_id``; ``instance_name``, when given, is its host."""
        if instance_name:
            command = self.commands.get(instance_name)
            return command if command is not None and command.command_id == command_id else None
        return next((c for c in self.commands.values() if c.command_id == command_id), None)

    def set_status(self, status: DeploymentStatus, **changes: Any) -> None:
        self.deployment = replace(
            self.deployment, status=advance(self.deployment.status, status), **changes
        )

    def decision(self) -> Decision:
        targets = tuple(self.targets[name] for name in sorted(self.changed_targets))
        return Decision(
            deployment=None if self.deployment == self.original else self.deployment,
            targets=targets,
            commands=tuple(self.changed_commands.values()),
            health=tuple(self.health),
            notifications=self._notifications(targets),
            now=self.now,
            rollback=self._rollback(),
        )

    def _notifications(self, targets: tuple[InstanceTarget, ...]) -> tuple[Notification, ...]:
        """Trigger events, read off the status changes of this decision."""
        found: list[Notification] = []
        for target in targets:
            before = self.original_targets[target.instance_name].status
            event = _INSTANCE_EVENTS.get(target.status)
            if event is not None and target.status is not before:
                found.append(Notification(event, target.instance_name))
        before_status, after = self.original.status, self.deployment.status
        event = _DEPLOYMENT_EVENTS.get(after)
        if event is not None and after is not before_status:
            found.append(Notification(event))
        return tuple(found)

    def _rollback(self) -> bool:
        """Whether the deployment just ended in a way that calls for a rollback (§8.5)."""
        deployment = self.deployment
        if deployment.status is self.original.status or deployment.active:
            return False
        if deployment.details.get("creator") == ROLLBACK_CREATOR:
            return False
        config = deployment.details.get("autoRollbackConfiguration") or {}
        events = set(config.get("events") or []) if config.get("enabled") else set()
        if deployment.status is DeploymentStatus.FAILED:
            return "DEPLOYMENT_FAILURE" in events
        if deployment.status is not DeploymentStatus.STOPPED:
            return False
        if deployment.error_code == "ALARM_ACTIVE":
            return "DEPLOYMENT_STOP_ON_ALARM" in events
        if deployment.rollback_on_stop is not None:
            return deployment.rollback_on_stop
        return "DEPLOYMENT_STOP_ON_REQUEST" in events


def decide(snapshot: Snapshot, event: Event, now: float) -> Decision:
    """The consequences of ``event`` for the deployment in ``snapshot`` at time ``now``."""
    if not snapshot.deployment.active:
        return Decision()
    work = _Work(snapshot, now)
    if isinstance(event, Started):
        _start(work, event)
    elif isinstance(event, CommandAcked):
        _acked(work, event)
    elif isinstance(event, CommandCompleted):
        _completed(work, event)
    elif isinstance(event, HostLost):
        _host_lost(work, event)
    else:
        _stop(work, event)
    # Every decision leaves the rollout settled (all who may start have started, an ended
    # rollout has ended), so only an event that moved a target or the deployment can
    # unsettle it; skipping the others keeps each event's cost flat in the fleet size.
    unsettled = work.rollout_moved or work.deployment != work.original
    if work.deployment.active and unsettled:
        _schedule(work)
    return work.decision()


def _minimum(deployment: Deployment) -> MinimumHealthyHosts:
    return MinimumHealthyHosts.from_api(deployment.minimum_healthy_hosts)


def _start(work: _Work, event: Started) -> None:
    deployment = work.deployment
    if deployment.status is not DeploymentStatus.CREATED:
        return
    # Hosts planned Skipped (updateOutdatedInstancesOnly) are not part of N (§6.2, §8.3).
    planned = sum(1 for t in work.targets.values() if t.status is not TargetStatus.SKIPPED)
    failure = check_start(_minimum(deployment), planned, max_instances=event.max_instances)
    if failure is not None:
        _skip_all_pending(work)
        work.set_status(
            DeploymentStatus.FAILED,
            start_time=work.now,
            complete_time=work.now,
            error_code=failure,
            error_message=_START_FAILURES[failure],
        )
        return
    work.set_status(DeploymentStatus.IN_PROGRESS, start_time=work.now)


def _acked(work: _Work, event: CommandAcked) -> None:
    command = work.command_by_id(event.command_id, event.instance_name)
    if command is None or command.status is CommandStatus.IN_PROGRESS:
        return
    work.set_command(
        replace(
            command,
            status=advance(command.status, CommandStatus.IN_PROGRESS),
            acked_time=work.now,
        )
    )
    target = work.targets[command.instance_name]
    lifecycle = target.event(command.event)
    if lifecycle.status is EventStatus.PENDING:
        work.set_target(
            target.with_event(
                replace(lifecycle, status=EventStatus.IN_PROGRESS, start_time=work.now),
                work.now,
            )
        )


def _diagnostics(event: CommandCompleted) -> dict[str, str]:
    if event.succeeded:
        return {"errorCode": "Success", "scriptName": "", "message": "Succeeded", "logTail": ""}
    code = lifecycle_error_code(event.agent_code)
    return {
        # A failure never reads "Success", whatever code came with it (HostLost sends none).
        "errorCode": "UnknownError" if code == "Success" else code,
        "scriptName": event.script_name,
        "message": event.message or "The lifecycle event failed.",
        "logTail": event.log_tail,
    }


def _completed(work: _Work, event: CommandCompleted) -> None:
    command = work.command_by_id(event.command_id, event.instance_name)
    if command is None:
        return
    final = CommandStatus.SUCCEEDED if event.succeeded else CommandStatus.FAILED
    work.set_command(
        replace(command, status=advance(command.status, final), completed_time=work.now)
    )
    target = work.targets[command.instance_name]
    lifecycle = target.event(command.event)
    diagnostics = _diagnostics(event)
    succeeded = event.succeeded
    if (
        not succeeded
        and command.event in STOP_EVENTS
        and work.deployment.ignore_application_stop_failures
    ):
        succeeded = True
        diagnostics = {
            **diagnostics,
            "message": "Failure ignored (ignoreApplicationStopFailures): " + diagnostics["message"],
        }
    status = EventStatus.SUCCEEDED if succeeded else EventStatus.FAILED
    target = target.with_event(
        replace(
            lifecycle,
            status=advance(lifecycle.status, status),
            start_time=lifecycle.start_time or command.acked_time or work.now,
            end_time=work.now,
            diagnostics=diagnostics,
        ),
        work.now,
    )
    stopped_part_way = work.deployment.stop_requested and any(
        e.status is EventStatus.PENDING for e in target.events
    )
    if succeeded and not stopped_part_way:
        # After a stop this only finishes a host whose last event just succeeded.
        _continue_instance(work, target, taken=event.take_next)
    else:
        _finish_instance(work, target, succeeded=False)


def _continue_instance(work: _Work, target: InstanceTarget, *, taken: bool) -> None:
    """Issue the host's next event, or finish it; ``taken``: the agent receives the next
    command in the answer to its completion (handed over and acknowledged now)."""
    following = next((e for e in target.events if e.status is EventStatus.PENDING), None)
    if following is None:
        _finish_instance(work, target, succeeded=True)
        return
    work.set_target(target)
    issued = _issue_command(work, target, following.name, handed_over=taken)
    if taken:
        _acked(work, CommandAcked(issued.command_id, issued.instance_name))


def _finish_instance(work: _Work, target: InstanceTarget, *, succeeded: bool) -> None:
    events = tuple(
        replace(e, status=EventStatus.SKIPPED) if e.status is EventStatus.PENDING else e
        for e in target.events
    )
    final = TargetStatus.SUCCEEDED if succeeded else TargetStatus.FAILED
    work.set_target(
        replace(
            target,
            status=advance(target.status, final),
            events=events,
            last_updated=work.now,
        )
    )
    identity = revision_identity(work.deployment.revision) if succeeded else None
    work.health.append(HealthUpdate(target.instance_name, succeeded, identity))


def command_id(deployment_id: str, position: int, event_index: int) -> str:
    """The id of the host command running event ``event_index`` on target ``position``."""
    return f"hc-{deployment_id}-{position}-{event_index}"


def _issue_command(
    work: _Work, target: InstanceTarget, event_name: str, *, handed_over: bool = False
) -> HostCommand:
    index = [e.name for e in target.events].index(event_name)
    command = HostCommand(
        command_id=command_id(target.deployment_id, target.position, index),
        deployment_id=target.deployment_id,
        instance_name=target.instance_name,
        event=event_name,
        status=CommandStatus.PENDING,
        created_time=work.now,
        dispatched_time=work.now if handed_over else None,
    )
    work.set_command(command)
    return command


def _host_lost(work: _Work, event: HostLost) -> None:
    command = work.commands.get(event.instance_name)
    if command is None:
        return
    _completed(
        work,
        CommandCompleted(command_id=command.command_id, succeeded=False, message=event.message),
    )


def _stop(work: _Work, event: StopRequested | AlarmActive) -> None:
    if work.deployment.stop_requested:
        return
    if isinstance(event, AlarmActive):
        code, rollback = "ALARM_ACTIVE", None
    else:
        code, rollback = "MANUAL_STOP", event.rollback
    work.deployment = replace(
        work.deployment,
        stop_requested=True,
        rollback_on_stop=rollback,
        error_code=code,
        error_message=event.message,
    )
    _withdraw_undelivered(work)
    _skip_all_pending(work)


def _withdraw_undelivered(work: _Work) -> None:
    """Take back commands no agent has received yet: a stop must not wait for them.

    A host that had not started any event ends Skipped; one stopped between events ends
    Failed, like any host stopped part-way.
    """
    for command in list(work.commands.values()):
        if command.status is not CommandStatus.PENDING or command.dispatched_time is not None:
            continue
        work.set_command(
            replace(
                command,
                status=advance(command.status, CommandStatus.FAILED),
                completed_time=work.now,
            )
        )
        target = work.targets[command.instance_name]
        if all(event.status is EventStatus.PENDING for event in target.events):
            work.set_target(_skipped(target, work.now))
        else:
            _finish_instance(work, target, succeeded=False)


def _skip_all_pending(work: _Work) -> None:
    for target in list(work.targets.values()):
        if target.status is TargetStatus.PENDING:
            work.set_target(_skipped(target, work.now))


def _skipped(target: InstanceTarget, now: float) -> InstanceTarget:
    return replace(
        target,
        status=advance(target.status, TargetStatus.SKIPPED),
        events=tuple(replace(e, status=EventStatus.SKIPPED) for e in target.events),
        last_updated=now,
    )


def _rollout(work: _Work) -> RolloutState:
    ordered = sorted(work.targets.values(), key=lambda t: t.position)
    by_status: dict[TargetStatus, frozenset[str]] = {
        status: frozenset(t.instance_name for t in ordered if t.status is status)
        for status in (TargetStatus.SUCCEEDED, TargetStatus.FAILED, TargetStatus.IN_PROGRESS)
    }
    skipped = {t.instance_name for t in ordered if t.status is TargetStatus.SKIPPED}
    return RolloutState(
        _minimum(work.deployment),
        tuple(
            Target(t.instance_name, Standing(t.standing))
            for t in ordered
            if t.instance_name not in skipped
        ),
        succeeded=by_status[TargetStatus.SUCCEEDED],
        failed=by_status[TargetStatus.FAILED],
        in_flight=by_status[TargetStatus.IN_PROGRESS],
    )


def _schedule(work: _Work) -> None:
    """Start whoever may start; end the deployment when the rollout is over."""
    if work.deployment.stop_requested:
        # Stopped once nothing runs any more, even before it started (Created -> Stopped).
        if not any(t.status is TargetStatus.IN_PROGRESS for t in work.targets.values()):
            work.set_status(DeploymentStatus.STOPPED, complete_time=work.now)
        return
    if work.deployment.status is not DeploymentStatus.IN_PROGRESS:
        return
    if _all_started_some_running(work):
        # What the planner would say, without building the plan (O(fleet) per finished host):
        # nobody is left to start and, with hosts in flight, the rollout is neither over nor
        # stuck (``next_dispatch`` is empty, ``outcome`` None).
        return
    state = _rollout(work)
    starting = next_dispatch(state)
    for name in starting:
        target = work.targets[name]
        started = replace(
            target, status=advance(target.status, TargetStatus.IN_PROGRESS), last_updated=work.now
        )
        work.set_target(started)
        _issue_command(work, started, started.events[0].name)
    state = state.start(starting)
    result = outcome(state)
    if result is None:
        return
    if result == "Succeeded":
        work.set_status(DeploymentStatus.SUCCEEDED, complete_time=work.now)
        return
    if is_stuck(state):
        _skip_all_pending(work)
    work.set_status(
        DeploymentStatus.FAILED,
        complete_time=work.now,
        error_code="AGENT_ISSUE" if _only_lost_hosts_failed(work) else "HEALTH_CONSTRAINTS",
        error_message=_failure_message(work),
    )


def _all_started_some_running(work: _Work) -> bool:
    """No target waits to start and at least one is in progress."""
    running = False
    for target in work.targets.values():
        status = target.status
        if status is TargetStatus.PENDING:
            return False
        if status is TargetStatus.IN_PROGRESS:
            running = True
    return running


def _failed_event(target: InstanceTarget) -> LifecycleEvent | None:
    return next((e for e in target.events if e.status is EventStatus.FAILED), None)


def _only_lost_hosts_failed(work: _Work) -> bool:
    """Every failed instance failed because its agent went silent, not because of a script."""
    failed = [t for t in work.targets.values() if t.status is TargetStatus.FAILED]
    messages = [((_failed_event(t) or LifecycleEvent("")).diagnostics or {}) for t in failed]
    return bool(failed) and all(m.get("message", "").startswith(HOST_LOST_PREFIX) for m in messages)


def _failure_message(work: _Work) -> str:
    """AWS's words, then which hosts failed where: the detail AWS leaves out."""
    details = []
    for target in sorted(work.targets.values(), key=lambda t: t.position):
        if target.status is not TargetStatus.FAILED:
            continue
        failed = _failed_event(target)
        if failed is None:
            details.append(target.instance_name)
            continue
        diagnostics = failed.diagnostics or {}
        script = diagnostics.get("scriptName") or ""
        where = f"{failed.name}, {script}" if script else failed.name
        details.append(f"{target.instance_name} ({where}): {diagnostics.get('message', '')}")
    if not details:
        return HEALTH_CONSTRAINTS_MESSAGE
    shown = "; ".join(details[:_FAILURES_NAMED])
    if len(details) > _FAILURES_NAMED:
        shown += f"; and {len(details) - _FAILURES_NAMED} more failed instances"
    return HEALTH_CONSTRAINTS_MESSAGE + " Failed instances: " + shown
