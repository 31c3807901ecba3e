"""Engine snapshots: loading a deployment's state for ``decide`` and writing its decisions.

Loading every target and command of a deployment for each event made a rollout quadratic
(at 500 hosts three quarters of the server's CPU went into re-reading targets). So every
applied decision bumps the deployment's ``version`` and stamps the rows it wrote with it;
a process keeps the snapshots it loaded in a ``SnapshotCache`` and, at the next event,
reads only the rows newer than its copy. The deployment row itself is always read (and
locked), so another replica's writes are seen: they show up as newer versions.

The cache is updated only after the transaction that applied a decision commits
(``SnapshotCache.remember``); a decision applied inside a caller's transaction just drops
the entry (``SnapshotCache.forget``), since that transaction may still roll back.

One column is written outside decisions: ``host_commands.dispatched_time`` (the poll that
hands a command over). Decisions therefore never write it back, and the one reader in the
engine, a stop withdrawing undelivered commands, asks for fresh commands.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, insert, select, update

from opendeploy.core.deployments import CommandStatus, HostCommand, InstanceTarget
from opendeploy.core.engine import Decision, Snapshot
from opendeploy.store.deployments import (
    active_commands,
    command_from_row,
    deployment_from_row,
    deployment_values,
    events_json,
    target_from_row,
    targets_of,
)
from opendeploy.store.tables import (
    deployment_targets,
    deployments,
    host_commands,
    instance_health,
    notifications,
)

__all__ = ["Loaded", "SnapshotCache", "advanced", "apply", "load"]

ValueT = TypeVar("ValueT")

_CLOSED = frozenset({CommandStatus.SUCCEEDED, CommandStatus.FAILED})


@dataclass(frozen=True)
class Loaded:
    """A snapshot as of the stored ``version`` of its deployment."""

    snapshot: Snapshot
    version: int


class SnapshotCache:
    """This process's latest snapshots of the deployments it fed events to (LRU-bounded)."""

    def __init__(self, capacity: int = 128) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        #: Loads served without reading any target or command row / with a partial read.
        self.hits = 0
        self.catch_ups = 0

    def get(self, deployment_id: str) -> Loaded | None:
        with self._lock:
            entry = self._entries.get(deployment_id)
            if entry is not None:
                self._entries.move_to_end(deployment_id)
            return entry

    def remember(self, loaded: Loaded, decision: Decision) -> None:
        """Keep ``loaded`` with ``decision`` applied, as of ``loaded.version + 1``.

        Call only after the decision's transaction committed.
        """
        self.keep(advanced(loaded, decision))

    def keep(self, after: Loaded) -> None:
        """Keep ``after`` (call only once it is committed), unless an entry already newer (a
        concurrent event of the same deployment committed later) is kept."""
        deployment_id = after.snapshot.deployment.deployment_id
        with self._lock:
            current = self._entries.get(deployment_id)
            if current is not None and current.version >= after.version:
                return
            if not after.snapshot.deployment.active:
                self._entries.pop(deployment_id, None)
                return
            self._entries[deployment_id] = after
            self._entries.move_to_end(deployment_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget(self, deployment_id: str) -> None:
        with self._lock:
            self._entries.pop(deployment_id, None)


def advanced(loaded: Loaded, decision: Decision, *, in_place: bool = False) -> Loaded:
    """``loaded`` with ``decision`` applied: what ``apply`` makes the stored state.

    ``in_place``: update ``loaded``'s own mappings instead of copies, for a caller that holds
    the only reference to them (a transaction's chain of snapshots, which ``load`` always
    builds afresh). Copying every target and open command for each event made a large
    deployment's events cost time in proportion to its hosts (6 % of the server's CPU at
    2,000 hosts)."""
    snapshot = loaded.snapshot
    targets = _own(snapshot.targets, in_place)
    targets.update((t.instance_name, t) for t in decision.targets)
    commands = _own(snapshot.commands, in_place)
    for command in decision.commands:
        _merge_command(commands, command)
    return Loaded(
        Snapshot(
            deployment=decision.deployment or snapshot.deployment,
            targets=targets,
            commands=commands,
        ),
        loaded.version + 1,
    )


def _own(mapping: Mapping[str, ValueT], in_place: bool) -> dict[str, ValueT]:
    if in_place and isinstance(mapping, dict):
        return mapping
    return dict(mapping)


def _merge_command(open_commands: dict[str, HostCommand], command: HostCommand) -> None:
    """Fold one written command into the open commands by instance."""
    if command.status in _CLOSED:
        current = open_commands.get(command.instance_name)
        if current is not None and current.command_id == command.command_id:
            del open_commands[command.instance_name]
    else:
        open_commands[command.instance_name] = command


def load(
    connection: Connection,
    deployment_id: str,
    cache: SnapshotCache | None = None,
    *,
    fresh_commands: bool = False,
) -> Loaded | None:
    """The deployment's snapshot, its row locked for update (PostgreSQL) so that one
    deployment's events apply one at a time; from ``cache`` plus newer rows when it can.

    ``fresh_commands``: read the open commands anew (their dispatch times are current).
    """
    row = connection.execute(
        select(deployments).where(deployments.c.id == deployment_id).with_for_update()
    ).first()
    if row is None:
        return None
    deployment = deployment_from_row(row)
    cached = cache.get(deployment_id) if cache is not None else None
    if cache is None or cached is None or cached.version > row.version:
        targets = {t.instance_name: t for t in targets_of(connection, deployment_id)}
        commands = {c.instance_name: c for c in active_commands(connection, deployment_id)}
    else:
        targets, commands = _catch_up(connection, cache, cached, row.version)
        if fresh_commands:
            commands = {c.instance_name: c for c in active_commands(connection, deployment_id)}
    return Loaded(Snapshot(deployment, targets, commands), row.version)


def _catch_up(
    connection: Connection, cache: SnapshotCache, cached: Loaded, version: int
) -> tuple[dict[str, InstanceTarget], dict[str, HostCommand]]:
    """The cached targets and open commands with the rows written after ``cached.version``."""
    snapshot = cached.snapshot
    if cached.version == version:
        cache.hits += 1
        return dict(snapshot.targets), dict(snapshot.commands)
    cache.catch_ups += 1
    deployment_id = snapshot.deployment.deployment_id
    targets = dict(snapshot.targets)
    for target_row in connection.execute(
        select(deployment_targets).where(
            deployment_targets.c.deployment_id == deployment_id,
            deployment_targets.c.version > cached.version,
        )
    ):
        target = target_from_row(target_row)
        targets[target.instance_name] = target
    commands = dict(snapshot.commands)
    for command_row in connection.execute(
        select(host_commands)
        .where(
            host_commands.c.deployment_id == deployment_id,
            host_commands.c.version > cached.version,
        )
        .order_by(host_commands.c.version, host_commands.c.created_time)
    ):
        _merge_command(commands, command_from_row(command_row))
    return targets, commands


# Built once: building a SQLAlchemy statement costs more than running it, and these run for
# every event of every host.
_BUMP_VERSION = (
    update(deployments)
    .where(deployments.c.id == bindparam("b_id"))
    .values(version=bindparam("b_version"))
)
_UPDATE_TARGET = (
    update(deployment_targets)
    .where(
        deployment_targets.c.deployment_id == bindparam("b_deployment"),
        deployment_targets.c.instance_name == bindparam("b_instance"),
    )
    .values(
        status=bindparam("b_status"),
        events=bindparam("b_events", type_=deployment_targets.c.events.type),
        last_updated=bindparam("b_updated"),
        version=bindparam("b_version"),
    )
)
# Not dispatched_time: handing a command over writes it, outside any decision.
_UPDATE_COMMAND = (
    update(host_commands)
    .where(host_commands.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        acked_time=bindparam("b_acked"),
        completed_time=bindparam("b_completed"),
        version=bindparam("b_version"),
    )
)


def apply(connection: Connection, decision: Decision, loaded: Loaded) -> None:
    """Write everything a decision taken on ``loaded`` changed, as version ``+1``."""
    deployment = loaded.snapshot.deployment
    version = loaded.version + 1
    if decision.deployment is not None:
        values: dict[str, Any] = {"version": version, **deployment_values(decision.deployment)}
        connection.execute(
            update(deployments).where(deployments.c.id == deployment.deployment_id).values(**values)
        )
    else:
        connection.execute(_BUMP_VERSION, {"b_id": deployment.deployment_id, "b_version": version})
    _write_targets(connection, decision.targets, version)
    _write_commands(connection, decision.commands, loaded.snapshot.commands, version)
    _write_notifications(connection, decision, deployment.deployment_id, deployment.group_id)
    _write_health(connection, decision, deployment.group_id)


def _write_targets(
    connection: Connection, targets: tuple[InstanceTarget, ...], version: int
) -> None:
    if not targets:
        return
    connection.execute(
        _UPDATE_TARGET,
        [
            {
                "b_deployment": target.deployment_id,
                "b_instance": target.instance_name,
                "b_status": target.status.value,
                "b_events": events_json(target.events),
                "b_updated": target.last_updated,
                "b_version": version,
            }
            for target in targets
        ],
    )


def _write_commands(
    connection: Connection,
    commands: tuple[HostCommand, ...],
    open_before: Mapping[str, HostCommand],
    version: int,
) -> None:
    """Update the commands that were open before the decision, insert the ones it issued."""
    updated: list[dict[str, Any]] = []
    issued: list[dict[str, Any]] = []
    for command in commands:
        before = open_before.get(command.instance_name)
        if before is not None and before.command_id == command.command_id:
            updated.append(
                {
                    "b_id": command.command_id,
                    "b_status": command.status.value,
                    "b_acked": command.acked_time,
                    "b_completed": command.completed_time,
                    "b_version": version,
                }
            )
        else:
            issued.append(
                {
                    "id": command.command_id,
                    "deployment_id": command.deployment_id,
                    "instance_name": command.instance_name,
                    "event": command.event,
                    "created_time": command.created_time,
                    "dispatched_time": command.dispatched_time,
                    "status": command.status.value,
                    "acked_time": command.acked_time,
                    "completed_time": command.completed_time,
                    "version": version,
                }
            )
    if updated:
        connection.execute(_UPDATE_COMMAND, updated)
    if issued:
        connection.execute(insert(host_commands), issued)


def _write_notifications(
    connection: Connection, decision: Decision, deployment_id: str, group_id: str
) -> None:
    if not decision.notifications:
        return
    connection.execute(
        insert(notifications),
        [
            {
                "deployment_id": deployment_id,
                "group_id": group_id,
                "event": notification.event,
                "instance_name": notification.instance_name,
                "created_time": decision.now,
            }
            for notification in decision.notifications
        ],
    )


def _write_health(connection: Connection, decision: Decision, group_id: str) -> None:
    for health in decision.health:
        values = {"healthy": health.healthy, "revision_identity": health.revision_identity}
        done = connection.execute(
            update(instance_health)
            .where(
                instance_health.c.instance_name == health.instance_name,
                instance_health.c.group_id == group_id,
            )
            .values(updated_time=decision.now, **values)
        )
        if not done.rowcount:
            connection.execute(
                insert(instance_health).values(
                    instance_name=health.instance_name,
                    group_id=group_id,
                    updated_time=decision.now,
                    **values,
                )
            )
