"""Trigger operations of the ``opendeploy`` public API extensions.

ListTriggerDeliveries   what happened to each trigger event of a deployment (readers too)
RevealTriggerSecret     the secret that signs one trigger's webhook deliveries (admin only:
                        the policy table gives non-read operations outside the deployer's
                        list to admins alone, and the API audits it as a sensitive call)
"""

from __future__ import annotations

from typing import Any

from opendeploy.core.errors import ServiceError
from opendeploy.server.service.applications import require_application
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.server.service.deployments import require_deployment
from opendeploy.server.service.groups import require_group
from opendeploy.server.service.triggers_messages import (
    SIGNATURE_HEADER,
    installation_key,
    trigger_secret,
)
from opendeploy.store import triggers as store
from opendeploy.store.triggers import Delivery

__all__ = ["delivery_info", "list_trigger_deliveries", "reveal_trigger_secret"]


def delivery_info(delivery: Delivery) -> dict[str, Any]:
    """The ``TriggerDelivery`` shape."""
    info: dict[str, Any] = {
        "deliveryId": delivery.delivery_id,
        "deploymentId": delivery.deployment_id,
        "triggerName": delivery.trigger_name,
        "triggerTargetArn": delivery.target,
        "triggerEvent": delivery.event,
        "instanceId": delivery.instance_name,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "lastHttpStatus": delivery.last_http_status,
        "lastError": delivery.last_error,
        "createTime": delivery.create_time,
        "lastAttemptTime": delivery.last_attempt_time,
        "nextAttemptTime": delivery.next_attempt_time,
        "completeTime": delivery.complete_time,
    }
    return {key: value for key, value in info.items() if value is not None}


def list_trigger_deliveries(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    deployment_id = params.get("deploymentId")
    offset = decode_token(f"trigger-deliveries:{deployment_id}", params.get("nextToken")) or 0
    if not isinstance(offset, int) or offset < 0:
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    with ctx.db.read() as connection:
        deployment = require_deployment(connection, deployment_id)
        found = store.for_deployment(
            connection, deployment.deployment_id, offset=offset, limit=ctx.page_size + 1
        )
    result: dict[str, Any] = {
        "deliveries": [delivery_info(d) for d in found[: ctx.page_size]],
    }
    if len(found) > ctx.page_size:
        result["nextToken"] = encode_token(
            f"trigger-deliveries:{deployment.deployment_id}", offset + ctx.page_size
        )
    return result


def reveal_trigger_secret(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = params.get("triggerName")
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        group = require_group(connection, app, params.get("deploymentGroupName"))
        triggers = group.spec.get("triggerConfigurations") or []
        if not any(trigger.get("triggerName") == name for trigger in triggers):
            raise ServiceError(
                "TriggerDoesNotExistException",
                f"The deployment group {group.name} has no trigger named {name!r}.",
            )
        key = installation_key(connection, ctx.secrets)
    return {
        "triggerName": name,
        "secret": trigger_secret(key, group.group_id, str(name)),
        "signatureHeader": SIGNATURE_HEADER,
    }
