"""What a trigger sends: CodeDeploy's SNS message shapes (codedeploy-spec §8.7), its subject
line, and the per-trigger secret that signs webhook deliveries.

Messages describe the deployment or instance *as of the event*: statuses come from the event,
and lifecycle events and counts are read back to the event's time from their recorded start
and end times, so a message built a moment later (the worker runs apart from the engine)
still tells what happened when the event fired. Every scalar value is a string, times are
epoch seconds with milliseconds ("1446744207.564"), as CodeDeploy sends them.

Per-trigger secrets are derived, never stored: HMAC-SHA256 of the deployment group's id and
the trigger's name under one random installation key, which is kept in the ``meta`` table
sealed with the server's secret box. Every replica sharing the database (and the box key)
derives the same secret; deleting and re-creating a group gives its triggers new secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.deployments import (
    Deployment,
    EventStatus,
    InstanceTarget,
    LifecycleEvent,
    TargetStatus,
)
from opendeploy.server.secrets import SecretBox
from opendeploy.store import meta

__all__ = [
    "DEPLOYMENT_EVENTS",
    "INSTANCE_EVENTS",
    "SIGNATURE_HEADER",
    "deployment_message",
    "encode",
    "installation_key",
    "instance_message",
    "matching_triggers",
    "sign",
    "subject",
    "trigger_secret",
]

SIGNATURE_HEADER = "X-OpenDeploy-Signature"
_KEY_NAME = "trigger_signing_key"

#: Deployment-level events and the deployment status each one reports (None: the current one).
DEPLOYMENT_EVENTS: Mapping[str, str | None] = {
    "DeploymentStart": "InProgress",
    "DeploymentSuccess": "Succeeded",
    "DeploymentFailure": "Failed",
    "DeploymentStop": "Stopped",
    "DeploymentReady": "Ready",
    "DeploymentRollback": None,
}
#: Instance-level events and the instance status each one reports.
INSTANCE_EVENTS: Mapping[str, str] = {
    "InstanceStart": "InProgress",
    "InstanceSuccess": "Succeeded",
    "InstanceFailure": "Failed",
    "InstanceReady": "Ready",
}
_TERMINAL = frozenset({"Succeeded", "Failed", "Stopped"})
_OVERVIEW = ("Failed", "InProgress", "Pending", "Skipped", "Succeeded")


def _time(value: float) -> str:
    return f"{value:.3f}"


def matching_triggers(spec: Mapping[str, Any], event: str) -> list[Mapping[str, Any]]:
    """The group's trigger configurations subscribed to ``event``."""
    return [
        trigger
        for trigger in spec.get("triggerConfigurations") or []
        if event in (trigger.get("triggerEvents") or ())
        and trigger.get("triggerName")
        and trigger.get("triggerTargetArn")
    ]


def _target_status_at(target: InstanceTarget, at: float) -> str:
    """The target's status at time ``at``, read back from its recorded times."""
    if target.last_updated <= at:
        return target.status.value
    if target.status is TargetStatus.PENDING:
        return TargetStatus.PENDING.value
    started = any(e.start_time is not None and e.start_time <= at for e in target.events)
    return TargetStatus.IN_PROGRESS.value if started else TargetStatus.PENDING.value


def _event_at(event: LifecycleEvent, at: float, *, finished: bool) -> dict[str, str]:
    """One ``lifecycleEvents`` entry as of ``at``; ``finished``: the instance had ended."""
    if event.end_time is not None and event.end_time <= at:
        shape = {"LifecycleEvent": event.name, "LifecycleEventStatus": event.status.value}
        if event.start_time is not None:
            shape["StartTime"] = _time(event.start_time)
        shape["EndTime"] = _time(event.end_time)
        return shape
    if event.start_time is not None and event.start_time <= at:
        return {
            "LifecycleEvent": event.name,
            "LifecycleEventStatus": EventStatus.IN_PROGRESS.value,
            "StartTime": _time(event.start_time),
        }
    status = event.status if finished and event.end_time is None else EventStatus.PENDING
    return {"LifecycleEvent": event.name, "LifecycleEventStatus": status.value}


def deployment_message(
    *,
    region: str,
    account_id: str,
    trigger_name: str,
    event: str,
    deployment: Deployment,
    targets: Sequence[InstanceTarget],
    at: float,
) -> dict[str, Any]:
    """The deployment-level message of ``event``, which happened at ``at``."""
    status = DEPLOYMENT_EVENTS.get(event) or deployment.status.value
    counts = dict.fromkeys(_OVERVIEW, 0)
    for target in targets:
        state = _target_status_at(target, at)
        if state in counts:
            counts[state] += 1
    message: dict[str, Any] = {
        "region": region,
        "accountId": account_id,
        "eventTriggerName": trigger_name,
        "applicationName": deployment.application_name,
        "deploymentId": deployment.deployment_id,
        "deploymentGroupName": deployment.group_name,
        "createTime": _time(deployment.create_time),
    }
    if status in _TERMINAL and deployment.complete_time is not None:
        message["completeTime"] = _time(deployment.complete_time)
    message["deploymentOverview"] = {name: str(count) for name, count in counts.items()}
    message["status"] = status
    if status in ("Failed", "Stopped") and deployment.error_code:
        message["errorInformation"] = {
            "ErrorCode": deployment.error_code,
            "ErrorMessage": deployment.error_message or "",
        }
    return message


def instance_message(
    *,
    region: str,
    account_id: str,
    trigger_name: str,
    event: str,
    target: InstanceTarget,
    instance_arn: str,
    at: float,
) -> dict[str, Any]:
    """The instance-level message of ``event`` about ``target``, which happened at ``at``."""
    status = INSTANCE_EVENTS.get(event, target.status.value)
    finished = status in _TERMINAL
    return {
        "region": region,
        "accountId": account_id,
        "eventTriggerName": trigger_name,
        "deploymentId": target.deployment_id,
        "instanceId": instance_arn,
        "lastUpdatedAt": _time(at),
        "instanceStatus": status,
        "lifecycleEvents": [_event_at(e, at, finished=finished) for e in target.events],
    }


def subject(
    status: str, deployment_id: str, region: str, application: str, instance: str | None
) -> str:
    """An SNS subject in CodeDeploy's style ("SUCCEEDED: AWS CodeDeploy d-... in us-east-1
    to my-app"): printable ASCII, at most 100 characters."""
    word = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(status)).upper()
    text = f"{word}: AWS CodeDeploy {deployment_id} in {region} to {application}"
    if instance:
        text += f" instance {instance}"
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:100]


def encode(message: Mapping[str, Any]) -> str:
    """The message as sent: compact JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def installation_key(connection: Connection, box: SecretBox) -> bytes:
    """The installation's random trigger key (made on first use, stored sealed)."""
    fresh = box.seal(base64.b64encode(os.urandom(32)).decode("ascii"))
    sealed = meta.get_or_create(connection, _KEY_NAME, fresh)
    return base64.b64decode(box.open(sealed))


def trigger_secret(key: bytes, group_id: str, trigger_name: str) -> str:
    """The secret that signs the deliveries of one trigger of one deployment group."""
    material = f"opendeploy-trigger\x00{group_id}\x00{trigger_name}".encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes) -> str:
    """The ``X-OpenDeploy-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
