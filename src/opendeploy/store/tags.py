"""Resource tags on application, deployment group and deployment config ARNs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.store.tables import resource_tags

__all__ = ["delete_all", "get", "remove", "rename", "set_many"]


def get(connection: Connection, arn: str) -> dict[str, str]:
    rows = connection.execute(
        select(resource_tags.c.key, resource_tags.c.value)
        .where(resource_tags.c.resource_arn == arn)
        .order_by(resource_tags.c.key)
    ).all()
    return {row.key: row.value for row in rows}


def set_many(connection: Connection, arn: str, tags: Mapping[str, str]) -> None:
    """Set each tag, overwriting the value of a key the resource already has."""
    for key, value in tags.items():
        where = (resource_tags.c.resource_arn == arn, resource_tags.c.key == key)
        if connection.execute(update(resource_tags).where(*where).values(value=value)).rowcount:
            continue
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(resource_tags).values(resource_arn=arn, key=key, value=value)
                )
        except IntegrityError:
            # Another transaction added the key between our update and insert: overwrite it.
            connection.execute(update(resource_tags).where(*where).values(value=value))


def remove(connection: Connection, arn: str, keys: Iterable[str]) -> None:
    connection.execute(
        delete(resource_tags).where(
            resource_tags.c.resource_arn == arn, resource_tags.c.key.in_(list(keys))
        )
    )


def delete_all(connection: Connection, arn_prefix: str) -> None:
    """Drop the tags of every resource whose ARN is ``arn_prefix`` or starts with it + '/'."""
    connection.execute(
        delete(resource_tags).where(
            (resource_tags.c.resource_arn == arn_prefix)
            | resource_tags.c.resource_arn.startswith(arn_prefix + "/", autoescape=True)
        )
    )


def rename(connection: Connection, old_arn: str, new_arn: str) -> None:
    connection.execute(
        update(resource_tags)
        .where(resource_tags.c.resource_arn == old_arn)
        .values(resource_arn=new_arn)
    )
