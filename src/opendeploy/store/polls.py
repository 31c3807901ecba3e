"""What an agent's long poll reads: its instance, and whether a command waits for it.

Idle polls are most of a fleet's requests, so these reads are statements built once (building
a SQLAlchemy statement costs several times more than running it) and read no more than a poll
needs: the instance without its tags, and whether ``deployments.next_commands_for`` would find
something, without claiming it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from sqlalchemy import Connection, Float, Row, and_, bindparam, exists, or_, select

from opendeploy.core.deployments import CommandStatus
from opendeploy.core.model import OnPremisesInstance
from opendeploy.store.tables import host_commands, instances

__all__ = [
    "Commands",
    "commands_of",
    "hosts_with_waiting_commands",
    "instance_of_user",
    "look",
    "running_condition",
    "waiting_now",
]


def waiting_now() -> Any:
    """The condition of ``deployments.next_commands_for`` on a command of any host: pending,
    and never handed over or handed over ``redeliver_after`` seconds ago (``handed_before``)
    without an acknowledgement."""
    return and_(
        host_commands.c.status == CommandStatus.PENDING.value,
        or_(
            host_commands.c.dispatched_time.is_(None),
            host_commands.c.dispatched_time < bindparam("handed_before", type_=Float),
        ),
    )


def _waiting(instance_name: Any) -> Any:
    """``waiting_now`` for the commands of one host."""
    return and_(host_commands.c.instance_name == instance_name, waiting_now())


def _pending(instance_name: Any) -> Any:
    """Any command not yet acknowledged, handed over or not: a host without one can get work
    only from a decision taken later, which wakes its poll (``PollHub``)."""
    return and_(
        host_commands.c.instance_name == instance_name,
        host_commands.c.status == CommandStatus.PENDING.value,
    )


def running_condition(instance_name: Any) -> Any:
    """A command acknowledged and not completed: one the host's agent is running, or one it
    lost (``AgentService.poll`` with ``took_at``)."""
    return and_(
        host_commands.c.instance_name == instance_name,
        host_commands.c.status == CommandStatus.IN_PROGRESS.value,
    )


class Commands(NamedTuple):
    """What a poll's look knows of the host's commands."""

    #: One waits to be handed over now (``next_commands_for`` would find it).
    waiting: bool
    #: One is not yet acknowledged (waiting, or handed over and not yet due again).
    pending: bool
    #: One is acknowledged and not completed.
    running: bool


NO_COMMANDS = Commands(waiting=False, pending=False, running=False)

_INSTANCE_COLUMNS = (
    instances.c.name,
    instances.c.instance_arn,
    instances.c.register_time,
    instances.c.iam_user_arn,
    instances.c.iam_session_arn,
)
_OF_USER = and_(
    instances.c.iam_user_arn == bindparam("user_arn"), instances.c.deregister_time.is_(None)
)
_INSTANCE_OF_USER = select(*_INSTANCE_COLUMNS).where(_OF_USER)
_WAITING_AMONG = (
    select(host_commands.c.instance_name)
    .where(host_commands.c.instance_name.in_(bindparam("names", expanding=True)), waiting_now())
    .distinct()
)
_COMMANDS = select(
    exists().where(_waiting(bindparam("instance_name"))).label("waiting"),
    exists().where(_pending(bindparam("instance_name"))).label("pending"),
    exists().where(running_condition(bindparam("instance_name"))).label("running"),
)
_LOOK = select(
    *_INSTANCE_COLUMNS,
    exists().where(_waiting(instances.c.name)).label("waiting"),
    exists().where(_pending(instances.c.name)).label("pending"),
    exists().where(running_condition(instances.c.name)).label("running"),
).where(_OF_USER)


def _instance(row: Row[Any]) -> OnPremisesInstance:
    return OnPremisesInstance(
        name=row.name,
        instance_arn=row.instance_arn,
        register_time=row.register_time,
        iam_user_arn=row.iam_user_arn,
        iam_session_arn=row.iam_session_arn,
    )


def _commands(row: Row[Any]) -> Commands:
    return Commands(bool(row.waiting), bool(row.pending), bool(row.running))


def look(
    connection: Connection, user_arn: str, *, now: float, redeliver_after: float
) -> tuple[OnPremisesInstance | None, Commands]:
    """A poll's first look, in one statement: the registered instance bound to the IAM user
    ARN (without its tags) and what it has of commands."""
    row = connection.execute(
        _LOOK, {"user_arn": user_arn, "handed_before": now - redeliver_after}
    ).first()
    if row is None:
        return None, NO_COMMANDS
    return _instance(row), _commands(row)


def commands_of(
    connection: Connection, instance_name: str, *, now: float, redeliver_after: float
) -> Commands:
    """``look``'s answer about commands, for an instance already known."""
    row = connection.execute(
        _COMMANDS, {"instance_name": instance_name, "handed_before": now - redeliver_after}
    ).one()
    return _commands(row)


def instance_of_user(connection: Connection, user_arn: str) -> OnPremisesInstance | None:
    """The registered instance bound to an IAM user ARN, without its tags."""
    row = connection.execute(_INSTANCE_OF_USER, {"user_arn": user_arn}).first()
    return None if row is None else _instance(row)


def hosts_with_waiting_commands(
    connection: Connection, instance_names: Collection[str], *, now: float, redeliver_after: float
) -> set[str]:
    """Which of these instances ``deployments.next_commands_for`` would hand a command now:
    one statement for all of them."""
    if not instance_names:
        return set()
    rows = connection.execute(
        _WAITING_AMONG,
        {"names": list(set(instance_names)), "handed_before": now - redeliver_after},
    )
    return set(rows.scalars())
