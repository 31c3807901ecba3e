"""Automatic rollbacks (codedeploy-spec §8.5): a new deployment of the last good revision.

Called by the engine runner, inside the transaction that ended the failed deployment, when
the engine says its autoRollbackConfiguration asks for one.
"""

from __future__ import annotations

from sqlalchemy import Connection

from opendeploy.core.deployments import Deployment, DeploymentStatus
from opendeploy.core.engine import ROLLBACK_CREATOR
from opendeploy.core.errors import Conflict
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.launch import launch, new_deployment_id
from opendeploy.store import deployments as store
from opendeploy.store import groups as group_store

__all__ = ["last_good_deployment", "start_rollback"]


def last_good_deployment(
    connection: Connection, group_id: str, *, before: Deployment
) -> Deployment | None:
    """The group's latest Succeeded deployment created before ``before``."""
    for deployment_id in store.ids(
        connection,
        group_id=group_id,
        statuses=[DeploymentStatus.SUCCEEDED.value],
        created_before=before.create_time,
    ):
        found = store.by_id(connection, deployment_id)
        if found is not None and found.deployment_id != before.deployment_id:
            return found
    return None


def _note(connection: Connection, deployment: Deployment, info: dict[str, str]) -> None:
    store.set_details(
        connection, deployment.deployment_id, {**deployment.details, "rollbackInfo": info}
    )


def start_rollback(ctx: ServiceContext, connection: Connection, failed_id: str) -> str | None:
    """Create the rollback of ``failed_id``; its id, or None when there is nothing to roll
    back to (the failed deployment's rollbackInfo then says why)."""
    failed = store.by_id(connection, failed_id)
    if failed is None:
        return None
    group = group_store.by_id(connection, failed.group_id)
    good = last_good_deployment(connection, failed.group_id, before=failed)
    if group is None or good is None:
        reason = (
            f"the deployment group {failed.group_name} no longer exists"
            if group is None
            else f"the deployment group {failed.group_name} has no earlier successful "
            "deployment to roll back to"
        )
        _note(
            connection,
            failed,
            {"rollbackMessage": f"Automatic rollback was not started: {reason}."},
        )
        return None
    rollback_id = new_deployment_id()
    rollback = Deployment(
        deployment_id=rollback_id,
        application_id=failed.application_id,
        application_name=failed.application_name,
        group_id=failed.group_id,
        group_name=failed.group_name,
        config_name=failed.config_name,
        minimum_healthy_hosts=failed.minimum_healthy_hosts,
        revision=good.revision,
        status=DeploymentStatus.CREATED,
        create_time=ctx.clock(),
        # The failed revision's ApplicationStop runs first; a broken one must not keep the
        # hosts on the bad revision (issue 4): its failures are ignored.
        ignore_application_stop_failures=True,
        file_exists_behavior=good.file_exists_behavior,
        details={
            **{k: v for k, v in failed.details.items() if k != "rollbackInfo"},
            "creator": ROLLBACK_CREATOR,
            "description": f"Rollback of {failed_id} to the revision of {good.deployment_id}",
            "previousRevision": dict(failed.revision),
            "rollbackInfo": {
                "rollbackTriggeringDeploymentId": failed_id,
                "rollbackMessage": f"Deployment {rollback_id} is triggered to roll back "
                f"deployment {failed_id}.",
            },
        },
    )
    try:
        launch(connection, rollback, group)
    except Conflict:
        _note(
            connection,
            failed,
            {
                "rollbackMessage": "Automatic rollback was not started: another deployment "
                "of the group is already active."
            },
        )
        return None
    _note(
        connection,
        failed,
        {
            "rollbackDeploymentId": rollback_id,
            "rollbackMessage": f"Deployment {failed_id} terminated. Automatic rollback is "
            f"triggered with a DeploymentId {rollback_id}.",
        },
    )
    store.add_notification(
        connection, failed_id, failed.group_id, "DeploymentRollback", now=ctx.clock()
    )
    return rollback_id
