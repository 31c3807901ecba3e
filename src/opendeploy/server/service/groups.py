"""Deployment groups: create, read, update (including rename), delete."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.groups import (
    SPEC_MEMBERS,
    default_config_name,
    validate_group_spec,
    with_defaults,
)
from opendeploy.core.model import Application, DeploymentGroup
from opendeploy.core.names import check_config_name, check_resource_name
from opendeploy.server.service import tagging
from opendeploy.server.service.applications import check_name as check_application_name
from opendeploy.server.service.applications import require_application
from opendeploy.server.service.configs import find_config
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import applications as app_store
from opendeploy.store import groups as store
from opendeploy.store import tags as tag_store

__all__ = [
    "batch_get_deployment_groups",
    "create_deployment_group",
    "delete_deployment_group",
    "get_deployment_group",
    "group_info",
    "list_deployment_groups",
    "require_group",
    "update_deployment_group",
]

MAX_GROUPS_PER_APPLICATION = 1000
BATCH_LIMIT = 100
#: An IAM role ARN: partition, 12-digit account, optional path, role name.
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}")


def check_group_name(value: object) -> str:
    return check_resource_name(
        value,
        kind="deployment group",
        required_code="DeploymentGroupNameRequiredException",
        invalid_code="InvalidDeploymentGroupNameException",
    )


def _no_group(name: str) -> ServiceError:
    return ServiceError(
        "DeploymentGroupDoesNotExistException", f"No Deployment Group found for name: {name}"
    )


def _group_exists(name: str) -> ServiceError:
    return ServiceError(
        "DeploymentGroupAlreadyExistsException",
        f"A deployment group with name {name} already exists for this application.",
    )


def require_group(connection: Connection, app: Application, name: object) -> DeploymentGroup:
    checked = check_group_name(name)
    group = store.by_name(connection, app.application_id, checked)
    if group is None:
        raise _no_group(checked)
    return group


def group_info(group: DeploymentGroup) -> dict[str, Any]:
    """The ``DeploymentGroupInfo`` shape."""
    info = with_defaults(group.spec, group.compute_platform)
    info.update(
        applicationName=group.application_name,
        deploymentGroupId=group.group_id,
        deploymentGroupName=group.name,
        deploymentConfigName=group.config_name,
        serviceRoleArn=group.service_role_arn,
        computePlatform=group.compute_platform,
    )
    if group.target_revision is not None:
        info["targetRevision"] = dict(group.target_revision)
    return info


def _check_config(connection: Connection, name: object, platform: str) -> str:
    checked = check_config_name(name, for_create=False)
    config = find_config(connection, checked)
    if config is None:
        raise ServiceError(
            "DeploymentConfigDoesNotExistException",
            f"No deployment configuration found for name: {checked}",
        )
    if config.compute_platform != platform:
        raise ServiceError(
            "InvalidDeploymentConfigNameException",
            f"The deployment configuration {checked} is for the {config.compute_platform} "
            f"platform; this application is {platform}.",
        )
    return checked


def _check_role(value: object) -> str:
    if not value:
        raise ServiceError("RoleRequiredException", "serviceRoleArn is required.")
    if not isinstance(value, str) or not _ROLE_ARN.fullmatch(value):
        raise ServiceError(
            "InvalidRoleException",
            f"serviceRoleArn {value!r} is not an IAM role ARN "
            "(arn:aws:iam::<12-digit account>:role/<name>).",
        )
    return value


def _spec_from(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: params[key] for key in SPEC_MEMBERS if params.get(key) is not None}


def create_deployment_group(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_group_name(params.get("deploymentGroupName"))
    role = _check_role(params.get("serviceRoleArn"))
    tags = tagging.tags_to_add(params.get("tags"), error_code="InvalidTagsToAddException")
    spec = _spec_from(params)
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        config_name = _check_config(
            connection,
            params.get("deploymentConfigName") or default_config_name(app.compute_platform),
            app.compute_platform,
        )
        validate_group_spec(spec, app.compute_platform)
        if store.by_name(connection, app.application_id, name) is not None:
            raise _group_exists(name)
        if (
            store.count_for_application(connection, app.application_id)
            >= MAX_GROUPS_PER_APPLICATION
        ):
            raise ServiceError(
                "DeploymentGroupLimitExceededException",
                f"The application already has {MAX_GROUPS_PER_APPLICATION} deployment groups.",
            )
        group = DeploymentGroup(
            group_id=ctx.new_id(),
            application_id=app.application_id,
            application_name=app.name,
            compute_platform=app.compute_platform,
            name=name,
            config_name=config_name,
            service_role_arn=role,
            spec=spec,
            create_time=ctx.clock(),
        )
        try:
            store.create(connection, group)
        except Conflict as error:
            raise _group_exists(name) from error
        tag_store.set_many(connection, ctx.group_arn(app.name, name), tags)
    return {"deploymentGroupId": group.group_id}


def get_deployment_group(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        group = require_group(connection, app, params.get("deploymentGroupName"))
    return {"deploymentGroupInfo": group_info(group)}


def batch_get_deployment_groups(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Known groups in order; unknown names are reported in ``errorMessage``."""
    names = [check_group_name(name) for name in params.get("deploymentGroupNames") or []]
    if len(names) > BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(names)} deployment group names were given; the limit is {BATCH_LIMIT}.",
        )
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        for name in dict.fromkeys(names):
            group = store.by_name(connection, app.application_id, name)
            if group is None:
                missing.append(name)
            else:
                found.append(group_info(group))
    result: dict[str, Any] = {"deploymentGroupsInfo": found}
    if missing:
        result["errorMessage"] = "Deployment groups not found: " + ", ".join(missing)
    return result


def list_deployment_groups(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        scope = "groups:" + app.application_id
        after = decode_token(scope, params.get("nextToken"))
        if after is not None and not isinstance(after, str):
            raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
        names, last = store.page(connection, app.application_id, after, ctx.page_size)
    result: dict[str, Any] = {"applicationName": app.name, "deploymentGroups": names}
    if last is not None:
        result["nextToken"] = encode_token(scope, last)
    return result


def update_deployment_group(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Replace every member given; keep the others (codedeploy-spec §3.3)."""
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        group = require_group(connection, app, params.get("currentDeploymentGroupName"))
        spec = {**group.spec, **_spec_from(params)}
        if params.get("autoScalingGroups") == []:
            spec.pop("autoScalingGroups", None)
        validate_group_spec(spec, app.compute_platform)
        updated = replace(group, spec=spec)
        if params.get("deploymentConfigName"):
            config = _check_config(connection, params["deploymentConfigName"], app.compute_platform)
            updated = replace(updated, config_name=config)
        if params.get("serviceRoleArn") is not None:
            updated = replace(updated, service_role_arn=_check_role(params["serviceRoleArn"]))
        new_name = params.get("newDeploymentGroupName")
        if new_name and new_name != group.name:
            new_name = check_group_name(new_name)
            if store.by_name(connection, app.application_id, new_name) is not None:
                raise _group_exists(new_name)
            updated = replace(updated, name=new_name)
            tag_store.rename(
                connection, ctx.group_arn(app.name, group.name), ctx.group_arn(app.name, new_name)
            )
        try:
            store.replace(connection, updated)
        except Conflict as error:
            raise _group_exists(updated.name) from error
    return {"hooksNotCleanedUp": []}


def delete_deployment_group(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Delete a group; like AWS, deleting one that does not exist is not an error."""
    name = check_group_name(params.get("deploymentGroupName"))
    app_name = check_application_name(params.get("applicationName"))
    with ctx.db.write() as connection:
        app = app_store.by_name(connection, app_name)
        if app is not None and store.delete_by_name(connection, app.application_id, name):
            tag_store.delete_all(connection, ctx.group_arn(app.name, name))
    return {"hooksNotCleanedUp": []}
