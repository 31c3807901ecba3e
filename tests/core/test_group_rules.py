"""Rules of a deployment group's settings (codedeploy-spec §3.3, §10), without a server."""

from __future__ import annotations

from typing import Any

import pytest

from opendeploy.core.errors import ServiceError
from opendeploy.core.groups import (
    SPEC_MEMBERS,
    default_config_name,
    default_style,
    validate_group_spec,
    with_defaults,
)

TRIGGER = {
    "triggerName": "t",
    "triggerTargetArn": "arn:aws:sns:us-east-1:123456789012:topic",
    "triggerEvents": ["DeploymentFailure"],
}
TRAFFIC = {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"}
IN_PLACE = {"deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"}
PAIR = {"targetGroups": [{"name": "a"}, {"name": "b"}]}


def _refused(spec: dict[str, Any], platform: str = "Server") -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        validate_group_spec(spec, platform)
    return caught.value


def test_spec_members_are_the_models_minus_names_config_role_and_tags() -> None:
    assert set(SPEC_MEMBERS) == {
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
    }


def test_defaults_per_platform() -> None:
    assert default_config_name("Server") == "CodeDeployDefault.OneAtATime"
    assert default_config_name("Lambda") == "CodeDeployDefault.LambdaAllAtOnce"
    assert default_config_name("ECS") == "CodeDeployDefault.ECSAllAtOnce"
    assert dict(default_style("Server")) == IN_PLACE
    assert dict(default_style("Lambda")) == TRAFFIC
    assert dict(default_style("ECS")) == TRAFFIC


def test_with_defaults_fills_only_what_is_missing() -> None:
    filled = with_defaults({}, "Server")
    assert filled == {
        "deploymentStyle": IN_PLACE,
        "outdatedInstancesStrategy": "UPDATE",
        "triggerConfigurations": [],
        "autoScalingGroups": [],
        "ec2TagFilters": [],
        "onPremisesInstanceTagFilters": [],
        "alarmConfiguration": {"enabled": False, "ignorePollAlarmFailure": False, "alarms": []},
        "autoRollbackConfiguration": {"enabled": False, "events": []},
        "terminationHookEnabled": False,
    }
    assert with_defaults({}, "Lambda")["deploymentStyle"] == TRAFFIC
    given = {
        "outdatedInstancesStrategy": "IGNORE",
        "deploymentStyle": TRAFFIC,
        "ec2TagSet": {"ec2TagSetList": [[{"Key": "k"}]]},
    }
    filled = with_defaults(given, "Server")
    assert {key: filled[key] for key in given} == given
    # The stored spec is not modified, and the defaults are fresh objects each time.
    assert "triggerConfigurations" not in given
    filled["deploymentStyle"]["deploymentType"] = "changed"
    assert with_defaults({}, "Server")["deploymentStyle"] == IN_PLACE


def test_a_valid_spec_passes() -> None:
    validate_group_spec({}, "Server")
    validate_group_spec({}, "Lambda")
    validate_group_spec({}, "ECS")
    validate_group_spec(
        {
            "ec2TagSet": {"ec2TagSetList": [[{"Key": "a"}], [{"Key": "b"}], [{"Key": "c"}]]},
            "onPremisesInstanceTagFilters": [{"Key": "k", "Value": "v", "Type": "KEY_AND_VALUE"}],
            "triggerConfigurations": [
                {**TRIGGER, "triggerName": f"t{i}", "triggerTargetArn": target}
                for i, target in enumerate(
                    ["arn:aws:sns:eu-west-1:1:x", "https://h.example/x", "http://10.0.0.1/"] * 3
                )
            ],
            "alarmConfiguration": {
                "enabled": True,
                "alarms": [{"name": f"a{i}"} for i in range(10)],
            },
            "autoRollbackConfiguration": {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
            "deploymentStyle": TRAFFIC,
            "loadBalancerInfo": {"elbInfoList": [{"name": f"e{i}"} for i in range(10)]},
            "blueGreenDeploymentConfiguration": {
                "deploymentReadyOption": {"waitTimeInMinutes": 2880},
                "terminateBlueInstancesOnDeploymentSuccess": {"terminationWaitTimeInMinutes": 0},
            },
            "autoScalingGroups": [],
        },
        "Server",
    )
    # Disabled configurations may keep their lists, or have none.
    validate_group_spec(
        {
            "alarmConfiguration": {"enabled": False, "alarms": []},
            "autoRollbackConfiguration": {"enabled": False},
        },
        "Server",
    )


@pytest.mark.parametrize(
    ("spec", "platform", "code", "fragments"),
    [
        (
            {"autoScalingGroups": ["asg"]},
            "Server",
            "InvalidAutoScalingGroupException",
            ("Auto Scaling",),
        ),
        (
            {"ec2TagFilters": [{"Key": "k"}], "ec2TagSet": {"ec2TagSetList": [[{"Key": "k"}]]}},
            "Server",
            "InvalidEC2TagCombinationException",
            ("ec2TagFilters", "ec2TagSet"),
        ),
        (
            {
                "onPremisesInstanceTagFilters": [{"Key": "k"}],
                "onPremisesTagSet": {"onPremisesTagSetList": [[{"Key": "k"}]]},
            },
            "Server",
            "InvalidOnPremisesTagCombinationException",
            ("onPremisesInstanceTagFilters", "onPremisesTagSet"),
        ),
        (
            {"ec2TagSet": {"ec2TagSetList": [[{"Key": "k"}]] * 4}},
            "Server",
            "TagSetListLimitExceededException",
            ("ec2TagSet",),
        ),
        (
            {"onPremisesTagSet": {"onPremisesTagSetList": [[{"Key": "k"}]] * 4}},
            "Server",
            "TagSetListLimitExceededException",
            ("onPremisesTagSet",),
        ),
        (
            {"ec2TagFilters": [{"Type": "KEY_ONLY"}]},
            "Server",
            "InvalidEC2TagException",
            ("ec2TagFilters[0]",),
        ),
        (
            {"onPremisesInstanceTagFilters": [{"Type": "VALUE_ONLY", "Key": "k"}]},
            "Server",
            "InvalidTagException",
            ("onPremisesInstanceTagFilters[0]",),
        ),
        (
            {"triggerConfigurations": [{**TRIGGER, "triggerName": f"t{i}"} for i in range(11)]},
            "Server",
            "TriggerTargetsLimitExceededException",
            ("11",),
        ),
        (
            {"triggerConfigurations": [{**TRIGGER, "triggerName": ""}]},
            "Server",
            "InvalidTriggerConfigException",
            ("triggerConfigurations[0].triggerName",),
        ),
        (
            {"triggerConfigurations": [TRIGGER, TRIGGER]},
            "Server",
            "InvalidTriggerConfigException",
            ("'t'",),
        ),
        (
            {"triggerConfigurations": [{**TRIGGER, "triggerTargetArn": "ftp://x"}]},
            "Server",
            "InvalidTriggerConfigException",
            ("ftp://x",),
        ),
        (
            {"triggerConfigurations": [{**TRIGGER, "triggerTargetArn": None}]},
            "Server",
            "InvalidTriggerConfigException",
            ("triggerTargetArn",),
        ),
        (
            {"triggerConfigurations": [{**TRIGGER, "triggerEvents": []}]},
            "Server",
            "InvalidTriggerConfigException",
            ("triggerEvents",),
        ),
        (
            {"alarmConfiguration": {"alarms": [{"name": f"a{i}"} for i in range(11)]}},
            "Server",
            "AlarmsLimitExceededException",
            ("11", "10"),
        ),
        (
            {"alarmConfiguration": {"enabled": True}},
            "Server",
            "InvalidAlarmConfigException",
            ("no alarms",),
        ),
        (
            {"alarmConfiguration": {"alarms": [{"name": "a"}, {}]}},
            "Server",
            "InvalidAlarmConfigException",
            ("alarms[1]", "no name"),
        ),
        (
            {"alarmConfiguration": {"alarms": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}},
            "Server",
            "InvalidAlarmConfigException",
            ("'a'", "twice"),
        ),
        (
            {"alarmConfiguration": {"alarms": [{"name": "x" * 256}]}},
            "Server",
            "InvalidAlarmConfigException",
            ("alarms[0].name", "256", "255"),
        ),
        (
            {"autoRollbackConfiguration": {"enabled": True, "events": []}},
            "Server",
            "InvalidAutoRollbackConfigException",
            ("events",),
        ),
        (
            {"deploymentStyle": {"deploymentOption": "WITH_TRAFFIC_CONTROL"}},
            "Server",
            "InvalidLoadBalancerInfoException",
            ("WITH_TRAFFIC_CONTROL",),
        ),
        (
            {"deploymentStyle": TRAFFIC, "loadBalancerInfo": {"elbInfoList": []}},
            "Server",
            "InvalidLoadBalancerInfoException",
            ("loadBalancerInfo",),
        ),
        (
            {"loadBalancerInfo": {"targetGroupInfoList": [{"name": f"t{i}"} for i in range(11)]}},
            "Server",
            "InvalidLoadBalancerInfoException",
            ("targetGroupInfoList",),
        ),
        (
            {"loadBalancerInfo": {"targetGroupPairInfoList": [PAIR, PAIR]}},
            "ECS",
            "InvalidLoadBalancerInfoException",
            ("pair",),
        ),
        ({"deploymentStyle": IN_PLACE}, "Lambda", "InvalidDeploymentStyleException", ("Lambda",)),
        (
            {"deploymentStyle": {"deploymentType": "IN_PLACE"}},
            "ECS",
            "InvalidDeploymentStyleException",
            ("ECS",),
        ),
        (
            {
                "blueGreenDeploymentConfiguration": {
                    "deploymentReadyOption": {"waitTimeInMinutes": -1}
                }
            },
            "Server",
            "InvalidBlueGreenDeploymentConfigurationException",
            ("2880",),
        ),
        (
            {
                "blueGreenDeploymentConfiguration": {
                    "terminateBlueInstancesOnDeploymentSuccess": {
                        "terminationWaitTimeInMinutes": 2881
                    }
                }
            },
            "Server",
            "InvalidBlueGreenDeploymentConfigurationException",
            ("2880",),
        ),
        (
            {"ecsServices": [{"serviceName": "s", "clusterName": "c"}]},
            "Server",
            "InvalidECSServiceException",
            ("ECS", "Server"),
        ),
        (
            {"ecsServices": [{"serviceName": f"s{i}", "clusterName": "c"} for i in range(2)]},
            "ECS",
            "InvalidECSServiceException",
            ("2",),
        ),
    ],
)
def test_invalid_specs(
    spec: dict[str, Any], platform: str, code: str, fragments: tuple[str, ...]
) -> None:
    error = _refused(spec, platform)
    assert error.code == code, error.message
    for fragment in fragments:
        assert fragment in error.message


def test_lambda_and_ecs_default_to_traffic_control() -> None:
    validate_group_spec({"deploymentStyle": {}}, "Lambda")
    validate_group_spec({"deploymentStyle": {"deploymentType": "BLUE_GREEN"}}, "ECS")
    validate_group_spec({"ecsServices": [{"serviceName": "s", "clusterName": "c"}]}, "ECS")
