"""Resource tags on application, deployment group and deployment config ARNs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, delete, insert, select, update

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
    for key, value in tags.items():
        done = connection.execute(
            update(resource_tags)
            .where(resource_tags.c.resource_arn == arn, resource_tags.c.key == key)
            .values(value=value)
        )
        if not done.rowcount:
            connection.execute(insert(resource_tags).values(resource_arn=arn, key=key, value=value))


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
