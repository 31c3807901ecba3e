from typing import Any

import pytest

from opendeploy.core.configs import PREDEFINED_CONFIGS, predefined_config, validate_new_config
from opendeploy.core.errors import ServiceError


def test_predefined_set_is_complete_and_unique() -> None:
    names = [config.name for config in PREDEFINED_CONFIGS]
    assert len(names) == len(set(names)) == 17
    assert {c.compute_platform for c in PREDEFINED_CONFIGS} == {"Server", "Lambda", "ECS"}
    assert len({c.config_id for c in PREDEFINED_CONFIGS}) == 17
    one = predefined_config("CodeDeployDefault.OneAtATime")
    assert one is not None and one.config_id == "00000000-0000-0000-0000-000000000001"
    half = predefined_config("CodeDeployDefault.HalfAtATime")
    assert half is not None and half.to_api()["minimumHealthyHosts"] == {
        "type": "FLEET_PERCENT",
        "value": 50,
    }
    assert predefined_config("CodeDeployDefault.Nope") is None


def _server(hosts: Any, zonal: Any = None) -> None:
    validate_new_config(
        platform="Server", minimum_healthy_hosts=hosts, traffic_routing=None, zonal=zonal
    )


@pytest.mark.parametrize(
    "hosts",
    [
        {"type": "HOST_COUNT", "value": 0},
        {"type": "HOST_COUNT", "value": 7},
        {"type": "FLEET_PERCENT", "value": 99},
    ],
)
def test_valid_server_minimums(hosts: dict[str, Any]) -> None:
    _server(hosts)


@pytest.mark.parametrize(
    ("hosts", "words"),
    [
        (None, "needs minimumHealthyHosts"),
        ({"type": "FLEET_PERCENT", "value": 100}, "over 99"),
        ({"type": "HOST_COUNT", "value": -1}, "negative"),
        ({"type": "MOST_CONCURRENCY", "value": 1}, "HOST_COUNT or FLEET_PERCENT"),
        ({"type": "HOST_COUNT", "value": True}, "whole number"),
    ],
)
def test_invalid_server_minimums(hosts: Any, words: str) -> None:
    with pytest.raises(ServiceError) as caught:
        _server(hosts)
    assert caught.value.code == "InvalidMinimumHealthyHostValueException"
    assert words in caught.value.message


def test_zonal_rules() -> None:
    _server({"type": "HOST_COUNT", "value": 1}, {"monitorDurationInSeconds": 60})
    with pytest.raises(ServiceError) as caught:
        _server(
            {"type": "HOST_COUNT", "value": 1},
            {"minimumHealthyHostsPerZone": {"type": "FLEET_PERCENT", "value": 100}},
        )
    assert caught.value.code == "InvalidZonalDeploymentConfigurationException"


@pytest.mark.parametrize(
    ("routing", "ok"),
    [
        ({"type": "AllAtOnce"}, True),
        (
            {
                "type": "TimeBasedCanary",
                "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5},
            },
            True,
        ),
        (
            {
                "type": "TimeBasedLinear",
                "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 320},
            },
            True,
        ),
        (
            {
                "type": "TimeBasedLinear",
                "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 321},
            },
            False,
        ),
        (
            {
                "type": "TimeBasedCanary",
                "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 1},
            },
            False,
        ),
        (
            {
                "type": "TimeBasedCanary",
                "timeBasedCanary": {"canaryPercentage": 100, "canaryInterval": 5},
            },
            False,
        ),
        (
            {"type": "AllAtOnce", "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5}},
            False,
        ),
    ],
)
def test_lambda_routing(routing: dict[str, Any], ok: bool) -> None:
    def create() -> None:
        validate_new_config(
            platform="Lambda", minimum_healthy_hosts=None, traffic_routing=routing, zonal=None
        )

    if ok:
        create()
    else:
        with pytest.raises(ServiceError) as caught:
            create()
        assert caught.value.code == "InvalidTrafficRoutingConfigurationException"
