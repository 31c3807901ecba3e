"""On-premises instances and their tags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.core.errors import Conflict
from opendeploy.core.model import OnPremisesInstance
from opendeploy.store.tables import instance_tags, instances, meta

__all__ = [
    "add_tags",
    "by_name",
    "by_names",
    "deregister",
    "find_by_arn",
    "listing",
    "lock_registrations",
    "register",
    "remove_tags",
]

#: The ``meta`` row whose lock serialises registrations (see lock_registrations).
_REGISTRATION_LOCK = "lock:instance-registration"


def _tags_of(connection: Connection, names: Sequence[str]) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {name: {} for name in names}
    if not names:
        return result
    rows = connection.execute(
        select(instance_tags).where(instance_tags.c.instance_name.in_(names))
    ).all()
    for row in rows:
        result[row.instance_name][row.key] = row.value
    return result


def _records(connection: Connection, rows: Sequence[Row[Any]]) -> list[OnPremisesInstance]:
    tags = _tags_of(connection, [row.name for row in rows])
    return [
        OnPremisesInstance(
            name=row.name,
            instance_arn=row.instance_arn,
            register_time=row.register_time,
            iam_user_arn=row.iam_user_arn,
            iam_session_arn=row.iam_session_arn,
            deregister_time=row.deregister_time,
            tags=tags[row.name],
        )
        for row in rows
    ]


def lock_registrations(connection: Connection) -> None:
    """Make registrations of this transaction and concurrent ones happen one after another.

    Holds a row lock until the transaction ends, so "is the name or IAM ARN taken?" and the
    insert act as one step on PostgreSQL; SQLite already serialises writers.
    """
    statement = select(meta.c.key).where(meta.c.key == _REGISTRATION_LOCK).with_for_update()
    if connection.execute(statement).first() is not None:
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(meta).values(key=_REGISTRATION_LOCK, value=""))
    except IntegrityError:
        pass
    connection.execute(statement)


def register(connection: Connection, instance: OnPremisesInstance) -> None:
    """Insert the instance, or bring a deregistered record with that name back to life.

    Raises ``Conflict`` when a registered instance holds the name, also when another
    transaction registered it after the caller looked.
    """
    values = {
        "instance_arn": instance.instance_arn,
        "iam_user_arn": instance.iam_user_arn,
        "iam_session_arn": instance.iam_session_arn,
        "register_time": instance.register_time,
        "deregister_time": None,
    }
    revived = connection.execute(
        update(instances)
        .where(instances.c.name == instance.name, instances.c.deregister_time.is_not(None))
        .values(**values)
    )
    if revived.rowcount:
        connection.execute(
            delete(instance_tags).where(instance_tags.c.instance_name == instance.name)
        )
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(instances).values(name=instance.name, **values))
    except IntegrityError as error:
        raise Conflict(instance.name) from error


def deregister(connection: Connection, name: str, when: float) -> None:
    connection.execute(
        update(instances).where(instances.c.name == name).values(deregister_time=when)
    )


def by_name(connection: Connection, name: str) -> OnPremisesInstance | None:
    found = by_names(connection, [name])
    return found[0] if found else None


def by_names(connection: Connection, names: Sequence[str]) -> list[OnPremisesInstance]:
    rows = connection.execute(
        select(instances).where(instances.c.name.in_(names)).order_by(instances.c.name)
    ).all()
    return _records(connection, rows)


def find_by_arn(
    connection: Connection, *, user_arn: str | None = None, session_arn: str | None = None
) -> OnPremisesInstance | None:
    """The registered instance bound to an IAM user or session ARN."""
    column = instances.c.iam_user_arn if user_arn is not None else instances.c.iam_session_arn
    row = connection.execute(
        select(instances).where(
            column == (user_arn if user_arn is not None else session_arn),
            instances.c.deregister_time.is_(None),
        )
    ).first()
    return None if row is None else _records(connection, [row])[0]


def listing(connection: Connection, registered: bool | None) -> list[OnPremisesInstance]:
    """Every instance, optionally only the (de)registered ones, by name."""
    statement = select(instances).order_by(instances.c.name)
    if registered is True:
        statement = statement.where(instances.c.deregister_time.is_(None))
    elif registered is False:
        statement = statement.where(instances.c.deregister_time.is_not(None))
    return _records(connection, connection.execute(statement).all())


def add_tags(connection: Connection, names: Iterable[str], tags: Mapping[str, str]) -> None:
    """Set each tag on each instance, overwriting the value of a key it already has."""
    for name in names:
        for key, value in tags.items():
            _upsert_tag(connection, name, key, value)


def _upsert_tag(connection: Connection, name: str, key: str, value: str) -> None:
    where = (instance_tags.c.instance_name == name, instance_tags.c.key == key)
    if connection.execute(update(instance_tags).where(*where).values(value=value)).rowcount:
        return
    try:
        with connection.begin_nested():
            connection.execute(
                insert(instance_tags).values(instance_name=name, key=key, value=value)
            )
    except IntegrityError:
        # Another transaction added the key between our update and insert: overwrite it.
        connection.execute(update(instance_tags).where(*where).values(value=value))


def remove_tags(
    connection: Connection, names: Iterable[str], tags: Mapping[str, str | None]
) -> None:
    """Remove each tag from each instance; a tag given with a value goes only if it matches."""
    for name in names:
        for key, value in tags.items():
            statement = delete(instance_tags).where(
                instance_tags.c.instance_name == name, instance_tags.c.key == key
            )
            if value is not None:
                statement = statement.where(instance_tags.c.value == value)
            connection.execute(statement)
