"""Applications."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.core.errors import Conflict
from opendeploy.core.model import Application
from opendeploy.store.paging import page_after
from opendeploy.store.tables import applications

__all__ = ["by_id", "by_name", "create", "delete_by_name", "names_in", "page", "rename"]


def _record(row: Row[Any]) -> Application:
    return Application(
        application_id=row.id,
        name=row.name,
        compute_platform=row.compute_platform,
        create_time=row.create_time,
        github_account_name=row.github_account_name,
    )


def create(connection: Connection, app: Application) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                insert(applications).values(
                    id=app.application_id,
                    name=app.name,
                    compute_platform=app.compute_platform,
                    create_time=app.create_time,
                    github_account_name=app.github_account_name,
                )
            )
    except IntegrityError as error:
        raise Conflict(app.name) from error


def by_name(connection: Connection, name: str) -> Application | None:
    row = connection.execute(select(applications).where(applications.c.name == name)).first()
    return None if row is None else _record(row)


def by_id(connection: Connection, application_id: str) -> Application | None:
    row = connection.execute(
        select(applications).where(applications.c.id == application_id)
    ).first()
    return None if row is None else _record(row)


def page(connection: Connection, after: str | None, limit: int) -> tuple[list[str], str | None]:
    rows, last = page_after(
        connection, select(applications.c.name), applications.c.name, after, limit
    )
    return [row.name for row in rows], last


def rename(connection: Connection, application_id: str, new_name: str) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                update(applications)
                .where(applications.c.id == application_id)
                .values(name=new_name)
            )
    except IntegrityError as error:
        raise Conflict(new_name) from error


def delete_by_name(connection: Connection, name: str) -> bool:
    result = connection.execute(delete(applications).where(applications.c.name == name))
    return bool(result.rowcount)


def names_in(connection: Connection, names: Sequence[str]) -> dict[str, Application]:
    rows = connection.execute(select(applications).where(applications.c.name.in_(names))).all()
    return {row.name: _record(row) for row in rows}
