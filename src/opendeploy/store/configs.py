"""Custom deployment configurations (the predefined ones live in core.configs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from opendeploy.core.configs import DeploymentConfig
from opendeploy.core.errors import Conflict
from opendeploy.store.tables import deployment_configs, deployment_groups

__all__ = ["by_name", "count", "create", "delete_by_name", "is_in_use", "names"]


def _record(row: Row[Any]) -> DeploymentConfig:
    return DeploymentConfig(
        config_id=row.id,
        name=row.name,
        compute_platform=row.compute_platform,
        create_time=row.create_time,
        minimum_healthy_hosts=row.minimum_healthy_hosts,
        traffic_routing=row.traffic_routing,
        zonal=row.zonal,
    )


def create(connection: Connection, config: DeploymentConfig) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                insert(deployment_configs).values(
                    id=config.config_id,
                    name=config.name,
                    compute_platform=config.compute_platform,
                    minimum_healthy_hosts=config.minimum_healthy_hosts,
                    traffic_routing=config.traffic_routing,
                    zonal=config.zonal,
                    create_time=config.create_time,
                )
            )
    except IntegrityError as error:
        raise Conflict(config.name) from error


def by_name(connection: Connection, name: str) -> DeploymentConfig | None:
    row = connection.execute(
        select(deployment_configs).where(deployment_configs.c.name == name)
    ).first()
    return None if row is None else _record(row)


def names(connection: Connection) -> list[str]:
    return list(
        connection.execute(
            select(deployment_configs.c.name).order_by(deployment_configs.c.name)
        ).scalars()
    )


def count(connection: Connection, *, for_create: bool = False) -> int:
    """How many custom configs exist.

    ``for_create`` first locks the existing rows (a no-op on SQLite, whose writers already run
    one at a time), so two concurrent creators on PostgreSQL count one after the other instead
    of both seeing room for one more and overshooting the quota together.
    """
    if for_create:
        connection.execute(
            select(deployment_configs.c.id).order_by(deployment_configs.c.id).with_for_update()
        ).all()
    return int(
        connection.execute(select(func.count()).select_from(deployment_configs)).scalar_one()
    )


def is_in_use(connection: Connection, name: str) -> bool:
    row = connection.execute(
        select(deployment_groups.c.id)
        .where(deployment_groups.c.deployment_config_name == name)
        .limit(1)
    ).first()
    return row is not None


def delete_by_name(connection: Connection, name: str) -> bool:
    result = connection.execute(delete(deployment_configs).where(deployment_configs.c.name == name))
    return bool(result.rowcount)
