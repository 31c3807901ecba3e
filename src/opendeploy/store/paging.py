"""Keyset pagination: a page is the rows after a key, ordered by that key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Row, Select

__all__ = ["page_after"]


def page_after(
    connection: Connection,
    statement: Select[Any],
    key: Column[Any],
    after: Any,
    limit: int,
) -> tuple[Sequence[Row[Any]], Any]:
    """Rows of ``statement`` after ``after`` by ``key``, and the last key when more remain."""
    if after is not None:
        statement = statement.where(key > after)
    rows = connection.execute(statement.order_by(key).limit(limit + 1)).all()
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1]._mapping[key.name]
    return rows, None
