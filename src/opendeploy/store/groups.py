"""Deployment groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.core.errors import Conflict
from opendeploy.core.model import DeploymentGroup
from opendeploy.store.paging import page_after
from opendeploy.store.tables import applications, deployment_groups

__all__ = [
    "by_id",
    "by_name",
    "count_for_application",
    "create",
    "delete_by_name",
    "page",
    "replace",
    "set_target_revision",
    "with_target_revision",
]

_COLUMNS = (
    deployment_groups,
    applications.c.name.label("application_name"),
    applications.c.compute_platform,
)


def _record(row: Row[Any]) -> DeploymentGroup:
    return DeploymentGroup(
        group_id=row.id,
        application_id=row.application_id,
        application_name=row.application_name,
        compute_platform=row.compute_platform,
        name=row.name,
        config_name=row.deployment_config_name,
        service_role_arn=row.service_role_arn,
        spec=row.spec,
        create_time=row.create_time,
        target_revision=row.target_revision,
    )


def _select() -> Any:
    return select(*_COLUMNS).join(
        applications, applications.c.id == deployment_groups.c.application_id
    )


def create(connection: Connection, group: DeploymentGroup) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                insert(deployment_groups).values(
                    id=group.group_id,
                    application_id=group.application_id,
                    name=group.name,
                    deployment_config_name=group.config_name,
                    service_role_arn=group.service_role_arn,
                    spec=dict(group.spec),
                    target_revision=group.target_revision,
                    create_time=group.create_time,
                )
            )
    except IntegrityError as error:
        raise Conflict(group.name) from error


def replace(connection: Connection, group: DeploymentGroup) -> None:
    """Store every member of ``group`` over the row with its id."""
    try:
        with connection.begin_nested():
            connection.execute(
                update(deployment_groups)
                .where(deployment_groups.c.id == group.group_id)
                .values(
                    name=group.name,
                    deployment_config_name=group.config_name,
                    service_role_arn=group.service_role_arn,
                    spec=dict(group.spec),
                    target_revision=group.target_revision,
                )
            )
    except IntegrityError as error:
        raise Conflict(group.name) from error


def by_name(connection: Connection, application_id: str, name: str) -> DeploymentGroup | None:
    row = connection.execute(
        _select().where(
            deployment_groups.c.application_id == application_id,
            deployment_groups.c.name == name,
        )
    ).first()
    return None if row is None else _record(row)


def by_id(connection: Connection, group_id: str) -> DeploymentGroup | None:
    row = connection.execute(_select().where(deployment_groups.c.id == group_id)).first()
    return None if row is None else _record(row)


def page(
    connection: Connection, application_id: str, after: str | None, limit: int
) -> tuple[list[str], str | None]:
    statement = select(deployment_groups.c.name).where(
        deployment_groups.c.application_id == application_id
    )
    rows, last = page_after(connection, statement, deployment_groups.c.name, after, limit)
    return [row.name for row in rows], last


def count_for_application(connection: Connection, application_id: str) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(deployment_groups)
            .where(deployment_groups.c.application_id == application_id)
        ).scalar_one()
    )


def delete_by_name(connection: Connection, application_id: str, name: str) -> bool:
    result = connection.execute(
        delete(deployment_groups).where(
            deployment_groups.c.application_id == application_id,
            deployment_groups.c.name == name,
        )
    )
    return bool(result.rowcount)


def with_target_revision(
    connection: Connection, application_id: str
) -> Sequence[tuple[str, Mapping[str, Any]]]:
    """(group name, target revision) for the application's groups that have one."""
    rows = connection.execute(
        select(deployment_groups.c.name, deployment_groups.c.target_revision).where(
            deployment_groups.c.application_id == application_id,
            deployment_groups.c.target_revision.is_not(None),
        )
    ).all()
    return [(row.name, row.target_revision) for row in rows if row.target_revision]


def set_target_revision(connection: Connection, group_id: str, revision: Mapping[str, Any]) -> None:
    """Record the revision of the group's most recent deployment."""
    connection.execute(
        update(deployment_groups)
        .where(deployment_groups.c.id == group_id)
        .values(target_revision=dict(revision))
    )
