"""Deployments: snapshots for the engine, and applying its decisions atomically."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.core.deployments import (
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventStatus,
    HostCommand,
    InstanceTarget,
    LifecycleEvent,
    TargetStatus,
)
from opendeploy.core.errors import Conflict
from opendeploy.core.planner import InstanceHealth
from opendeploy.core.revisions import revision_identity
from opendeploy.store.polls import running_condition, waiting_now
from opendeploy.store.tables import (
    command_logs,
    deployment_targets,
    deployments,
    host_commands,
    instance_health,
    notifications,
)

__all__ = [
    "active_commands",
    "active_for_group",
    "add_notification",
    "append_log",
    "by_id",
    "command_by_id",
    "command_from_row",
    "create",
    "deployment_from_row",
    "deployment_values",
    "events_json",
    "health_of",
    "ids",
    "log_of",
    "next_commands_for",
    "overdue_commands",
    "revisions_deployed_to",
    "running_commands",
    "set_details",
    "status_counts",
    "target_from_row",
    "target_names",
    "target_status_counts",
    "targets_of",
]

_OPEN = (CommandStatus.PENDING.value, CommandStatus.IN_PROGRESS.value)


def deployment_from_row(row: Row[Any]) -> Deployment:
    return Deployment(
        deployment_id=row.id,
        application_id=row.application_id,
        application_name=row.application_name,
        group_id=row.group_id,
        group_name=row.group_name,
        config_name=row.config_name,
        minimum_healthy_hosts=row.minimum_healthy_hosts,
        revision=row.revision,
        status=DeploymentStatus(row.status),
        create_time=row.create_time,
        ignore_application_stop_failures=row.ignore_application_stop_failures,
        file_exists_behavior=row.file_exists_behavior,
        deployment_type=row.deployment_type,
        start_time=row.start_time,
        complete_time=row.complete_time,
        error_code=row.error_code,
        error_message=row.error_message,
        stop_requested=row.stop_requested,
        rollback_on_stop=row.rollback_on_stop,
        status_messages=tuple(row.status_messages),
        details=row.details,
    )


def deployment_values(deployment: Deployment) -> dict[str, Any]:
    return {
        "status": deployment.status.value,
        "active_group_id": deployment.group_id if deployment.active else None,
        "start_time": deployment.start_time,
        "complete_time": deployment.complete_time,
        "error_code": deployment.error_code,
        "error_message": deployment.error_message,
        "stop_requested": deployment.stop_requested,
        "rollback_on_stop": deployment.rollback_on_stop,
        "status_messages": list(deployment.status_messages),
        "details": dict(deployment.details),
    }


def events_json(events: Iterable[LifecycleEvent]) -> list[dict[str, Any]]:
    return [
        {
            "name": e.name,
            "status": e.status.value,
            "start": e.start_time,
            "end": e.end_time,
            "diagnostics": dict(e.diagnostics) if e.diagnostics is not None else None,
        }
        for e in events
    ]


def target_from_row(row: Row[Any]) -> InstanceTarget:
    return InstanceTarget(
        deployment_id=row.deployment_id,
        instance_name=row.instance_name,
        position=row.position,
        standing=row.standing,
        status=TargetStatus(row.status),
        events=tuple(
            LifecycleEvent(
                name=e["name"],
                status=EventStatus(e["status"]),
                start_time=e["start"],
                end_time=e["end"],
                diagnostics=e["diagnostics"],
            )
            for e in row.events
        ),
        last_updated=row.last_updated,
    )


def command_from_row(row: Row[Any]) -> HostCommand:
    return HostCommand(
        command_id=row.id,
        deployment_id=row.deployment_id,
        instance_name=row.instance_name,
        event=row.event,
        status=CommandStatus(row.status),
        created_time=row.created_time,
        dispatched_time=row.dispatched_time,
        acked_time=row.acked_time,
        completed_time=row.completed_time,
    )


def create(
    connection: Connection, deployment: Deployment, targets: Sequence[InstanceTarget]
) -> None:
    """Store a new deployment; Conflict when its group already has an active one."""
    values = deployment_values(deployment)
    try:
        with connection.begin_nested():
            connection.execute(
                insert(deployments).values(
                    id=deployment.deployment_id,
                    application_id=deployment.application_id,
                    group_id=deployment.group_id,
                    application_name=deployment.application_name,
                    group_name=deployment.group_name,
                    config_name=deployment.config_name,
                    minimum_healthy_hosts=dict(deployment.minimum_healthy_hosts),
                    revision=dict(deployment.revision),
                    revision_identity=revision_identity(deployment.revision),
                    ignore_application_stop_failures=deployment.ignore_application_stop_failures,
                    file_exists_behavior=deployment.file_exists_behavior,
                    deployment_type=deployment.deployment_type,
                    create_time=deployment.create_time,
                    **values,
                )
            )
    except IntegrityError as error:
        raise Conflict(deployment.group_id) from error
    if targets:
        connection.execute(
            insert(deployment_targets),
            [
                {
                    "deployment_id": t.deployment_id,
                    "instance_name": t.instance_name,
                    "position": t.position,
                    "standing": t.standing,
                    "status": t.status.value,
                    "events": events_json(t.events),
                    "last_updated": t.last_updated,
                }
                for t in targets
            ],
        )


def by_id(connection: Connection, deployment_id: str, *, lock: bool = False) -> Deployment | None:
    statement = select(deployments).where(deployments.c.id == deployment_id)
    if lock:
        statement = statement.with_for_update()
    row = connection.execute(statement).first()
    return None if row is None else deployment_from_row(row)


def targets_of(connection: Connection, deployment_id: str) -> list[InstanceTarget]:
    rows = connection.execute(
        select(deployment_targets)
        .where(deployment_targets.c.deployment_id == deployment_id)
        .order_by(deployment_targets.c.position)
    ).all()
    return [target_from_row(row) for row in rows]


def target_names(connection: Connection, deployment_id: str) -> frozenset[str]:
    """The instance names the deployment targets (without reading their events)."""
    rows = connection.execute(
        select(deployment_targets.c.instance_name).where(
            deployment_targets.c.deployment_id == deployment_id
        )
    ).scalars()
    return frozenset(rows)


def target_status_counts(connection: Connection, deployment_id: str) -> dict[str, int]:
    """How many of the deployment's targets are in each status."""
    rows = connection.execute(
        select(deployment_targets.c.status, func.count())
        .where(deployment_targets.c.deployment_id == deployment_id)
        .group_by(deployment_targets.c.status)
    ).all()
    return {row[0]: int(row[1]) for row in rows}


def active_commands(connection: Connection, deployment_id: str) -> list[HostCommand]:
    rows = connection.execute(
        select(host_commands).where(
            host_commands.c.deployment_id == deployment_id, host_commands.c.status.in_(_OPEN)
        )
    ).all()
    return [command_from_row(row) for row in rows]


def health_of(
    connection: Connection, group_id: str, names: Sequence[str]
) -> dict[str, InstanceHealth]:
    rows = connection.execute(
        select(instance_health).where(
            instance_health.c.group_id == group_id, instance_health.c.instance_name.in_(names)
        )
    ).all()
    return {row.instance_name: InstanceHealth(row.healthy, row.revision_identity) for row in rows}


def active_for_group(connection: Connection, group_id: str) -> Deployment | None:
    row = connection.execute(
        select(deployments).where(deployments.c.active_group_id == group_id)
    ).first()
    return None if row is None else deployment_from_row(row)


def ids(
    connection: Connection,
    *,
    group_id: str | None = None,
    application_id: str | None = None,
    statuses: Sequence[str] = (),
    created_after: float | None = None,
    created_before: float | None = None,
    active_only: bool = False,
) -> list[str]:
    """Deployment ids matching the filters, newest first."""
    statement = select(deployments.c.id)
    if group_id is not None:
        statement = statement.where(deployments.c.group_id == group_id)
    if application_id is not None:
        statement = statement.where(deployments.c.application_id == application_id)
    if statuses:
        statement = statement.where(deployments.c.status.in_(list(statuses)))
    if created_after is not None:
        statement = statement.where(deployments.c.create_time >= created_after)
    if created_before is not None:
        statement = statement.where(deployments.c.create_time <= created_before)
    if active_only:
        statement = statement.where(deployments.c.active_group_id.is_not(None))
    statement = statement.order_by(deployments.c.create_time.desc(), deployments.c.id.desc())
    return list(connection.execute(statement).scalars())


_COMMAND_BY_ID = select(host_commands).where(host_commands.c.id == bindparam("b_id"))


def command_by_id(connection: Connection, command_id: str) -> HostCommand | None:
    row = connection.execute(_COMMAND_BY_ID, {"b_id": command_id}).first()
    return None if row is None else command_from_row(row)


_WAITING_ANY = waiting_now()
_ALL_WAITING = (
    select(host_commands)
    .where(host_commands.c.instance_name.in_(bindparam("b_names", expanding=True)), _WAITING_ANY)
    .order_by(host_commands.c.instance_name, host_commands.c.created_time, host_commands.c.id)
    # PostgreSQL: rows locked in one order, so two claims never deadlock (SQLite: no-op).
    .with_for_update()
)
_HAND_OVER_ANY = (
    update(host_commands)
    .where(host_commands.c.id.in_(bindparam("b_ids", expanding=True)), _WAITING_ANY)
    .values(dispatched_time=bindparam("b_now"))
    .returning(host_commands.c.id)
)


def next_commands_for(
    connection: Connection, instance_names: Sequence[str], *, now: float, redeliver_after: float
) -> list[HostCommand | None]:
    """The oldest command waiting for each of these instances, marked as handed over now, in
    two statements whatever their number (a name given twice gets its two oldest commands).

    A command handed over but never acknowledged is handed over again after
    ``redeliver_after`` seconds (the agent may have died before it could ack). A command is
    never handed over twice at once:
    on PostgreSQL the select locks the waiting rows (in one order, so two such transactions
    do not deadlock) and skips one another transaction handed over meanwhile, handing the
    host's next waiting command instead, if any; the update checks each row again."""
    if not instance_names:
        return []
    wanted = Counter(instance_names)
    handed_before = now - redeliver_after
    rows = connection.execute(
        _ALL_WAITING, {"b_names": list(wanted), "handed_before": handed_before}
    ).all()
    chosen: dict[str, list[Row[Any]]] = {}
    for row in rows:
        picked = chosen.setdefault(row.instance_name, [])
        if len(picked) < wanted[row.instance_name]:
            picked.append(row)
    ids = [row.id for picked in chosen.values() for row in picked]
    if not ids:
        return [None] * len(instance_names)
    claimed = set(
        connection.execute(
            _HAND_OVER_ANY, {"b_ids": ids, "b_now": now, "handed_before": handed_before}
        ).scalars()
    )
    queues = {
        name: [replace(command_from_row(row), dispatched_time=now) for row in picked]
        for name, picked in chosen.items()
    }
    answers: list[HostCommand | None] = []
    for name in instance_names:
        queue = queues.get(name)
        command = queue.pop(0) if queue else None
        answers.append(command if command is not None and command.command_id in claimed else None)
    return answers


_RUNNING = select(host_commands).where(running_condition(bindparam("b_instance")))


def running_commands(connection: Connection, instance_name: str) -> list[HostCommand]:
    """The instance's commands acknowledged and not completed."""
    rows = connection.execute(_RUNNING, {"b_instance": instance_name}).all()
    return [command_from_row(row) for row in rows]


def overdue_commands(connection: Connection) -> list[tuple[HostCommand, str]]:
    """Open commands of active deployments with their deployment's group id."""
    rows = connection.execute(
        select(host_commands, deployments.c.group_id)
        .join(deployments, deployments.c.id == host_commands.c.deployment_id)
        .where(and_(host_commands.c.status.in_(_OPEN), deployments.c.active_group_id.is_not(None)))
    ).all()
    return [(command_from_row(row), row.group_id) for row in rows]


def append_log(connection: Connection, command_id: str, offset: int, text: str) -> int:
    """Store ``text`` at ``offset`` of the command's full log; returns the new size.

    A chunk that starts before the end (a retried upload) overwrites from there, so retries
    never duplicate output.
    """
    row = connection.execute(
        select(command_logs).where(command_logs.c.command_id == command_id)
    ).first()
    if row is None:
        content = text if offset == 0 else ""
        if offset:
            raise ValueError(f"the log of {command_id} starts at 0, not {offset}")
        connection.execute(
            insert(command_logs).values(command_id=command_id, content=content, size=len(content))
        )
        return len(content)
    if offset > row.size:
        raise ValueError(f"the log of {command_id} has {row.size} characters; offset {offset}")
    content = row.content[:offset] + text
    connection.execute(
        update(command_logs)
        .where(command_logs.c.command_id == command_id)
        .values(content=content, size=len(content))
    )
    return len(content)


def log_of(connection: Connection, command_id: str) -> str | None:
    return connection.execute(
        select(command_logs.c.content).where(command_logs.c.command_id == command_id)
    ).scalar()


def revisions_deployed_to(connection: Connection, instance_name: str, limit: int = 50) -> list[Any]:
    """The revisions of the latest deployments that targeted an instance, newest first."""
    rows = connection.execute(
        select(deployments.c.revision)
        .join(deployment_targets, deployment_targets.c.deployment_id == deployments.c.id)
        .where(deployment_targets.c.instance_name == instance_name)
        .order_by(deployments.c.create_time.desc())
        .limit(limit)
    ).all()
    return [row.revision for row in rows]


def set_details(connection: Connection, deployment_id: str, details: Mapping[str, Any]) -> None:
    """Replace a deployment's descriptive members (rollbackInfo and the like, not statuses)."""
    connection.execute(
        update(deployments).where(deployments.c.id == deployment_id).values(details=dict(details))
    )


def add_notification(
    connection: Connection,
    deployment_id: str,
    group_id: str,
    event: str,
    *,
    now: float,
    instance_name: str | None = None,
) -> None:
    connection.execute(
        insert(notifications).values(
            deployment_id=deployment_id,
            group_id=group_id,
            event=event,
            instance_name=instance_name,
            created_time=now,
        )
    )


def status_counts(connection: Connection) -> dict[str, int]:
    """How many deployments are in each status."""
    rows = connection.execute(
        select(deployments.c.status, func.count()).group_by(deployments.c.status)
    ).all()
    return {row[0]: int(row[1]) for row in rows}
