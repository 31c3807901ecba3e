"""Deployment configurations: the predefined set plus the user's own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from opendeploy.core.configs import (
    PREDEFINED_CONFIGS,
    DeploymentConfig,
    predefined_config,
    validate_new_config,
)
from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.names import check_config_name
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import configs as store
from opendeploy.store import tags as tag_store

__all__ = [
    "create_deployment_config",
    "delete_deployment_config",
    "find_config",
    "get_deployment_config",
    "list_deployment_configs",
]

MAX_CUSTOM_CONFIGS = 50


def find_config(connection: Connection, name: str) -> DeploymentConfig | None:
    return predefined_config(name) or store.by_name(connection, name)


def _does_not_exist(name: str) -> ServiceError:
    return ServiceError(
        "DeploymentConfigDoesNotExistException",
        f"No deployment configuration found for name: {name}",
    )


def create_deployment_config(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_config_name(params.get("deploymentConfigName"), for_create=True)
    platform = params.get("computePlatform") or "Server"
    hosts = params.get("minimumHealthyHosts")
    routing = params.get("trafficRoutingConfig")
    zonal = params.get("zonalConfig")
    validate_new_config(
        platform=platform, minimum_healthy_hosts=hosts, traffic_routing=routing, zonal=zonal
    )
    config = DeploymentConfig(
        config_id=ctx.new_id(),
        name=name,
        compute_platform=platform,
        create_time=ctx.clock(),
        minimum_healthy_hosts=hosts,
        traffic_routing=routing,
        zonal=zonal,
    )
    exists = ServiceError(
        "DeploymentConfigAlreadyExistsException",
        f"A deployment configuration with name {name} already exists.",
    )
    with ctx.db.write() as connection:
        if store.by_name(connection, name) is not None:
            raise exists
        if store.count(connection, for_create=True) >= MAX_CUSTOM_CONFIGS:
            raise ServiceError(
                "DeploymentConfigLimitExceededException",
                f"This server already has {MAX_CUSTOM_CONFIGS} custom deployment configurations.",
            )
        try:
            store.create(connection, config)
        except Conflict as error:
            raise exists from error
    return {"deploymentConfigId": config.config_id}


def get_deployment_config(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_config_name(params.get("deploymentConfigName"), for_create=False)
    with ctx.db.read() as connection:
        config = find_config(connection, name)
    if config is None:
        raise _does_not_exist(name)
    return {"deploymentConfigInfo": config.to_api()}


def list_deployment_configs(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Custom configs and every predefined one, by name, in pages."""
    after = decode_token("deploymentconfigs", params.get("nextToken"))
    if after is not None and not isinstance(after, str):
        # A forged token: comparing names with a number or a list raises TypeError (500).
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    with ctx.db.read() as connection:
        names = store.names(connection)
    every = sorted([*names, *(config.name for config in PREDEFINED_CONFIGS)])
    remaining = [name for name in every if after is None or name > after]
    page = remaining[: ctx.page_size]
    result: dict[str, Any] = {"deploymentConfigsList": page}
    if len(remaining) > ctx.page_size:
        result["nextToken"] = encode_token("deploymentconfigs", page[-1])
    return result


def delete_deployment_config(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Delete a custom config; like AWS, deleting one that does not exist is not an error."""
    name = check_config_name(params.get("deploymentConfigName"), for_create=False)
    if predefined_config(name) is not None:
        raise ServiceError(
            "InvalidOperationException",
            f"The predefined deployment configuration {name} cannot be deleted.",
        )
    with ctx.db.write() as connection:
        if store.by_name(connection, name) is None:
            return {}
        if store.is_in_use(connection, name):
            raise ServiceError(
                "DeploymentConfigInUseException",
                f"The deployment configuration {name} is used by a deployment group.",
            )
        store.delete_by_name(connection, name)
        tag_store.delete_all(connection, ctx.config_arn(name))
    return {}
