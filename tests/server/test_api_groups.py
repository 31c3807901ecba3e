"""Deployment groups through a real boto3 client (codedeploy-spec §3.3, §1.4, §5, §10).

Every member of CreateDeploymentGroup must come back from Get/BatchGet exactly as given; every
validation error must carry the modelled exception code and a message naming the problem.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
OTHER_ROLE = "arn:aws:iam::123456789012:role/service-role/OtherRole"
SNS_TOPIC = "arn:aws:sns:us-east-1:123456789012:deployments"
LISTENER = (
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/50dc6c495c0c9188/"
    "f2f7dc8efc522ab2"
)
TEST_LISTENER = LISTENER[:-1] + "3"
GROUP_DEFAULTS = {
    "deploymentConfigName": "CodeDeployDefault.OneAtATime",
    "deploymentStyle": {
        "deploymentType": "IN_PLACE",
        "deploymentOption": "WITHOUT_TRAFFIC_CONTROL",
    },
    "outdatedInstancesStrategy": "UPDATE",
    "ec2TagFilters": [],
    "onPremisesInstanceTagFilters": [],
    "autoScalingGroups": [],
    "triggerConfigurations": [],
    "alarmConfiguration": {"enabled": False, "ignorePollAlarmFailure": False, "alarms": []},
    "autoRollbackConfiguration": {"enabled": False, "events": []},
    "terminationHookEnabled": False,
}

Unique = Callable[[str], str]


@pytest.fixture(scope="module")
def _fast_server(running_server: Any) -> Any:
    """Work around tests/conftest.py binding its listener with proto 0: asyncio then never sets
    TCP_NODELAY on accepted sockets and every response waits ~40 ms for a delayed ACK. Linux
    copies TCP_NODELAY from the listener to the connections it accepts."""
    for listener in getattr(running_server._server, "servers", []):
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return running_server


@pytest.fixture(scope="module")
def _module_client(_fast_server: Any) -> Any:
    return _fast_server.client("codedeploy")


@pytest.fixture
def codedeploy(_module_client: Any) -> Any:
    """The admin client, shared by the module's tests: building one costs ~70 ms of CPU."""
    return _module_client


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


def _expect_error(call: Callable[..., Any], code: str, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    got_code, message = _error(caught)
    assert got_code == code, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def _unvalidated(server: Any) -> Any:
    """A boto3 client that sends what botocore would refuse client-side."""
    return boto3.session.Session().client(
        "codedeploy",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=Config(parameter_validation=False, retries={"max_attempts": 1, "mode": "standard"}),
    )


def _application(codedeploy: Any, unique: Unique, platform: str = "Server") -> str:
    name = unique("app")
    codedeploy.create_application(applicationName=name, computePlatform=platform)
    return name


def _group_arn(server: Any, app: str, group: str) -> str:
    return f"arn:aws:codedeploy:us-east-1:{server.account_id}:deploymentgroup:{app}/{group}"


def _get(codedeploy: Any, app: str, group: str) -> dict[str, Any]:
    info: dict[str, Any] = codedeploy.get_deployment_group(
        applicationName=app, deploymentGroupName=group
    )["deploymentGroupInfo"]
    return info


def _assert_no_group(codedeploy: Any, app: str, group: str) -> None:
    _expect_error(
        codedeploy.get_deployment_group,
        "DeploymentGroupDoesNotExistException",
        group,
        applicationName=app,
        deploymentGroupName=group,
    )


def _tag_filters(count: int, prefix: str = "k") -> list[dict[str, str]]:
    return [
        {"Key": f"{prefix}{i}", "Value": f"v{i}", "Type": "KEY_AND_VALUE"} for i in range(count)
    ]


def _full_spec_tag_filters(config_name: str) -> dict[str, Any]:
    """Blue/green with every balancer kind; legacy EC2 filters and an on-premises tag set."""
    return {
        "serviceRoleArn": ROLE,
        "deploymentConfigName": config_name,
        "ec2TagFilters": [
            {"Key": "Name", "Value": "web", "Type": "KEY_AND_VALUE"},
            {"Key": "role", "Type": "KEY_ONLY"},
            {"Value": "blue", "Type": "VALUE_ONLY"},
        ],
        "onPremisesTagSet": {
            "onPremisesTagSetList": [
                [{"Key": "env", "Value": "prod", "Type": "KEY_AND_VALUE"}],
                [{"Key": "tier", "Type": "KEY_ONLY"}, {"Value": "eu-west", "Type": "VALUE_ONLY"}],
                [{"Key": "rack", "Value": "r1", "Type": "KEY_AND_VALUE"}],
            ]
        },
        "triggerConfigurations": [
            {
                "triggerName": "to-sns",
                "triggerTargetArn": SNS_TOPIC,
                "triggerEvents": ["DeploymentStart", "DeploymentFailure", "DeploymentRollback"],
            },
            {
                "triggerName": "to-https",
                "triggerTargetArn": "https://hooks.example.com/codedeploy?team=web",
                "triggerEvents": ["InstanceFailure", "InstanceSuccess"],
            },
            {
                "triggerName": "to-http",
                "triggerTargetArn": "http://10.0.0.5:8080/notify",
                "triggerEvents": ["DeploymentSuccess"],
            },
        ],
        "alarmConfiguration": {
            "enabled": True,
            "ignorePollAlarmFailure": True,
            "alarms": [{"name": "cpu-high"}, {"name": "errors-5xx"}],
        },
        "autoRollbackConfiguration": {
            "enabled": True,
            "events": [
                "DEPLOYMENT_FAILURE",
                "DEPLOYMENT_STOP_ON_ALARM",
                "DEPLOYMENT_STOP_ON_REQUEST",
            ],
        },
        "outdatedInstancesStrategy": "IGNORE",
        "deploymentStyle": {
            "deploymentType": "BLUE_GREEN",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        },
        "blueGreenDeploymentConfiguration": {
            "terminateBlueInstancesOnDeploymentSuccess": {
                "action": "TERMINATE",
                "terminationWaitTimeInMinutes": 60,
            },
            "deploymentReadyOption": {
                "actionOnTimeout": "STOP_DEPLOYMENT",
                "waitTimeInMinutes": 30,
            },
            "greenFleetProvisioningOption": {"action": "DISCOVER_EXISTING"},
        },
        "loadBalancerInfo": {
            "elbInfoList": [{"name": "classic-web"}],
            "targetGroupInfoList": [{"name": "tg-web-a"}, {"name": "tg-web-b"}],
            "targetGroupPairInfoList": [
                {
                    "targetGroups": [{"name": "tg-blue"}, {"name": "tg-green"}],
                    "prodTrafficRoute": {"listenerArns": [LISTENER]},
                    "testTrafficRoute": {"listenerArns": [TEST_LISTENER]},
                }
            ],
        },
        "terminationHookEnabled": True,
    }


def _full_spec_tag_sets(config_name: str) -> dict[str, Any]:
    """In place with traffic control; an EC2 tag set and legacy on-premises filters."""
    return {
        "serviceRoleArn": OTHER_ROLE,
        "deploymentConfigName": config_name,
        "ec2TagSet": {
            "ec2TagSetList": [
                [{"Key": "app", "Value": "shop", "Type": "KEY_AND_VALUE"}],
                [{"Key": "az", "Type": "KEY_ONLY"}, {"Value": "canary", "Type": "VALUE_ONLY"}],
            ]
        },
        "onPremisesInstanceTagFilters": [
            {"Key": "dc", "Value": "fra1", "Type": "KEY_AND_VALUE"},
            {"Key": "onprem", "Type": "KEY_ONLY"},
            {"Value": "edge", "Type": "VALUE_ONLY"},
        ],
        "triggerConfigurations": [
            {
                "triggerName": "everything",
                "triggerTargetArn": SNS_TOPIC,
                "triggerEvents": [
                    "DeploymentStart",
                    "DeploymentSuccess",
                    "DeploymentFailure",
                    "DeploymentStop",
                    "DeploymentRollback",
                    "DeploymentReady",
                    "InstanceStart",
                    "InstanceSuccess",
                    "InstanceFailure",
                    "InstanceReady",
                ],
            }
        ],
        "alarmConfiguration": {
            "enabled": False,
            "ignorePollAlarmFailure": False,
            "alarms": [{"name": "kept-but-off"}],
        },
        "autoRollbackConfiguration": {"enabled": False, "events": ["DEPLOYMENT_FAILURE"]},
        "outdatedInstancesStrategy": "UPDATE",
        "deploymentStyle": {
            "deploymentType": "IN_PLACE",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        },
        "blueGreenDeploymentConfiguration": {
            "terminateBlueInstancesOnDeploymentSuccess": {
                "action": "KEEP_ALIVE",
                "terminationWaitTimeInMinutes": 0,
            },
            "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"},
            "greenFleetProvisioningOption": {"action": "COPY_AUTO_SCALING_GROUP"},
        },
        "loadBalancerInfo": {"targetGroupInfoList": [{"name": "tg-shop"}]},
        "terminationHookEnabled": False,
    }


def _custom_config(codedeploy: Any, unique: Unique) -> str:
    name = unique("cfg")
    codedeploy.create_deployment_config(
        deploymentConfigName=name, minimumHealthyHosts={"type": "FLEET_PERCENT", "value": 50}
    )
    return name


# --- create / get / batch get -------------------------------------------------------------------


def test_minimal_group_reports_ids_and_defaults(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    created = codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    info = _get(codedeploy, app, group)
    assert info["deploymentGroupId"] == created["deploymentGroupId"]
    assert len(created["deploymentGroupId"]) == 36
    assert info["applicationName"] == app
    assert info["deploymentGroupName"] == group
    assert info["serviceRoleArn"] == ROLE
    assert info["computePlatform"] == "Server"
    for member, value in GROUP_DEFAULTS.items():
        assert info[member] == value, member
    for absent in ("targetRevision", "ec2TagSet", "onPremisesTagSet", "loadBalancerInfo"):
        assert absent not in info
    assert "lastAttemptedDeployment" not in info
    assert "lastSuccessfulDeployment" not in info


@pytest.mark.parametrize("variant", [_full_spec_tag_filters, _full_spec_tag_sets])
def test_every_member_round_trips(
    codedeploy: Any, server: Any, unique: Unique, variant: Callable[[str], dict[str, Any]]
) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    spec = variant(_custom_config(codedeploy, unique))
    tags = [{"Key": "team", "Value": "web"}, {"Key": "cost-centre", "Value": ""}]
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, tags=tags, **copy.deepcopy(spec)
    )
    info = _get(codedeploy, app, group)
    assert {member: info.get(member) for member in spec} == spec
    batch = codedeploy.batch_get_deployment_groups(
        applicationName=app, deploymentGroupNames=[group]
    )
    assert batch["deploymentGroupsInfo"] == [info]
    assert "errorMessage" not in batch
    listed = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, group))
    assert sorted(listed["Tags"], key=lambda tag: tag["Key"]) == sorted(
        tags, key=lambda tag: tag["Key"]
    )


def test_lambda_group_defaults_to_traffic_control_and_lambda_config(
    codedeploy: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique, "Lambda")
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    info = _get(codedeploy, app, group)
    assert info["computePlatform"] == "Lambda"
    assert info["deploymentStyle"] == {
        "deploymentType": "BLUE_GREEN",
        "deploymentOption": "WITH_TRAFFIC_CONTROL",
    }
    assert info["deploymentConfigName"] == "CodeDeployDefault.LambdaAllAtOnce"


def test_ecs_group_round_trips_services_and_target_group_pair(
    codedeploy: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique, "ECS")
    group = unique("dg")
    spec = {
        "serviceRoleArn": ROLE,
        "deploymentConfigName": "CodeDeployDefault.ECSCanary10Percent5Minutes",
        "deploymentStyle": {
            "deploymentType": "BLUE_GREEN",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        },
        "ecsServices": [{"serviceName": "shop", "clusterName": "prod"}],
        "loadBalancerInfo": {
            "targetGroupPairInfoList": [
                {
                    "targetGroups": [{"name": "blue"}, {"name": "green"}],
                    "prodTrafficRoute": {"listenerArns": [LISTENER]},
                }
            ]
        },
        "blueGreenDeploymentConfiguration": {
            "terminateBlueInstancesOnDeploymentSuccess": {
                "action": "TERMINATE",
                "terminationWaitTimeInMinutes": 5,
            },
            "deploymentReadyOption": {
                "actionOnTimeout": "CONTINUE_DEPLOYMENT",
                "waitTimeInMinutes": 0,
            },
        },
    }
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, **copy.deepcopy(spec)
    )
    info = _get(codedeploy, app, group)
    assert {member: info.get(member) for member in spec} == spec
    assert info["computePlatform"] == "ECS"


def test_same_group_name_in_two_applications(codedeploy: Any, unique: Unique) -> None:
    first, second = _application(codedeploy, unique), _application(codedeploy, unique)
    group = unique("dg")
    one = codedeploy.create_deployment_group(
        applicationName=first, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    two = codedeploy.create_deployment_group(
        applicationName=second, deploymentGroupName=group, serviceRoleArn=OTHER_ROLE
    )
    assert one["deploymentGroupId"] != two["deploymentGroupId"]
    assert _get(codedeploy, first, group)["serviceRoleArn"] == ROLE
    assert _get(codedeploy, second, group)["serviceRoleArn"] == OTHER_ROLE


def test_duplicate_group_name_is_refused(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    _expect_error(
        codedeploy.create_deployment_group,
        "DeploymentGroupAlreadyExistsException",
        group,
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=OTHER_ROLE,
    )
    assert _get(codedeploy, app, group)["serviceRoleArn"] == ROLE


def test_batch_get_keeps_order_and_reports_unknown_names(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    names = [unique("dg") for _ in range(3)]
    for name in names:
        codedeploy.create_deployment_group(
            applicationName=app, deploymentGroupName=name, serviceRoleArn=ROLE
        )
    missing = unique("missing")
    wanted = [names[2], missing, names[0], names[2]]
    result = codedeploy.batch_get_deployment_groups(
        applicationName=app, deploymentGroupNames=wanted
    )
    assert [info["deploymentGroupName"] for info in result["deploymentGroupsInfo"]] == [
        names[2],
        names[0],
    ]
    assert missing in result["errorMessage"]
    assert names[0] not in result["errorMessage"]
    _expect_error(
        codedeploy.batch_get_deployment_groups,
        "DeploymentGroupNameRequiredException",
        "deploymentGroupNames",
        applicationName=app,
        deploymentGroupNames=[],
    )
    _expect_error(
        codedeploy.batch_get_deployment_groups,
        "BatchLimitExceededException",
        "101",
        "100",
        applicationName=app,
        deploymentGroupNames=[f"g{i}" for i in range(101)],
    )


def test_reads_of_unknown_application_or_group(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    ghost_app, ghost_group = unique("ghost-app"), unique("ghost-dg")
    for call, kwargs in [
        (codedeploy.get_deployment_group, {"deploymentGroupName": ghost_group}),
        (codedeploy.batch_get_deployment_groups, {"deploymentGroupNames": [ghost_group]}),
        (codedeploy.list_deployment_groups, {}),
        (
            codedeploy.update_deployment_group,
            {"currentDeploymentGroupName": ghost_group, "serviceRoleArn": ROLE},
        ),
        (
            codedeploy.create_deployment_group,
            {"deploymentGroupName": ghost_group, "serviceRoleArn": ROLE},
        ),
    ]:
        message = _expect_error(
            call, "ApplicationDoesNotExistException", ghost_app, applicationName=ghost_app, **kwargs
        )
        assert message == f"No application found for name: {ghost_app}"
    _assert_no_group(codedeploy, app, ghost_group)
    _expect_error(
        codedeploy.update_deployment_group,
        "DeploymentGroupDoesNotExistException",
        ghost_group,
        applicationName=app,
        currentDeploymentGroupName=ghost_group,
        newDeploymentGroupName=unique("dg"),
    )
    assert codedeploy.list_deployment_groups(applicationName=app)["deploymentGroups"] == []


def test_invalid_names_are_refused(codedeploy: Any, server: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    _expect_error(
        codedeploy.create_deployment_group,
        "InvalidDeploymentGroupNameException",
        "has space",
        applicationName=app,
        deploymentGroupName="has space",
        serviceRoleArn=ROLE,
    )
    _expect_error(
        codedeploy.create_deployment_group,
        "InvalidDeploymentGroupNameException",
        "deploymentGroupName",
        applicationName=app,
        deploymentGroupName="x" * 101,
        serviceRoleArn=ROLE,
    )
    raw = _unvalidated(server)
    _expect_error(
        raw.create_deployment_group,
        "DeploymentGroupNameRequiredException",
        "deploymentGroupName",
        applicationName=app,
        serviceRoleArn=ROLE,
    )
    _expect_error(
        raw.get_deployment_group,
        "ApplicationNameRequiredException",
        "applicationName",
        deploymentGroupName="dg",
    )


# --- validation ---------------------------------------------------------------------------------

TRIGGER = {
    "triggerName": "t",
    "triggerTargetArn": SNS_TOPIC,
    "triggerEvents": ["DeploymentStart"],
}
LOAD_BALANCER = {"targetGroupInfoList": [{"name": "tg"}]}

#: (id, members of CreateDeploymentGroup over a valid minimal request, code, message fragments)
INVALID_SPECS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("role-empty", {"serviceRoleArn": ""}, "RoleRequiredException", ("serviceRoleArn",)),
    (
        "role-not-arn",
        {"serviceRoleArn": "CodeDeployRole"},
        "InvalidRoleException",
        ("CodeDeployRole",),
    ),
    (
        "role-not-a-role",
        {"serviceRoleArn": "arn:aws:s3:::my-bucket"},
        "InvalidRoleException",
        ("arn:aws:s3:::my-bucket",),
    ),
    (
        "config-missing",
        {"deploymentConfigName": "NoSuchConfig-4f1c2e"},
        "DeploymentConfigDoesNotExistException",
        ("NoSuchConfig-4f1c2e",),
    ),
    (
        "config-for-lambda",
        {"deploymentConfigName": "CodeDeployDefault.LambdaAllAtOnce"},
        "InvalidDeploymentConfigNameException",
        ("CodeDeployDefault.LambdaAllAtOnce", "Lambda", "Server"),
    ),
    (
        "ec2-filters-and-set",
        {
            "ec2TagFilters": _tag_filters(1),
            "ec2TagSet": {"ec2TagSetList": [_tag_filters(1)]},
        },
        "InvalidEC2TagCombinationException",
        ("ec2TagFilters", "ec2TagSet"),
    ),
    (
        "onprem-filters-and-set",
        {
            "onPremisesInstanceTagFilters": _tag_filters(1),
            "onPremisesTagSet": {"onPremisesTagSetList": [_tag_filters(1)]},
        },
        "InvalidOnPremisesTagCombinationException",
        ("onPremisesInstanceTagFilters", "onPremisesTagSet"),
    ),
    (
        "ec2-set-4-groups",
        {"ec2TagSet": {"ec2TagSetList": [_tag_filters(1, f"g{i}") for i in range(4)]}},
        "TagSetListLimitExceededException",
        ("ec2TagSet", "4", "3"),
    ),
    (
        "onprem-set-4-groups",
        {
            "onPremisesTagSet": {
                "onPremisesTagSetList": [_tag_filters(1, f"g{i}") for i in range(4)]
            }
        },
        "TagSetListLimitExceededException",
        ("onPremisesTagSet", "4", "3"),
    ),
    (
        "onprem-set-11-tags-in-a-group",
        {"onPremisesTagSet": {"onPremisesTagSetList": [_tag_filters(11)]}},
        "InvalidTagException",
        ("onPremisesTagSet", "11", "10"),
    ),
    (
        "ec2-filter-key-only-without-key",
        {"ec2TagFilters": [{"Value": "v", "Type": "KEY_ONLY"}]},
        "InvalidEC2TagException",
        ("ec2TagFilters[0]", "KEY_ONLY"),
    ),
    (
        "onprem-filter-value-only-without-value",
        {"onPremisesInstanceTagFilters": [{"Key": "k", "Type": "VALUE_ONLY"}]},
        "InvalidTagException",
        ("onPremisesInstanceTagFilters[0]", "VALUE_ONLY"),
    ),
    (
        "onprem-filter-bad-type",
        {"onPremisesInstanceTagFilters": [{"Key": "k", "Type": "KEY_OR_VALUE"}]},
        "InvalidTagException",
        ("KEY_OR_VALUE",),
    ),
    (
        "11-triggers",
        {"triggerConfigurations": [{**TRIGGER, "triggerName": f"t{i}"} for i in range(11)]},
        "TriggerTargetsLimitExceededException",
        ("11", "10"),
    ),
    (
        "trigger-target-sqs",
        {
            "triggerConfigurations": [
                {**TRIGGER, "triggerTargetArn": "arn:aws:sqs:us-east-1:123456789012:q"}
            ]
        },
        "InvalidTriggerConfigException",
        ("triggerTargetArn", "arn:aws:sqs:us-east-1:123456789012:q"),
    ),
    (
        "trigger-without-events",
        {"triggerConfigurations": [{**TRIGGER, "triggerEvents": []}]},
        "InvalidTriggerConfigException",
        ("triggerEvents",),
    ),
    (
        "trigger-bad-event",
        {"triggerConfigurations": [{**TRIGGER, "triggerEvents": ["DeploymentExploded"]}]},
        "InvalidTriggerConfigException",
        ("DeploymentExploded",),
    ),
    (
        "trigger-names-twice",
        {"triggerConfigurations": [{**TRIGGER, "triggerName": "same"}] * 2},
        "InvalidTriggerConfigException",
        ("same",),
    ),
    (
        "11-alarms",
        {
            "alarmConfiguration": {
                "enabled": True,
                "alarms": [{"name": f"alarm-{i}"} for i in range(11)],
            }
        },
        "AlarmsLimitExceededException",
        ("11", "10"),
    ),
    (
        "alarms-enabled-but-empty",
        {"alarmConfiguration": {"enabled": True, "alarms": []}},
        "InvalidAlarmConfigException",
        ("enabled", "no alarms"),
    ),
    (
        "alarm-named-twice",
        {"alarmConfiguration": {"enabled": True, "alarms": [{"name": "a"}, {"name": "a"}]}},
        "InvalidAlarmConfigException",
        ("'a'", "twice"),
    ),
    (
        "alarm-name-too-long",
        {"alarmConfiguration": {"enabled": True, "alarms": [{"name": "a" * 256}]}},
        "InvalidAlarmConfigException",
        ("alarms[0].name", "255"),
    ),
    (
        "rollback-enabled-without-events",
        {"autoRollbackConfiguration": {"enabled": True}},
        "InvalidAutoRollbackConfigException",
        ("enabled", "events"),
    ),
    (
        "rollback-bad-event",
        {"autoRollbackConfiguration": {"enabled": True, "events": ["DEPLOYMENT_SUCCESS"]}},
        "InvalidAutoRollbackConfigException",
        ("DEPLOYMENT_SUCCESS",),
    ),
    (
        "traffic-control-without-balancer",
        {
            "deploymentStyle": {
                "deploymentType": "IN_PLACE",
                "deploymentOption": "WITH_TRAFFIC_CONTROL",
            }
        },
        "InvalidLoadBalancerInfoException",
        ("WITH_TRAFFIC_CONTROL", "loadBalancerInfo"),
    ),
    (
        "blue-green-with-empty-balancer",
        {
            "deploymentStyle": {
                "deploymentType": "BLUE_GREEN",
                "deploymentOption": "WITH_TRAFFIC_CONTROL",
            },
            "loadBalancerInfo": {"elbInfoList": [], "targetGroupInfoList": []},
        },
        "InvalidLoadBalancerInfoException",
        ("WITH_TRAFFIC_CONTROL", "loadBalancerInfo"),
    ),
    (
        "11-elbs",
        {"loadBalancerInfo": {"elbInfoList": [{"name": f"elb{i}"} for i in range(11)]}},
        "InvalidLoadBalancerInfoException",
        ("elbInfoList", "10"),
    ),
    (
        "2-target-group-pairs",
        {
            "loadBalancerInfo": {
                "targetGroupPairInfoList": [
                    {"targetGroups": [{"name": "a"}, {"name": "b"}]},
                    {"targetGroups": [{"name": "c"}, {"name": "d"}]},
                ]
            }
        },
        "InvalidLoadBalancerInfoException",
        ("target group pair",),
    ),
    (
        "style-bad-type",
        {"deploymentStyle": {"deploymentType": "ROLLING"}},
        "InvalidDeploymentStyleException",
        ("ROLLING", "deploymentType"),
    ),
    (
        "style-bad-option",
        {"deploymentStyle": {"deploymentOption": "SOMETIMES"}},
        "InvalidDeploymentStyleException",
        ("SOMETIMES", "deploymentOption"),
    ),
    (
        "auto-scaling-groups",
        {"autoScalingGroups": ["web-asg"]},
        "InvalidAutoScalingGroupException",
        ("Auto Scaling", "on-premises"),
    ),
    (
        "blue-green-wait-too-long",
        {
            "blueGreenDeploymentConfiguration": {
                "deploymentReadyOption": {
                    "actionOnTimeout": "STOP_DEPLOYMENT",
                    "waitTimeInMinutes": 2881,
                }
            }
        },
        "InvalidBlueGreenDeploymentConfigurationException",
        ("2880",),
    ),
    (
        "outdated-strategy-bad",
        {"outdatedInstancesStrategy": "SOMETIMES"},
        "InvalidInputException",
        ("outdatedInstancesStrategy", "SOMETIMES"),
    ),
]


@pytest.mark.parametrize(
    ("members", "code", "fragments"),
    [case[1:] for case in INVALID_SPECS],
    ids=[case[0] for case in INVALID_SPECS],
)
def test_create_refuses_invalid_members(
    codedeploy: Any,
    unique: Unique,
    members: dict[str, Any],
    code: str,
    fragments: tuple[str, ...],
) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    request = {"serviceRoleArn": ROLE, **copy.deepcopy(members)}
    _expect_error(
        codedeploy.create_deployment_group,
        code,
        *fragments,
        applicationName=app,
        deploymentGroupName=group,
        **request,
    )
    _assert_no_group(codedeploy, app, group)


@pytest.mark.parametrize(
    ("members", "code", "fragments"),
    [case[1:] for case in INVALID_SPECS],
    ids=[case[0] for case in INVALID_SPECS],
)
def test_update_refuses_invalid_members_and_changes_nothing(
    codedeploy: Any,
    unique: Unique,
    members: dict[str, Any],
    code: str,
    fragments: tuple[str, ...],
) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    before = _get(codedeploy, app, group)
    new_name = unique("renamed")
    _expect_error(
        codedeploy.update_deployment_group,
        code,
        *fragments,
        applicationName=app,
        currentDeploymentGroupName=group,
        newDeploymentGroupName=new_name,
        **copy.deepcopy(members),
    )
    assert _get(codedeploy, app, group) == before
    _assert_no_group(codedeploy, app, new_name)


def test_role_is_required_even_when_botocore_does_not_check(
    server: Any, codedeploy: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    _expect_error(
        _unvalidated(server).create_deployment_group,
        "RoleRequiredException",
        "serviceRoleArn",
        applicationName=app,
        deploymentGroupName=group,
    )
    _assert_no_group(codedeploy, app, group)


def test_lambda_application_refuses_in_place_style_and_server_config(
    codedeploy: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique, "Lambda")
    group = unique("dg")
    _expect_error(
        codedeploy.create_deployment_group,
        "InvalidDeploymentStyleException",
        "Lambda",
        "BLUE_GREEN",
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        deploymentStyle={
            "deploymentType": "IN_PLACE",
            "deploymentOption": "WITHOUT_TRAFFIC_CONTROL",
        },
    )
    _expect_error(
        codedeploy.create_deployment_group,
        "InvalidDeploymentConfigNameException",
        "CodeDeployDefault.AllAtOnce",
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
    )
    _assert_no_group(codedeploy, app, group)


def test_ecs_services_need_an_ecs_application(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    _expect_error(
        codedeploy.create_deployment_group,
        "InvalidECSServiceException",
        "ecsServices",
        "ECS",
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        ecsServices=[{"serviceName": "shop", "clusterName": "prod"}],
    )
    _assert_no_group(codedeploy, app, group)


def test_group_tags_are_validated(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    for tags, fragment in [
        ([{"Key": "", "Value": "v"}], "Key"),
        ([{"Key": "k" * 129, "Value": "v"}], "128"),
        ([{"Key": "k", "Value": "v" * 257}], "256"),
        ([{"Key": "aws:owner", "Value": "me"}], "aws:"),
    ]:
        _expect_error(
            codedeploy.create_deployment_group,
            "InvalidTagsToAddException",
            fragment,
            applicationName=app,
            deploymentGroupName=group,
            serviceRoleArn=ROLE,
            tags=tags,
        )
    _assert_no_group(codedeploy, app, group)


# --- update ---------------------------------------------------------------------------------------


def test_update_replaces_supplied_members_and_keeps_the_rest(
    codedeploy: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    spec = _full_spec_tag_filters(_custom_config(codedeploy, unique))
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, **copy.deepcopy(spec)
    )
    before = _get(codedeploy, app, group)
    changes: dict[str, Any] = {
        "triggerConfigurations": [
            {
                "triggerName": "only-one",
                "triggerTargetArn": "https://example.org/x",
                "triggerEvents": ["DeploymentStop"],
            }
        ],
        "alarmConfiguration": {"enabled": False, "ignorePollAlarmFailure": False, "alarms": []},
        "outdatedInstancesStrategy": "UPDATE",
        "loadBalancerInfo": {"elbInfoList": [{"name": "new-elb"}]},
    }
    result = codedeploy.update_deployment_group(
        applicationName=app, currentDeploymentGroupName=group, **copy.deepcopy(changes)
    )
    assert result["hooksNotCleanedUp"] == []
    after = _get(codedeploy, app, group)
    assert after == {**before, **changes}
    # A list member given empty replaces the stored list: it is cleared, not kept.
    codedeploy.update_deployment_group(
        applicationName=app, currentDeploymentGroupName=group, triggerConfigurations=[]
    )
    assert _get(codedeploy, app, group) == {**after, "triggerConfigurations": []}
    # An explicit empty autoScalingGroups detaches nothing here and is not refused.
    result = codedeploy.update_deployment_group(
        applicationName=app, currentDeploymentGroupName=group, autoScalingGroups=[]
    )
    assert result["hooksNotCleanedUp"] == []
    assert _get(codedeploy, app, group) == {**after, "triggerConfigurations": []}


def test_update_switches_legacy_filters_to_a_tag_set(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        onPremisesInstanceTagFilters=_tag_filters(2),
    )
    tag_set = {"onPremisesTagSetList": [_tag_filters(1, "a"), _tag_filters(2, "b")]}
    # Only adding the set would leave both kinds stored: refused, naming both members.
    _expect_error(
        codedeploy.update_deployment_group,
        "InvalidOnPremisesTagCombinationException",
        "onPremisesInstanceTagFilters",
        applicationName=app,
        currentDeploymentGroupName=group,
        onPremisesTagSet=tag_set,
    )
    codedeploy.update_deployment_group(
        applicationName=app,
        currentDeploymentGroupName=group,
        onPremisesInstanceTagFilters=[],
        onPremisesTagSet=tag_set,
    )
    info = _get(codedeploy, app, group)
    assert info["onPremisesInstanceTagFilters"] == []
    assert info["onPremisesTagSet"] == tag_set


def test_update_changes_config_and_role(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    custom = _custom_config(codedeploy, unique)
    codedeploy.update_deployment_group(
        applicationName=app, currentDeploymentGroupName=group, deploymentConfigName=custom
    )
    info = _get(codedeploy, app, group)
    assert info["deploymentConfigName"] == custom
    assert info["serviceRoleArn"] == ROLE
    codedeploy.update_deployment_group(
        applicationName=app,
        currentDeploymentGroupName=group,
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
        serviceRoleArn=OTHER_ROLE,
    )
    info = _get(codedeploy, app, group)
    assert info["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert info["serviceRoleArn"] == OTHER_ROLE
    # An update that names nothing to change changes nothing.
    codedeploy.update_deployment_group(applicationName=app, currentDeploymentGroupName=group)
    assert _get(codedeploy, app, group) == info


def test_update_renames_and_tags_follow(codedeploy: Any, server: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group, new_name = unique("dg"), unique("renamed")
    created = codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        tags=[{"Key": "owner", "Value": "ops"}],
        onPremisesInstanceTagFilters=_tag_filters(1),
    )
    codedeploy.update_deployment_group(
        applicationName=app,
        currentDeploymentGroupName=group,
        newDeploymentGroupName=new_name,
        outdatedInstancesStrategy="IGNORE",
    )
    info = _get(codedeploy, app, new_name)
    assert info["deploymentGroupId"] == created["deploymentGroupId"]
    assert info["deploymentGroupName"] == new_name
    assert info["outdatedInstancesStrategy"] == "IGNORE"
    assert info["onPremisesInstanceTagFilters"] == _tag_filters(1)
    _assert_no_group(codedeploy, app, group)
    listed = codedeploy.list_deployment_groups(applicationName=app)["deploymentGroups"]
    assert listed == [new_name]
    tags = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, new_name))
    assert tags["Tags"] == [{"Key": "owner", "Value": "ops"}]
    _expect_error(
        codedeploy.list_tags_for_resource,
        "DeploymentGroupDoesNotExistException",
        group,
        ResourceArn=_group_arn(server, app, group),
    )
    # A group created later under the old name starts without the renamed group's tags.
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    old = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, group))
    assert old["Tags"] == []
    # Renaming to its own name is a no-op.
    codedeploy.update_deployment_group(
        applicationName=app, currentDeploymentGroupName=new_name, newDeploymentGroupName=new_name
    )
    assert _get(codedeploy, app, new_name) == info


def test_rename_onto_an_existing_group_is_refused(
    codedeploy: Any, server: Any, unique: Unique
) -> None:
    app = _application(codedeploy, unique)
    first, second = unique("dg"), unique("dg")
    for name in (first, second):
        codedeploy.create_deployment_group(
            applicationName=app,
            deploymentGroupName=name,
            serviceRoleArn=ROLE,
            tags=[{"Key": "name", "Value": name}],
        )
    before = _get(codedeploy, app, first)
    _expect_error(
        codedeploy.update_deployment_group,
        "DeploymentGroupAlreadyExistsException",
        second,
        applicationName=app,
        currentDeploymentGroupName=first,
        newDeploymentGroupName=second,
        serviceRoleArn=OTHER_ROLE,
    )
    assert _get(codedeploy, app, first) == before
    assert _get(codedeploy, app, second)["serviceRoleArn"] == ROLE
    for name in (first, second):
        tags = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, name))
        assert tags["Tags"] == [{"Key": "name", "Value": name}]
    _expect_error(
        codedeploy.update_deployment_group,
        "InvalidDeploymentGroupNameException",
        "bad/name",
        applicationName=app,
        currentDeploymentGroupName=first,
        newDeploymentGroupName="bad/name",
    )


# --- list / delete ------------------------------------------------------------------------------


def test_list_pages_through_more_than_100_groups(codedeploy: Any, unique: Unique) -> None:
    app, other = _application(codedeploy, unique), _application(codedeploy, unique)
    names = sorted(f"g{i:03d}-{unique('x')}" for i in range(103))
    for name in names:
        codedeploy.create_deployment_group(
            applicationName=app, deploymentGroupName=name, serviceRoleArn=ROLE
        )
    codedeploy.create_deployment_group(
        applicationName=other, deploymentGroupName=unique("dg"), serviceRoleArn=ROLE
    )
    first = codedeploy.list_deployment_groups(applicationName=app)
    assert first["applicationName"] == app
    assert len(first["deploymentGroups"]) == 100
    assert first["nextToken"]
    pages = list(codedeploy.get_paginator("list_deployment_groups").paginate(applicationName=app))
    assert len(pages) == 2
    seen = [name for page in pages for name in page["deploymentGroups"]]
    assert seen == names
    assert "nextToken" not in pages[-1]
    _expect_error(
        codedeploy.list_deployment_groups,
        "InvalidNextTokenException",
        "nextToken",
        applicationName=other,
        nextToken=first["nextToken"],
    )
    _expect_error(
        codedeploy.list_deployment_groups,
        "InvalidNextTokenException",
        "nextToken",
        applicationName=app,
        nextToken="not-a-token",
    )
    for position in (5, ["x"], {"a": 1}):
        _expect_error(
            codedeploy.list_deployment_groups,
            "InvalidNextTokenException",
            "nextToken",
            applicationName=app,
            nextToken=_tampered(first["nextToken"], position),
        )
    # A token rewritten to a real position is still honoured.
    rewritten = codedeploy.list_deployment_groups(
        applicationName=app, nextToken=_tampered(first["nextToken"], names[-3])
    )
    assert rewritten["deploymentGroups"] == names[-2:]


def _tampered(token: str, position: object) -> str:
    """The token with its position replaced. Tokens are base64 JSON ``{"s": scope, "p": pos}``
    (server/service/context.py); a client can read and rewrite them, so the server must cope."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data["p"] = position
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_delete_group_removes_it_and_its_tags(codedeploy: Any, server: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group, kept = unique("dg"), unique("dg")
    for name in (group, kept):
        codedeploy.create_deployment_group(
            applicationName=app,
            deploymentGroupName=name,
            serviceRoleArn=ROLE,
            tags=[{"Key": "k", "Value": name}],
        )
    deleted_id = _get(codedeploy, app, group)["deploymentGroupId"]
    result = codedeploy.delete_deployment_group(applicationName=app, deploymentGroupName=group)
    assert result["hooksNotCleanedUp"] == []
    _assert_no_group(codedeploy, app, group)
    assert codedeploy.list_deployment_groups(applicationName=app)["deploymentGroups"] == [kept]
    # Deleting again, or in an unknown application, is not an error (nothing is modelled).
    codedeploy.delete_deployment_group(applicationName=app, deploymentGroupName=group)
    codedeploy.delete_deployment_group(applicationName=unique("ghost"), deploymentGroupName=group)
    recreated = codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    assert recreated["deploymentGroupId"] != deleted_id
    tags = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, group))
    assert tags["Tags"] == []
    tags = codedeploy.list_tags_for_resource(ResourceArn=_group_arn(server, app, kept))
    assert tags["Tags"] == [{"Key": "k", "Value": kept}]


def test_deleting_the_application_deletes_its_groups(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        outdatedInstancesStrategy="IGNORE",
    )
    codedeploy.delete_application(applicationName=app)
    codedeploy.create_application(applicationName=app)
    _assert_no_group(codedeploy, app, group)
    assert codedeploy.list_deployment_groups(applicationName=app)["deploymentGroups"] == []


def test_application_rename_carries_its_groups(codedeploy: Any, unique: Unique) -> None:
    app, new_app = _application(codedeploy, unique), unique("app")
    group = unique("dg")
    created = codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    codedeploy.update_application(applicationName=app, newApplicationName=new_app)
    info = _get(codedeploy, new_app, group)
    assert info["deploymentGroupId"] == created["deploymentGroupId"]
    assert info["applicationName"] == new_app


def test_custom_config_in_use_cannot_be_deleted(codedeploy: Any, unique: Unique) -> None:
    app = _application(codedeploy, unique)
    config = _custom_config(codedeploy, unique)
    group = unique("dg")
    codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        deploymentConfigName=config,
    )
    _expect_error(
        codedeploy.delete_deployment_config,
        "DeploymentConfigInUseException",
        config,
        deploymentConfigName=config,
    )
    assert _get(codedeploy, app, group)["deploymentConfigName"] == config
