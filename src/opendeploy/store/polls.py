"""What an agent's long poll reads: its instance, and whether a command waits for it.

Idle polls are most of a fleet's requests, so these reads are statements built once (building
a SQLAlchemy statement costs several times more than running it) and read no more than a poll
needs: the instance without its tags, and whether ``deployments.next_command_for`` would find
something, without claiming it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Float, Row, and_, bindparam, exists, or_, select

from opendeploy.core.deployments import CommandStatus
from opendeploy.core.model import OnPremisesInstance
from opendeploy.store.tables import host_commands, instances

__all__ = ["has_waiting_command", "instance_of_user", "look"]


def _waiting(instance_name: Any) -> Any:
    """The condition of ``deployments.next_command_for``: pending, and never handed over or
    handed over ``redeliver_after`` seconds ago (``handed_before``) without an
    acknowledgement."""
    return and_(
        host_commands.c.instance_name == instance_name,
        host_commands.c.status == CommandStatus.PENDING.value,
        or_(
            host_commands.c.dispatched_time.is_(None),
            host_commands.c.dispatched_time < bindparam("handed_before", type_=Float),
        ),
    )


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
_WAITING = select(host_commands.c.id).where(_waiting(bindparam("instance_name"))).limit(1)
_LOOK = select(
    *_INSTANCE_COLUMNS, exists().where(_waiting(instances.c.name)).label("waiting")
).where(_OF_USER)


def _instance(row: Row[Any]) -> OnPremisesInstance:
    return OnPremisesInstance(
        name=row.name,
        instance_arn=row.instance_arn,
        register_time=row.register_time,
        iam_user_arn=row.iam_user_arn,
        iam_session_arn=row.iam_session_arn,
    )


def look(
    connection: Connection, user_arn: str, *, now: float, redeliver_after: float
) -> tuple[OnPremisesInstance | None, bool]:
    """A poll's first look, in one statement: the registered instance bound to the IAM user
    ARN (without its tags) and whether a command waits for it."""
    row = connection.execute(
        _LOOK, {"user_arn": user_arn, "handed_before": now - redeliver_after}
    ).first()
    if row is None:
        return None, False
    return _instance(row), bool(row.waiting)


def instance_of_user(connection: Connection, user_arn: str) -> OnPremisesInstance | None:
    """The registered instance bound to an IAM user ARN, without its tags."""
    row = connection.execute(_INSTANCE_OF_USER, {"user_arn": user_arn}).first()
    return None if row is None else _instance(row)


def has_waiting_command(
    connection: Connection, instance_name: str, *, now: float, redeliver_after: float
) -> bool:
    """Whether ``deployments.next_command_for`` would hand a command over now."""
    row = connection.execute(
        _WAITING, {"instance_name": instance_name, "handed_before": now - redeliver_after}
    ).first()
    return row is not None
