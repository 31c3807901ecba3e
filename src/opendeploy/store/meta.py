"""Small server-wide facts (the account id) kept in the database so replicas agree."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from opendeploy.store.tables import meta

__all__ = ["get", "get_or_create"]


def get(connection: Connection, key: str) -> str | None:
    return connection.execute(select(meta.c.value).where(meta.c.key == key)).scalar()


def get_or_create(connection: Connection, key: str, value: str) -> str:
    """The stored value for ``key``; ``value`` is stored first when there is none."""
    current = get(connection, key)
    if current is not None:
        return current
    try:
        with connection.begin_nested():
            connection.execute(insert(meta).values(key=key, value=value))
    except IntegrityError:
        stored = get(connection, key)
        assert stored is not None
        return stored
    return value
