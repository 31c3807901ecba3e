"""Rules a deployment group's settings must follow (codedeploy-spec §3.3), beyond the model's.

``spec`` is the mapping of CreateDeploymentGroup / UpdateDeploymentGroup members other than
the names, the config and the role; after an update it is the merged result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opendeploy.core.errors import ServiceError
from opendeploy.core.targeting import check_tag_filters, check_tag_set

__all__ = [
    "DEFAULT_STYLE",
    "SPEC_MEMBERS",
    "default_config_name",
    "default_style",
    "validate_group_spec",
    "with_defaults",
]

SPEC_MEMBERS = (
    "ec2TagFilters",
    "onPremisesInstanceTagFilters",
    "autoScalingGroups",
    "triggerConfigurations",
    "alarmConfiguration",
    "autoRollbackConfiguration",
    "outdatedInstancesStrategy",
    "deploymentStyle",
    "blueGreenDeploymentConfiguration",
    "loadBalancerInfo",
    "ec2TagSet",
    "ecsServices",
    "onPremisesTagSet",
    "terminationHookEnabled",
)
DEFAULT_STYLE: Mapping[str, str] = {
    "deploymentType": "IN_PLACE",
    "deploymentOption": "WITHOUT_TRAFFIC_CONTROL",
}
_TRAFFIC_STYLE: Mapping[str, str] = {
    "deploymentType": "BLUE_GREEN",
    "deploymentOption": "WITH_TRAFFIC_CONTROL",
}
MAX_TRIGGERS = 10
MAX_ALARMS = 10
MAX_ALARM_NAME = 255
MAX_LOAD_BALANCERS = 10
MAX_WAIT_MINUTES = 2880
TRIGGER_TARGET_PREFIXES = ("arn:aws:sns:", "https://", "http://")
MAX_ECS_SERVICES = 1
_DEFAULT_CONFIGS: Mapping[str, str] = {
    "Server": "CodeDeployDefault.OneAtATime",
    "Lambda": "CodeDeployDefault.LambdaAllAtOnce",
    "ECS": "CodeDeployDefault.ECSAllAtOnce",
}


def default_config_name(platform: str) -> str:
    """The deployment configuration a group of ``platform`` uses when none is given."""
    return _DEFAULT_CONFIGS.get(platform, _DEFAULT_CONFIGS["Server"])


def default_style(platform: str) -> Mapping[str, str]:
    """Server groups deploy in place; Lambda and ECS are always blue/green with traffic control."""
    return DEFAULT_STYLE if platform == "Server" else _TRAFFIC_STYLE


def with_defaults(spec: Mapping[str, Any], platform: str) -> dict[str, Any]:
    """The members AWS always reports, filled in where the user gave none."""
    result = dict(spec)
    result.setdefault("deploymentStyle", dict(default_style(platform)))
    result.setdefault("outdatedInstancesStrategy", "UPDATE")
    result.setdefault("triggerConfigurations", [])
    result.setdefault("autoScalingGroups", [])
    result.setdefault("ec2TagFilters", [])
    result.setdefault("onPremisesInstanceTagFilters", [])
    result.setdefault(
        "alarmConfiguration", {"enabled": False, "ignorePollAlarmFailure": False, "alarms": []}
    )
    result.setdefault("autoRollbackConfiguration", {"enabled": False, "events": []})
    result.setdefault("terminationHookEnabled", False)
    return result


def _check_tags(spec: Mapping[str, Any]) -> None:
    if spec.get("ec2TagFilters") and spec.get("ec2TagSet"):
        raise ServiceError(
            "InvalidEC2TagCombinationException", "Give ec2TagFilters or ec2TagSet, not both."
        )
    if spec.get("onPremisesInstanceTagFilters") and spec.get("onPremisesTagSet"):
        raise ServiceError(
            "InvalidOnPremisesTagCombinationException",
            "Give onPremisesInstanceTagFilters or onPremisesTagSet, not both.",
        )
    check_tag_filters(
        spec.get("ec2TagFilters") or [], field="ec2TagFilters", error_code="InvalidEC2TagException"
    )
    check_tag_filters(
        spec.get("onPremisesInstanceTagFilters") or [],
        field="onPremisesInstanceTagFilters",
        error_code="InvalidTagException",
    )
    ec2_set = (spec.get("ec2TagSet") or {}).get("ec2TagSetList") or []
    check_tag_set(ec2_set, field="ec2TagSet.ec2TagSetList", error_code="InvalidEC2TagException")
    onprem_set = (spec.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
    check_tag_set(
        onprem_set, field="onPremisesTagSet.onPremisesTagSetList", error_code="InvalidTagException"
    )


def _check_triggers(spec: Mapping[str, Any]) -> None:
    triggers = spec.get("triggerConfigurations") or []
    if len(triggers) > MAX_TRIGGERS:
        raise ServiceError(
            "TriggerTargetsLimitExceededException",
            f"{len(triggers)} triggers were given; the limit is {MAX_TRIGGERS}.",
        )
    names: set[str] = set()
    for index, trigger in enumerate(triggers):
        where = f"triggerConfigurations[{index}]"
        name, target = trigger.get("triggerName"), trigger.get("triggerTargetArn") or ""
        if not name:
            raise ServiceError("InvalidTriggerConfigException", f"{where}.triggerName is required.")
        if name in names:
            raise ServiceError("InvalidTriggerConfigException", f"Two triggers are named {name!r}.")
        names.add(name)
        if not target.startswith(TRIGGER_TARGET_PREFIXES):
            raise ServiceError(
                "InvalidTriggerConfigException",
                f"{where}.triggerTargetArn must be an SNS topic ARN or an http(s) URL, "
                f"not {target!r}.",
            )
        if not trigger.get("triggerEvents"):
            raise ServiceError("InvalidTriggerConfigException", f"{where}.triggerEvents is empty.")


def _check_alarms(spec: Mapping[str, Any]) -> None:
    alarm = spec.get("alarmConfiguration")
    if not alarm:
        return
    alarms = alarm.get("alarms") or []
    if len(alarms) > MAX_ALARMS:
        raise ServiceError(
            "AlarmsLimitExceededException",
            f"{len(alarms)} alarms were given; the limit is {MAX_ALARMS}.",
        )
    seen: set[str] = set()
    for index, entry in enumerate(alarms):
        name = entry.get("name")
        if not name:
            raise ServiceError(
                "InvalidAlarmConfigException", f"alarmConfiguration.alarms[{index}] has no name."
            )
        if len(name) > MAX_ALARM_NAME:
            raise ServiceError(
                "InvalidAlarmConfigException",
                f"alarmConfiguration.alarms[{index}].name is {len(name)} characters long; "
                f"the limit is {MAX_ALARM_NAME}.",
            )
        if name in seen:
            raise ServiceError(
                "InvalidAlarmConfigException",
                f"alarmConfiguration lists the alarm {name!r} twice.",
            )
        seen.add(name)
    if alarm.get("enabled") and not alarms:
        raise ServiceError(
            "InvalidAlarmConfigException", "alarmConfiguration is enabled but lists no alarms."
        )


def _check_rollback(spec: Mapping[str, Any]) -> None:
    rollback = spec.get("autoRollbackConfiguration")
    if rollback and rollback.get("enabled") and not rollback.get("events"):
        raise ServiceError(
            "InvalidAutoRollbackConfigException",
            "autoRollbackConfiguration is enabled but names no events.",
        )


def _check_style(spec: Mapping[str, Any], platform: str) -> None:
    style = spec.get("deploymentStyle") or {}
    defaults = default_style(platform)
    kind = style.get("deploymentType") or defaults["deploymentType"]
    option = style.get("deploymentOption") or defaults["deploymentOption"]
    if platform in ("Lambda", "ECS") and (kind, option) != ("BLUE_GREEN", "WITH_TRAFFIC_CONTROL"):
        raise ServiceError(
            "InvalidDeploymentStyleException",
            f"{platform} deployment groups are BLUE_GREEN with WITH_TRAFFIC_CONTROL.",
        )
    balancers = spec.get("loadBalancerInfo") or {}
    has_balancer = any(balancers.get(key) for key in balancers)
    if platform == "Server" and option == "WITH_TRAFFIC_CONTROL" and not has_balancer:
        raise ServiceError(
            "InvalidLoadBalancerInfoException",
            "WITH_TRAFFIC_CONTROL needs loadBalancerInfo naming the load balancer to use.",
        )
    for key in ("elbInfoList", "targetGroupInfoList"):
        if len(balancers.get(key) or []) > MAX_LOAD_BALANCERS:
            raise ServiceError(
                "InvalidLoadBalancerInfoException",
                f"loadBalancerInfo.{key} has more than {MAX_LOAD_BALANCERS} entries.",
            )
    if len(balancers.get("targetGroupPairInfoList") or []) > 1:
        raise ServiceError(
            "InvalidLoadBalancerInfoException", "loadBalancerInfo takes one target group pair."
        )
    blue_green = spec.get("blueGreenDeploymentConfiguration") or {}
    waits = [
        (blue_green.get("deploymentReadyOption") or {}).get("waitTimeInMinutes"),
        (blue_green.get("terminateBlueInstancesOnDeploymentSuccess") or {}).get(
            "terminationWaitTimeInMinutes"
        ),
    ]
    if any(wait is not None and not 0 <= wait <= MAX_WAIT_MINUTES for wait in waits):
        raise ServiceError(
            "InvalidBlueGreenDeploymentConfigurationException",
            f"Blue/green wait times are between 0 and {MAX_WAIT_MINUTES} minutes.",
        )


def _check_ecs_services(spec: Mapping[str, Any], platform: str) -> None:
    services = spec.get("ecsServices") or []
    if services and platform != "ECS":
        raise ServiceError(
            "InvalidECSServiceException",
            f"ecsServices apply only to ECS applications; this application is {platform}.",
        )
    if len(services) > MAX_ECS_SERVICES:
        raise ServiceError(
            "InvalidECSServiceException",
            f"ecsServices lists {len(services)} services; a deployment group takes "
            f"{MAX_ECS_SERVICES}.",
        )


def validate_group_spec(spec: Mapping[str, Any], platform: str) -> None:
    if spec.get("autoScalingGroups"):
        raise ServiceError(
            "InvalidAutoScalingGroupException",
            "OpenDeploy targets registered on-premises instances by tags; "
            "Auto Scaling groups are not available.",
        )
    _check_tags(spec)
    _check_triggers(spec)
    _check_alarms(spec)
    _check_rollback(spec)
    _check_style(spec, platform)
    _check_ecs_services(spec, platform)
