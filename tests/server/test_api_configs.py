"""Deployment configurations through a real boto3 client: CreateDeploymentConfig,
GetDeploymentConfig, ListDeploymentConfigs, DeleteDeploymentConfig
(codedeploy-spec §1.3, §1.4, §2, §3.4, §6.1, §6.3, §10)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apitools import api_error, assert_no_nulls, forged_token, raw_call
from botocore.exceptions import ClientError

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"


def canary(percent: int, minutes: int) -> dict[str, Any]:
    return {
        "type": "TimeBasedCanary",
        "timeBasedCanary": {"canaryPercentage": percent, "canaryInterval": minutes},
    }


def linear(percent: int, minutes: int) -> dict[str, Any]:
    return {
        "type": "TimeBasedLinear",
        "timeBasedLinear": {"linearPercentage": percent, "linearInterval": minutes},
    }


ALL_AT_ONCE = {"type": "AllAtOnce"}

#: codedeploy-spec §6.1, written out independently of the server's own table.
PREDEFINED: dict[str, tuple[str, dict[str, Any]]] = {
    "CodeDeployDefault.OneAtATime": (
        "Server",
        {"minimumHealthyHosts": {"type": "MOST_CONCURRENCY", "value": 1}},
    ),
    "CodeDeployDefault.HalfAtATime": (
        "Server",
        {"minimumHealthyHosts": {"type": "FLEET_PERCENT", "value": 50}},
    ),
    "CodeDeployDefault.AllAtOnce": (
        "Server",
        {"minimumHealthyHosts": {"type": "HOST_COUNT", "value": 0}},
    ),
    "CodeDeployDefault.LambdaAllAtOnce": ("Lambda", {"trafficRoutingConfig": ALL_AT_ONCE}),
    "CodeDeployDefault.LambdaCanary10Percent5Minutes": (
        "Lambda",
        {"trafficRoutingConfig": canary(10, 5)},
    ),
    "CodeDeployDefault.LambdaCanary10Percent10Minutes": (
        "Lambda",
        {"trafficRoutingConfig": canary(10, 10)},
    ),
    "CodeDeployDefault.LambdaCanary10Percent15Minutes": (
        "Lambda",
        {"trafficRoutingConfig": canary(10, 15)},
    ),
    "CodeDeployDefault.LambdaCanary10Percent30Minutes": (
        "Lambda",
        {"trafficRoutingConfig": canary(10, 30)},
    ),
    "CodeDeployDefault.LambdaLinear10PercentEvery1Minute": (
        "Lambda",
        {"trafficRoutingConfig": linear(10, 1)},
    ),
    "CodeDeployDefault.LambdaLinear10PercentEvery2Minutes": (
        "Lambda",
        {"trafficRoutingConfig": linear(10, 2)},
    ),
    "CodeDeployDefault.LambdaLinear10PercentEvery3Minutes": (
        "Lambda",
        {"trafficRoutingConfig": linear(10, 3)},
    ),
    "CodeDeployDefault.LambdaLinear10PercentEvery10Minutes": (
        "Lambda",
        {"trafficRoutingConfig": linear(10, 10)},
    ),
    "CodeDeployDefault.ECSAllAtOnce": ("ECS", {"trafficRoutingConfig": ALL_AT_ONCE}),
    "CodeDeployDefault.ECSLinear10PercentEvery1Minutes": (
        "ECS",
        {"trafficRoutingConfig": linear(10, 1)},
    ),
    "CodeDeployDefault.ECSLinear10PercentEvery3Minutes": (
        "ECS",
        {"trafficRoutingConfig": linear(10, 3)},
    ),
    "CodeDeployDefault.ECSCanary10Percent5Minutes": (
        "ECS",
        {"trafficRoutingConfig": canary(10, 5)},
    ),
    "CodeDeployDefault.ECSCanary10Percent15Minutes": (
        "ECS",
        {"trafficRoutingConfig": canary(10, 15)},
    ),
}
MAX_CUSTOM_CONFIGS = 50


# -- helpers ---------------------------------------------------------------------------------


_CLIENTS: dict[str, Any] = {}


@pytest.fixture
def codedeploy(server: Any) -> Any:
    """conftest's admin client, but built once per server rather than once per test: making a
    boto3 client parses botocore's JSON models, about 0.1 s of CPU each time."""
    client = _CLIENTS.get(server.endpoint)
    if client is None:
        client = _CLIENTS[server.endpoint] = server.client("codedeploy")
    return client


def all_config_names(codedeploy: Any) -> list[str]:
    pages = codedeploy.get_paginator("list_deployment_configs").paginate()
    return [name for page in pages for name in page["deploymentConfigsList"]]


def config_info(codedeploy: Any, name: str) -> dict[str, Any]:
    info: dict[str, Any] = codedeploy.get_deployment_config(deploymentConfigName=name)[
        "deploymentConfigInfo"
    ]
    return info


def assert_absent(codedeploy: Any, name: str) -> None:
    code, message = api_error(codedeploy.get_deployment_config, deploymentConfigName=name)
    assert code == "DeploymentConfigDoesNotExistException"
    assert message == f"No deployment configuration found for name: {name}"


@pytest.fixture
def config_name(codedeploy: Any, unique: Callable[[str], str]) -> Iterator[Callable[[], str]]:
    """Fresh config names; whatever was created under them is deleted afterwards, so the
    session's server stays below the custom-config quota."""
    made: list[str] = []

    def make() -> str:
        made.append(unique("cfg"))
        return made[-1]

    yield make
    for name in made:
        with contextlib.suppress(ClientError):
            codedeploy.delete_deployment_config(deploymentConfigName=name)


@pytest.fixture
def name(config_name: Callable[[], str]) -> str:
    return config_name()


@pytest.fixture
def refused(unique: Callable[[str], str]) -> str:
    """A name for a config the server must refuse to create (so nothing to clean up)."""
    return unique("refused")


# -- CreateDeploymentConfig: Server --------------------------------------------------------------


def test_create_host_count_config_and_get_it(codedeploy: Any, name: str) -> None:
    before = dt.datetime.now(dt.UTC)
    created, created_raw = raw_call(
        codedeploy,
        "create_deployment_config",
        deploymentConfigName=name,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 2},
    )
    after = dt.datetime.now(dt.UTC)
    config_id = created["deploymentConfigId"]
    assert str(uuid.UUID(config_id)) == config_id
    assert set(created_raw) == {"deploymentConfigId"}

    got, raw = raw_call(codedeploy, "get_deployment_config", deploymentConfigName=name)
    info = got["deploymentConfigInfo"]
    assert info["deploymentConfigId"] == config_id
    assert info["deploymentConfigName"] == name
    assert info["computePlatform"] == "Server"
    assert info["minimumHealthyHosts"] == {"type": "HOST_COUNT", "value": 2}
    assert isinstance(info["createTime"], dt.datetime)
    assert info["createTime"].tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= info["createTime"] <= after + dt.timedelta(seconds=1)
    # Not given, so not reported (and never as null).
    assert "zonalConfig" not in info
    assert "trafficRoutingConfig" not in info
    assert_no_nulls(raw)


@pytest.mark.parametrize(
    "hosts",
    [
        {"type": "HOST_COUNT", "value": 0},
        {"type": "HOST_COUNT", "value": 1000},
        {"type": "FLEET_PERCENT", "value": 0},
        {"type": "FLEET_PERCENT", "value": 50},
        {"type": "FLEET_PERCENT", "value": 99},
    ],
    ids=lambda hosts: f"{hosts['type']}-{hosts['value']}",
)
def test_create_accepts_minimum_healthy_hosts_in_range(
    codedeploy: Any, name: str, hosts: dict[str, Any]
) -> None:
    codedeploy.create_deployment_config(
        deploymentConfigName=name, computePlatform="Server", minimumHealthyHosts=hosts
    )
    assert config_info(codedeploy, name)["minimumHealthyHosts"] == hosts


@pytest.mark.parametrize(
    ("hosts", "fragment"),
    [
        ({"type": "FLEET_PERCENT", "value": 100}, "99"),
        ({"type": "FLEET_PERCENT", "value": -1}, "negative"),
        ({"type": "HOST_COUNT", "value": -1}, "negative"),
        ({"type": "HOST_COUNT"}, "value"),
        ({"value": 1}, "type"),
        ({"type": "MOST_CONCURRENCY", "value": 1}, "MOST_CONCURRENCY"),
        ({"type": "PERCENT", "value": 10}, "PERCENT"),
        (None, "minimumHealthyHosts"),
    ],
    ids=[
        "fleet-100",
        "fleet-negative",
        "count-negative",
        "no-value",
        "no-type",
        "most-concurrency",
        "unknown-type",
        "missing",
    ],
)
def test_create_rejects_bad_minimum_healthy_hosts(
    codedeploy: Any, refused: str, hosts: dict[str, Any] | None, fragment: str
) -> None:
    params: dict[str, Any] = {"deploymentConfigName": refused}
    if hosts is not None:
        params["minimumHealthyHosts"] = hosts
    code, message = api_error(codedeploy.create_deployment_config, **params)
    assert code == "InvalidMinimumHealthyHostValueException"
    assert fragment in message
    assert "minimumHealthyHosts" in message
    assert_absent(codedeploy, refused)


def test_server_config_takes_no_traffic_routing(codedeploy: Any, refused: str) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=refused,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
        trafficRoutingConfig=canary(10, 5),
    )
    assert code == "InvalidTrafficRoutingConfigurationException"
    assert "trafficRoutingConfig" in message
    assert_absent(codedeploy, refused)


def test_create_with_zonal_config(codedeploy: Any, name: str) -> None:
    zonal = {
        "firstZoneMonitorDurationInSeconds": 900,
        "monitorDurationInSeconds": 300,
        "minimumHealthyHostsPerZone": {"type": "FLEET_PERCENT", "value": 25},
    }
    codedeploy.create_deployment_config(
        deploymentConfigName=name,
        minimumHealthyHosts={"type": "FLEET_PERCENT", "value": 60},
        zonalConfig=zonal,
    )
    info = config_info(codedeploy, name)
    assert info["zonalConfig"] == zonal
    assert info["minimumHealthyHosts"] == {"type": "FLEET_PERCENT", "value": 60}


def test_create_with_partial_zonal_config(codedeploy: Any, name: str) -> None:
    zonal = {"monitorDurationInSeconds": 0}
    codedeploy.create_deployment_config(
        deploymentConfigName=name,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
        zonalConfig=zonal,
    )
    _, raw = raw_call(codedeploy, "get_deployment_config", deploymentConfigName=name)
    assert raw["deploymentConfigInfo"]["zonalConfig"] == zonal
    assert_no_nulls(raw)


@pytest.mark.parametrize(
    ("zonal", "fragment"),
    [
        ({"minimumHealthyHostsPerZone": {"type": "FLEET_PERCENT", "value": 100}}, "99"),
        ({"minimumHealthyHostsPerZone": {"type": "HOST_COUNT", "value": -1}}, "value"),
        ({"minimumHealthyHostsPerZone": {"type": "SOME", "value": 1}}, "SOME"),
        ({"minimumHealthyHostsPerZone": {"value": 1}}, "type"),
        ({"monitorDurationInSeconds": -5}, "monitorDurationInSeconds"),
        ({"firstZoneMonitorDurationInSeconds": -1}, "firstZoneMonitorDurationInSeconds"),
    ],
    ids=[
        "per-zone-fleet-100",
        "per-zone-negative",
        "per-zone-bad-type",
        "per-zone-no-type",
        "negative-monitor",
        "negative-first-zone",
    ],
)
def test_create_rejects_bad_zonal_config(
    codedeploy: Any, refused: str, zonal: dict[str, Any], fragment: str
) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=refused,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
        zonalConfig=zonal,
    )
    assert code == "InvalidZonalDeploymentConfigurationException"
    assert fragment in message
    assert "zonalConfig" in message
    assert_absent(codedeploy, refused)


# -- CreateDeploymentConfig: Lambda and ECS ------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "routing"),
    [
        ("Lambda", canary(15, 7)),
        ("Lambda", linear(20, 4)),
        ("Lambda", ALL_AT_ONCE),
        ("Lambda", canary(99, 2880)),
        ("Lambda", linear(10, 320)),
        ("Lambda", linear(1, 29)),
        ("ECS", canary(5, 1)),
        ("ECS", linear(1, 30)),
        ("ECS", ALL_AT_ONCE),
    ],
    ids=[
        "lambda-canary",
        "lambda-linear",
        "lambda-all-at-once",
        "lambda-canary-2880-minutes",
        "lambda-linear-2880-minutes",
        "lambda-linear-1-percent",
        "ecs-canary",
        "ecs-linear-over-2880-minutes",
        "ecs-all-at-once",
    ],
)
def test_create_traffic_routing_config(
    codedeploy: Any, name: str, platform: str, routing: dict[str, Any]
) -> None:
    codedeploy.create_deployment_config(
        deploymentConfigName=name, computePlatform=platform, trafficRoutingConfig=routing
    )
    got, raw = raw_call(codedeploy, "get_deployment_config", deploymentConfigName=name)
    info = got["deploymentConfigInfo"]
    assert info["computePlatform"] == platform
    assert info["trafficRoutingConfig"] == routing
    assert "minimumHealthyHosts" not in info
    assert "zonalConfig" not in info
    assert_no_nulls(raw)


@pytest.mark.parametrize(
    ("platform", "routing", "fragment"),
    [
        ("Lambda", None, "trafficRoutingConfig"),
        ("Lambda", {"type": "TimeBasedCanary"}, "timeBasedCanary"),
        ("Lambda", {"type": "TimeBasedLinear"}, "timeBasedLinear"),
        (
            "Lambda",
            {"type": "TimeBasedCanary", "timeBasedLinear": linear(10, 1)["timeBasedLinear"]},
            "timeBasedCanary",
        ),
        (
            "ECS",
            {"type": "TimeBasedLinear", "timeBasedCanary": canary(10, 1)["timeBasedCanary"]},
            "timeBasedLinear",
        ),
        (
            "Lambda",
            {"type": "AllAtOnce", "timeBasedCanary": canary(10, 5)["timeBasedCanary"]},
            "AllAtOnce",
        ),
        ("Lambda", {"timeBasedCanary": canary(10, 5)["timeBasedCanary"]}, "type"),
        ("Lambda", canary(0, 5), "canaryPercentage"),
        ("Lambda", canary(100, 5), "canaryPercentage"),
        ("ECS", canary(10, 0), "canaryInterval"),
        ("Lambda", linear(100, 5), "linearPercentage"),
        ("ECS", linear(0, 5), "linearPercentage"),
        ("Lambda", linear(10, 0), "linearInterval"),
        ("Lambda", {"type": "TimeBasedCanary", "timeBasedCanary": {"canaryInterval": 5}}, "canary"),
        ("Lambda", canary(10, 2881), "2880"),
        ("Lambda", linear(1, 30), "2880"),
        ("Lambda", linear(10, 321), "2880"),
    ],
    ids=[
        "missing",
        "canary-without-settings",
        "linear-without-settings",
        "canary-with-linear-settings",
        "linear-with-canary-settings",
        "all-at-once-with-settings",
        "no-type",
        "canary-0-percent",
        "canary-100-percent",
        "canary-0-minutes",
        "linear-100-percent",
        "linear-0-percent",
        "linear-0-minutes",
        "canary-no-percentage",
        "lambda-canary-over-2880",
        "lambda-linear-over-2880",
        "lambda-linear-just-over-2880",
    ],
)
def test_create_rejects_bad_traffic_routing(
    codedeploy: Any, refused: str, platform: str, routing: dict[str, Any] | None, fragment: str
) -> None:
    params: dict[str, Any] = {"deploymentConfigName": refused, "computePlatform": platform}
    if routing is not None:
        params["trafficRoutingConfig"] = routing
    code, message = api_error(codedeploy.create_deployment_config, **params)
    assert code == "InvalidTrafficRoutingConfigurationException"
    assert fragment in message
    assert_absent(codedeploy, refused)


def test_lambda_config_takes_no_minimum_healthy_hosts(codedeploy: Any, refused: str) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=refused,
        computePlatform="Lambda",
        trafficRoutingConfig=ALL_AT_ONCE,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
    )
    assert code == "InvalidMinimumHealthyHostValueException"
    assert "minimumHealthyHosts" in message
    assert_absent(codedeploy, refused)


@pytest.mark.parametrize("platform", ["Lambda", "ECS"])
def test_zonal_config_is_for_server_only(codedeploy: Any, refused: str, platform: str) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=refused,
        computePlatform=platform,
        trafficRoutingConfig=ALL_AT_ONCE,
        zonalConfig={"monitorDurationInSeconds": 60},
    )
    assert code == "InvalidZonalDeploymentConfigurationException"
    assert "zonalConfig" in message
    assert "Server" in message
    assert_absent(codedeploy, refused)


def test_create_rejects_unknown_compute_platform(codedeploy: Any, refused: str) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=refused,
        computePlatform="Kubernetes",
        trafficRoutingConfig=ALL_AT_ONCE,
    )
    assert code == "InvalidComputePlatformException"
    assert "Kubernetes" in message
    assert_absent(codedeploy, refused)


# -- CreateDeploymentConfig: names, duplicates, quota --------------------------------------------


@pytest.mark.parametrize(
    "reserved",
    ["CodeDeployDefault.Custom", "CodeDeployDefault.OneAtATime", "CodeDeployDefault."],
)
def test_create_refuses_reserved_prefix(codedeploy: Any, reserved: str) -> None:
    before = config_info(codedeploy, "CodeDeployDefault.OneAtATime")
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=reserved,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 3},
    )
    assert code == "InvalidDeploymentConfigNameException"
    assert "CodeDeployDefault." in message
    assert reserved in message
    assert config_info(codedeploy, "CodeDeployDefault.OneAtATime") == before


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [("with space", "with space"), ("slash/name", "slash/name"), ("x" * 101, "100")],
)
def test_create_refuses_invalid_names(codedeploy: Any, bad: str, fragment: str) -> None:
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=bad,
        minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
    )
    assert code == "InvalidDeploymentConfigNameException"
    assert fragment in message


def test_create_duplicate_is_already_exists(codedeploy: Any, name: str) -> None:
    first = codedeploy.create_deployment_config(
        deploymentConfigName=name, minimumHealthyHosts={"type": "HOST_COUNT", "value": 1}
    )["deploymentConfigId"]
    code, message = api_error(
        codedeploy.create_deployment_config,
        deploymentConfigName=name,
        computePlatform="Lambda",
        trafficRoutingConfig=ALL_AT_ONCE,
    )
    assert code == "DeploymentConfigAlreadyExistsException"
    assert name in message
    info = config_info(codedeploy, name)
    assert info["deploymentConfigId"] == first
    assert info["computePlatform"] == "Server"


def test_custom_config_quota_holds_under_concurrent_creates(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    existing = len(set(all_config_names(codedeploy)) - set(PREDEFINED))
    room = MAX_CUSTOM_CONFIGS - existing
    assert room > 0, "other tests left too many configs behind"
    names = [unique("quota") for _ in range(room + 10)]

    def create(config: str) -> str:
        try:
            codedeploy.create_deployment_config(
                deploymentConfigName=config,
                minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
            )
        except ClientError as error:
            assert str(MAX_CUSTOM_CONFIGS) in error.response["Error"]["Message"]
            return str(error.response["Error"]["Code"])
        return "created"

    def delete(config: str) -> None:
        codedeploy.delete_deployment_config(deploymentConfigName=config)

    try:
        # Ten at a time, all racing for the last free places.
        with ThreadPoolExecutor(max_workers=10) as pool:
            outcomes = dict(zip(names, pool.map(create, names), strict=True))
        created = [config for config, outcome in outcomes.items() if outcome == "created"]
        refused = [config for config, outcome in outcomes.items() if outcome != "created"]
        assert len(created) == room
        assert {outcomes[config] for config in refused} == {
            "DeploymentConfigLimitExceededException"
        }
        listed = all_config_names(codedeploy)
        assert len(set(listed) - set(PREDEFINED)) == MAX_CUSTOM_CONFIGS
        assert not set(refused) & set(listed)
        assert_absent(codedeploy, refused[0])
        # Room again after a delete.
        delete(created[0])
        assert create(refused[0]) == "created"
    finally:
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(delete, names))
    assert not set(all_config_names(codedeploy)) & set(names)


# -- GetDeploymentConfig ---------------------------------------------------------------------


@pytest.mark.parametrize("predefined", sorted(PREDEFINED))
def test_get_predefined_config(codedeploy: Any, predefined: str) -> None:
    platform, settings = PREDEFINED[predefined]
    got, raw = raw_call(codedeploy, "get_deployment_config", deploymentConfigName=predefined)
    info = dict(got["deploymentConfigInfo"])
    config_id = info.pop("deploymentConfigId")
    assert str(uuid.UUID(config_id)) == config_id
    created = info.pop("createTime")
    assert isinstance(created, dt.datetime)
    assert created < dt.datetime.now(dt.UTC)
    assert info == {"deploymentConfigName": predefined, "computePlatform": platform, **settings}
    assert_no_nulls(raw)


def test_predefined_config_ids_are_fixed_and_distinct(codedeploy: Any) -> None:
    ids = {name: config_info(codedeploy, name)["deploymentConfigId"] for name in PREDEFINED}
    assert ids["CodeDeployDefault.OneAtATime"] == "00000000-0000-0000-0000-000000000001"
    assert len(set(ids.values())) == len(PREDEFINED)
    # Stable across calls.
    assert (
        config_info(codedeploy, "CodeDeployDefault.ECSAllAtOnce")["deploymentConfigId"]
        == ids["CodeDeployDefault.ECSAllAtOnce"]
    )


def test_get_missing_config(codedeploy: Any, unique: Callable[[str], str]) -> None:
    assert_absent(codedeploy, unique("missing"))
    # The reserved prefix is readable, but only the predefined names exist under it.
    assert_absent(codedeploy, "CodeDeployDefault.TwoAtATime")
    assert_absent(codedeploy, "codedeploydefault.OneAtATime")


def test_get_invalid_config_name(codedeploy: Any) -> None:
    code, message = api_error(codedeploy.get_deployment_config, deploymentConfigName="a b")
    assert code == "InvalidDeploymentConfigNameException"
    assert "a b" in message


# -- ListDeploymentConfigs -------------------------------------------------------------------


def test_list_has_all_predefined_and_custom_configs(
    codedeploy: Any, config_name: Callable[[], str]
) -> None:
    server_config, lambda_config = config_name(), config_name()
    codedeploy.create_deployment_config(
        deploymentConfigName=server_config,
        minimumHealthyHosts={"type": "FLEET_PERCENT", "value": 10},
    )
    codedeploy.create_deployment_config(
        deploymentConfigName=lambda_config,
        computePlatform="Lambda",
        trafficRoutingConfig=linear(50, 1),
    )
    result, raw = raw_call(codedeploy, "list_deployment_configs")
    names = result["deploymentConfigsList"]
    assert len(names) == len(set(names))
    assert set(PREDEFINED) <= set(names)
    assert len(PREDEFINED) == 17
    assert {server_config, lambda_config} <= set(names)
    # Fewer than a page of configs can exist (50 custom + 17 predefined): no token.
    assert "nextToken" not in result
    assert "nextToken" not in raw
    assert all_config_names(codedeploy) == names

    codedeploy.delete_deployment_config(deploymentConfigName=lambda_config)
    after = all_config_names(codedeploy)
    assert lambda_config not in after
    assert server_config in after
    assert set(PREDEFINED) <= set(after)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        forged_token("applications", "a"),
        forged_token("deploymentconfigs", 3),
        forged_token("deploymentconfigs", ["a"]),
    ],
    ids=["garbage", "foreign-scope", "int-position", "list-position"],
)
def test_list_bad_token(codedeploy: Any, token: str) -> None:
    code, message = api_error(codedeploy.list_deployment_configs, nextToken=token)
    assert code == "InvalidNextTokenException"
    assert "nextToken" in message


# -- DeleteDeploymentConfig ------------------------------------------------------------------


def test_delete_custom_config(codedeploy: Any, name: str) -> None:
    codedeploy.create_deployment_config(
        deploymentConfigName=name, minimumHealthyHosts={"type": "HOST_COUNT", "value": 1}
    )
    result, raw = raw_call(codedeploy, "delete_deployment_config", deploymentConfigName=name)
    assert set(result) == {"ResponseMetadata"}
    assert raw == {}
    assert_absent(codedeploy, name)
    assert name not in all_config_names(codedeploy)
    # Deleting again (or a name that never existed) is not an error.
    codedeploy.delete_deployment_config(deploymentConfigName=name)
    # The name can be used again, for another platform even.
    codedeploy.create_deployment_config(
        deploymentConfigName=name, computePlatform="ECS", trafficRoutingConfig=ALL_AT_ONCE
    )
    assert config_info(codedeploy, name)["computePlatform"] == "ECS"


@pytest.mark.parametrize(
    "predefined",
    [
        "CodeDeployDefault.OneAtATime",
        "CodeDeployDefault.LambdaCanary10Percent5Minutes",
        "CodeDeployDefault.ECSAllAtOnce",
    ],
)
def test_delete_predefined_is_invalid_operation(codedeploy: Any, predefined: str) -> None:
    before = config_info(codedeploy, predefined)
    code, message = api_error(codedeploy.delete_deployment_config, deploymentConfigName=predefined)
    assert code == "InvalidOperationException"
    assert predefined in message
    assert config_info(codedeploy, predefined) == before
    assert predefined in all_config_names(codedeploy)


def test_delete_config_in_use_by_a_group(
    codedeploy: Any, name: str, unique: Callable[[str], str]
) -> None:
    application = unique("cfgapp")
    codedeploy.create_application(applicationName=application)
    codedeploy.create_deployment_config(
        deploymentConfigName=name, minimumHealthyHosts={"type": "FLEET_PERCENT", "value": 75}
    )
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName="uses-it",
        deploymentConfigName=name,
        serviceRoleArn=ROLE,
    )
    try:
        code, message = api_error(codedeploy.delete_deployment_config, deploymentConfigName=name)
        assert code == "DeploymentConfigInUseException"
        assert name in message
        assert config_info(codedeploy, name)["minimumHealthyHosts"]["value"] == 75

        # Once no group points at it any more, it can go.
        codedeploy.update_deployment_group(
            applicationName=application,
            currentDeploymentGroupName="uses-it",
            deploymentConfigName="CodeDeployDefault.AllAtOnce",
        )
        codedeploy.delete_deployment_config(deploymentConfigName=name)
        assert_absent(codedeploy, name)
    finally:
        codedeploy.delete_application(applicationName=application)


def test_delete_config_freed_by_deleting_the_application(
    codedeploy: Any, name: str, unique: Callable[[str], str]
) -> None:
    application = unique("cfgapp")
    codedeploy.create_application(applicationName=application, computePlatform="Lambda")
    codedeploy.create_deployment_config(
        deploymentConfigName=name, computePlatform="Lambda", trafficRoutingConfig=canary(20, 3)
    )
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName="fn",
        deploymentConfigName=name,
        serviceRoleArn=ROLE,
        deploymentStyle={
            "deploymentType": "BLUE_GREEN",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        },
    )
    code, _ = api_error(codedeploy.delete_deployment_config, deploymentConfigName=name)
    assert code == "DeploymentConfigInUseException"
    codedeploy.delete_application(applicationName=application)
    codedeploy.delete_deployment_config(deploymentConfigName=name)
    assert_absent(codedeploy, name)


def test_delete_invalid_name(codedeploy: Any) -> None:
    code, message = api_error(codedeploy.delete_deployment_config, deploymentConfigName="no way")
    assert code == "InvalidDeploymentConfigNameException"
    assert "no way" in message
