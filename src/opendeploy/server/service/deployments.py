"""Deployments through the public API: create, read, list, stop, and their instances."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from opendeploy.bundles.store import sha256_from_location
from opendeploy.core.deployments import Deployment, DeploymentStatus, InstanceTarget, TargetStatus
from opendeploy.core.engine import StopRequested, command_id
from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.model import Application, DeploymentGroup
from opendeploy.core.names import check_description
from opendeploy.server.service.applications import require_application
from opendeploy.server.service.configs import find_config
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.server.service.engine_runner import feed, feed_in, started, wake
from opendeploy.server.service.groups import require_group
from opendeploy.server.service.launch import launch, new_deployment_id
from opendeploy.server.service.revisions import register_revision
from opendeploy.store import deployments as store
from opendeploy.store import instances as instance_store

__all__ = [
    "batch_get_deployment_instances",
    "batch_get_deployment_targets",
    "batch_get_deployments",
    "create_deployment",
    "deployment_info",
    "get_deployment",
    "get_deployment_instance",
    "get_deployment_target",
    "get_lifecycle_event_log",
    "list_deployment_instances",
    "list_deployment_targets",
    "list_deployments",
    "overview_of",
    "stop_deployment",
]

BATCH_LIMIT = 100
TARGET_BATCH_LIMIT = 25
_ID_ALPHABET = string.ascii_uppercase + string.digits


def _no_deployment(deployment_id: str) -> ServiceError:
    return ServiceError(
        "DeploymentDoesNotExistException", f"The deployment {deployment_id} could not be found."
    )


def require_deployment(connection: Connection, deployment_id: object) -> Deployment:
    if not deployment_id:
        raise ServiceError("DeploymentIdRequiredException", "deploymentId is required.")
    if not isinstance(deployment_id, str) or not deployment_id.startswith("d-"):
        raise ServiceError(
            "InvalidDeploymentIdException", f"{deployment_id!r} is not a deployment id."
        )
    deployment = store.by_id(connection, deployment_id)
    if deployment is None:
        raise _no_deployment(deployment_id)
    return deployment


def _revision_for(group: DeploymentGroup, params: Mapping[str, Any]) -> Mapping[str, Any]:
    revision = params.get("revision") or group.target_revision
    if not revision:
        raise ServiceError(
            "RevisionRequiredException",
            f"No revision was given and the deployment group {group.name} has no target "
            "revision to deploy.",
        )
    return revision


def _limit_exceeded(group: str, active: str) -> ServiceError:
    return ServiceError(
        "DeploymentLimitExceededException",
        f"The Deployment Group '{group}' already has an active Deployment '{active}'",
    )


def _details(
    app: Application, group: DeploymentGroup, params: Mapping[str, Any], previous: Any
) -> dict[str, Any]:
    details: dict[str, Any] = {
        "description": check_description(params.get("description")),
        "creator": "user",
        "computePlatform": app.compute_platform,
        "deploymentStyle": group.spec.get("deploymentStyle")
        or {"deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
        "autoRollbackConfiguration": params.get("autoRollbackConfiguration")
        or group.spec.get("autoRollbackConfiguration"),
        "updateOutdatedInstancesOnly": bool(params.get("updateOutdatedInstancesOnly")),
        "overrideAlarmConfiguration": params.get("overrideAlarmConfiguration"),
        "previousRevision": previous,
    }
    return {key: value for key, value in details.items() if value is not None}


def _previous_revision(connection: Connection, group_id: str) -> Any:
    for deployment_id in store.ids(
        connection, group_id=group_id, statuses=[DeploymentStatus.SUCCEEDED.value]
    ):
        deployment = store.by_id(connection, deployment_id)
        if deployment is not None:
            return dict(deployment.revision)
    return None


def _require_pushed_bundle(ctx: ServiceContext, revision: Mapping[str, Any]) -> None:
    """A revision in the server's own bundle store must name a bundle that was pushed: agents
    could never download it (and its specification could not say where from). Checked outside
    the write transaction, as an S3-backed store answers over the network."""
    bundles = ctx.bundles
    sha256 = None if bundles is None else sha256_from_location(bundles, revision)
    if bundles is not None and sha256 is not None and not bundles.exists(sha256):
        raise ServiceError(
            "RevisionDoesNotExistException",
            f"No bundle {sha256} has been pushed to this server's bundle store.",
        )


def create_deployment(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    if not params.get("deploymentGroupName"):
        raise ServiceError(
            "DeploymentGroupNameRequiredException", "deploymentGroupName is required."
        )
    if params.get("targetInstances"):
        raise ServiceError(
            "InvalidTargetInstancesException",
            "targetInstances applies only to blue/green deployments.",
        )
    if params.get("revision"):
        _require_pushed_bundle(ctx, params["revision"])
    deployment_id = new_deployment_id()
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        group = require_group(connection, app, params["deploymentGroupName"])
        config_name = params.get("deploymentConfigName") or group.config_name
        config = find_config(connection, config_name)
        if config is None:
            raise ServiceError(
                "DeploymentConfigDoesNotExistException",
                f"No deployment configuration found for name: {config_name}",
            )
        if config.minimum_healthy_hosts is None or app.compute_platform != "Server":
            raise ServiceError(
                "InvalidDeploymentConfigNameException",
                f"{config_name} is not a Server deployment configuration.",
            )
        active = store.active_for_group(connection, group.group_id)
        if active is not None:
            raise _limit_exceeded(group.name, active.deployment_id)
        revision = register_revision(
            ctx,
            connection,
            app,
            _revision_for(group, params),
            f"Application revision registered by Deployment ID: {deployment_id}",
        ).location
        deployment = Deployment(
            deployment_id=deployment_id,
            application_id=app.application_id,
            application_name=app.name,
            group_id=group.group_id,
            group_name=group.name,
            config_name=config.name,
            minimum_healthy_hosts=config.minimum_healthy_hosts,
            revision=revision,
            status=DeploymentStatus.CREATED,
            create_time=ctx.clock(),
            ignore_application_stop_failures=bool(params.get("ignoreApplicationStopFailures")),
            file_exists_behavior=params.get("fileExistsBehavior"),
            details=_details(app, group, params, _previous_revision(connection, group.group_id)),
        )
        try:
            launch(
                connection,
                deployment,
                group,
                outdated_only=bool(params.get("updateOutdatedInstancesOnly")),
            )
        except Conflict as error:
            blocker = store.active_for_group(connection, group.group_id)
            raise _limit_exceeded(group.name, blocker.deployment_id if blocker else "?") from error
        decisions = feed_in(ctx, connection, deployment_id, started(ctx))
    wake(ctx, *decisions)
    return {"deploymentId": deployment_id}


def overview_of(targets: Sequence[InstanceTarget]) -> dict[str, int]:
    """Targets by status, for ``deployment_info``."""
    return dict(Counter(target.status.value for target in targets))


def _overview(counts: Mapping[str, int]) -> dict[str, int]:
    return {
        status.value: counts.get(status.value, 0)
        for status in (
            TargetStatus.PENDING,
            TargetStatus.IN_PROGRESS,
            TargetStatus.SUCCEEDED,
            TargetStatus.FAILED,
            TargetStatus.SKIPPED,
            TargetStatus.READY,
        )
    }


def deployment_info(deployment: Deployment, counts: Mapping[str, int]) -> dict[str, Any]:
    """The ``DeploymentInfo`` shape; ``counts``: the deployment's targets by status."""
    info: dict[str, Any] = {
        **deployment.details,
        "applicationName": deployment.application_name,
        "deploymentGroupName": deployment.group_name,
        "deploymentConfigName": deployment.config_name,
        "deploymentId": deployment.deployment_id,
        "revision": dict(deployment.revision),
        "status": deployment.status.value,
        "createTime": deployment.create_time,
        "startTime": deployment.start_time,
        "completeTime": deployment.complete_time,
        "deploymentOverview": _overview(counts),
        "ignoreApplicationStopFailures": deployment.ignore_application_stop_failures,
        "fileExistsBehavior": deployment.file_exists_behavior or "DISALLOW",
        "deploymentStatusMessages": list(deployment.status_messages),
    }
    if deployment.error_code is not None and not deployment.active:
        info["errorInformation"] = {
            "code": deployment.error_code,
            "message": deployment.error_message or "",
        }
    return {key: value for key, value in info.items() if value is not None}


def get_deployment(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        deployment = require_deployment(connection, params.get("deploymentId"))
        counts = store.target_status_counts(connection, deployment.deployment_id)
    return {"deploymentInfo": deployment_info(deployment, counts)}


def batch_get_deployments(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Known deployments in the order asked; unknown ids are left out, as on AWS."""
    ids = params.get("deploymentIds") or []
    if len(ids) > BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(ids)} deployment ids were given; the limit is {BATCH_LIMIT}.",
        )
    infos = []
    with ctx.db.read() as connection:
        for deployment_id in dict.fromkeys(ids):
            deployment = store.by_id(connection, deployment_id)
            if deployment is not None:
                counts = store.target_status_counts(connection, deployment_id)
                infos.append(deployment_info(deployment, counts))
    return {"deploymentsInfo": infos}


def _paged(scope: str, items: Sequence[str], token: str | None, size: int) -> dict[str, Any]:
    start = decode_token(scope, token) or 0
    if not isinstance(start, int) or start < 0:
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    result: dict[str, Any] = {"items": list(items[start : start + size])}
    if start + size < len(items):
        result["nextToken"] = encode_token(scope, start + size)
    return result


def list_deployments(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    app_name, group_name = params.get("applicationName"), params.get("deploymentGroupName")
    if group_name and not app_name:
        raise ServiceError(
            "ApplicationNameRequiredException", "deploymentGroupName needs applicationName."
        )
    if app_name and not group_name:
        # §3.7: the two filters go together or not at all.
        raise ServiceError(
            "DeploymentGroupNameRequiredException", "applicationName needs deploymentGroupName."
        )
    time_range = params.get("createTimeRange") or {}
    start, end = time_range.get("start"), time_range.get("end")
    if start is not None and end is not None and start > end:
        raise ServiceError("InvalidTimeRangeException", "createTimeRange.start is after its end.")
    statuses = params.get("includeOnlyStatuses") or []
    with ctx.db.read() as connection:
        group_id = application_id = None
        if app_name:
            app = require_application(connection, app_name)
            application_id = app.application_id
            if group_name:
                group_id = require_group(connection, app, group_name).group_id
        ids = store.ids(
            connection,
            group_id=group_id,
            application_id=application_id,
            statuses=statuses,
            created_after=start,
            created_before=end,
        )
    scope = f"deployments:{application_id}:{group_id}:{sorted(statuses)}:{start}:{end}"
    page = _paged(scope, ids, params.get("nextToken"), ctx.page_size)
    result = {"deployments": page["items"]}
    if "nextToken" in page:
        result["nextToken"] = page["nextToken"]
    return result


def stop_deployment(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        deployment = require_deployment(connection, params.get("deploymentId"))
    if not deployment.active:
        raise ServiceError(
            "DeploymentAlreadyCompletedException",
            f"The deployment {deployment.deployment_id} has already completed "
            f"({deployment.status.value}).",
        )
    rollback = params.get("autoRollbackEnabled")
    feed(ctx, deployment.deployment_id, StopRequested(rollback=rollback))
    with ctx.db.read() as connection:
        stopped = store.by_id(connection, deployment.deployment_id)
    if stopped is not None and not stopped.active:
        return {
            "status": "Succeeded",
            "statusMessage": "No more commands will be scheduled for execution in the "
            "deployment instances",
        }
    return {
        "status": "Pending",
        "statusMessage": "Commands already running on instances will finish; no new ones "
        "will be scheduled. The deployment ends Stopped when they do.",
    }


def _instance_arns(connection: Connection, names: Sequence[str]) -> dict[str, str]:
    return {i.name: i.instance_arn for i in instance_store.by_names(connection, list(names))}


def _instance_target(target: InstanceTarget, arn: str | None) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "deploymentId": target.deployment_id,
        "targetId": target.instance_name,
        "status": target.status.value,
        "lastUpdatedAt": target.last_updated,
        "lifecycleEvents": [event.to_api() for event in target.events],
    }
    if arn is not None:
        shape["targetArn"] = arn
    return shape


def _instance_summary(target: InstanceTarget) -> dict[str, Any]:
    return {
        "deploymentId": target.deployment_id,
        "instanceId": target.instance_name,
        "status": target.status.value,
        "lastUpdatedAt": target.last_updated,
        "lifecycleEvents": [event.to_api() for event in target.events],
    }


def _targets_by_name(
    connection: Connection, params: Mapping[str, Any]
) -> tuple[Deployment, dict[str, InstanceTarget]]:
    deployment = require_deployment(connection, params.get("deploymentId"))
    targets = store.targets_of(connection, deployment.deployment_id)
    return deployment, {target.instance_name: target for target in targets}


def _requested(params: Mapping[str, Any], key: str, required_code: str) -> list[str]:
    names = list(dict.fromkeys(params.get(key) or []))
    if not names:
        raise ServiceError(required_code, f"{key} is required.")
    if len(names) > TARGET_BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(names)} ids were given; the limit is {TARGET_BATCH_LIMIT}.",
        )
    return names


def get_deployment_target(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    target_id = params.get("targetId")
    with ctx.db.read() as connection:
        _, targets = _targets_by_name(connection, params)
        target = targets.get(str(target_id))
        if target is None:
            raise ServiceError(
                "DeploymentTargetDoesNotExistException",
                f"The target {target_id} is not part of this deployment.",
            )
        arns = _instance_arns(connection, [target.instance_name])
    return {
        "deploymentTarget": {
            "deploymentTargetType": "InstanceTarget",
            "instanceTarget": _instance_target(target, arns.get(target.instance_name)),
        }
    }


def batch_get_deployment_targets(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    names = _requested(params, "targetIds", "DeploymentTargetIdRequiredException")
    with ctx.db.read() as connection:
        _, targets = _targets_by_name(connection, params)
        missing = [name for name in names if name not in targets]
        if missing:
            raise ServiceError(
                "DeploymentTargetDoesNotExistException",
                f"Not targets of this deployment: {', '.join(missing)}",
            )
        arns = _instance_arns(connection, names)
    return {
        "deploymentTargets": [
            {
                "deploymentTargetType": "InstanceTarget",
                "instanceTarget": _instance_target(targets[name], arns.get(name)),
            }
            for name in names
        ]
    }


def list_deployment_targets(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = params.get("targetFilters") or {}
    unknown = set(filters) - {"TargetStatus", "ServerInstanceLabel"}
    if unknown:
        raise ServiceError(
            "InvalidTargetFilterNameException",
            f"Unknown target filter {sorted(unknown)[0]}; use TargetStatus or ServerInstanceLabel.",
        )
    wanted = set(filters.get("TargetStatus") or [])
    with ctx.db.read() as connection:
        deployment, targets = _targets_by_name(connection, params)
    names = [
        name for name, target in targets.items() if not wanted or target.status.value in wanted
    ]
    if filters.get("ServerInstanceLabel"):
        names = []
    page = _paged(
        f"targets:{deployment.deployment_id}:{sorted(wanted)}",
        names,
        params.get("nextToken"),
        ctx.page_size,
    )
    result = {"targetIds": page["items"]}
    if "nextToken" in page:
        result["nextToken"] = page["nextToken"]
    return result


def get_deployment_instance(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    instance_id = params.get("instanceId")
    if not instance_id:
        raise ServiceError("InstanceIdRequiredException", "instanceId is required.")
    with ctx.db.read() as connection:
        _, targets = _targets_by_name(connection, params)
    target = targets.get(str(instance_id))
    if target is None:
        raise ServiceError(
            "InstanceDoesNotExistException",
            f"The instance {instance_id} is not part of this deployment.",
        )
    return {"instanceSummary": _instance_summary(target)}


def batch_get_deployment_instances(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    names = _requested(params, "instanceIds", "InstanceIdRequiredException")
    with ctx.db.read() as connection:
        _, targets = _targets_by_name(connection, params)
    missing = [name for name in names if name not in targets]
    result: dict[str, Any] = {
        "instancesSummary": [_instance_summary(targets[n]) for n in names if n in targets]
    }
    if missing:
        result["errorMessage"] = "Not instances of this deployment: " + ", ".join(missing)
    return result


def list_deployment_instances(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("instanceTypeFilter"):
        raise ServiceError(
            "InvalidDeploymentInstanceTypeException",
            "instanceTypeFilter applies only to blue/green deployments.",
        )
    wanted = set(params.get("instanceStatusFilter") or [])
    with ctx.db.read() as connection:
        deployment, targets = _targets_by_name(connection, params)
    names = [n for n, t in targets.items() if not wanted or t.status.value in wanted]
    page = _paged(
        f"instances:{deployment.deployment_id}:{sorted(wanted)}",
        names,
        params.get("nextToken"),
        ctx.page_size,
    )
    result = {"instancesList": page["items"]}
    if "nextToken" in page:
        result["nextToken"] = page["nextToken"]
    return result


def get_lifecycle_event_log(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """The full output of one lifecycle event on one target, from ``offset`` on."""
    target_id, event_name = params.get("targetId"), params.get("lifecycleEventName")
    offset = params.get("offset") or 0
    with ctx.db.read() as connection:
        _, targets = _targets_by_name(connection, params)
        target = targets.get(str(target_id))
        if target is None:
            raise ServiceError(
                "DeploymentTargetDoesNotExistException",
                f"The target {target_id} is not part of this deployment.",
            )
        names = [event.name for event in target.events]
        if event_name not in names:
            raise ServiceError(
                "LifecycleEventDoesNotExistException",
                f"{event_name!r} is not a lifecycle event of this deployment; "
                f"its events are {', '.join(names)}.",
            )
        log_id = command_id(target.deployment_id, target.position, names.index(event_name))
        text = store.log_of(connection, log_id) or ""
    return {
        "log": text[offset:],
        "offset": offset,
        "size": len(text),
        "status": target.event(str(event_name)).status.value,
    }
