"""Deployment configurations: the predefined ``CodeDeployDefault.*`` set and the rules for new ones.

Configs travel through the core as the API's own JSON-shaped mappings (``minimumHealthyHosts``,
``trafficRoutingConfig``, ``zonalConfig``) so that what a user stored is what they get back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opendeploy.core.errors import ServiceError

__all__ = [
    "PREDEFINED_CONFIGS",
    "DeploymentConfig",
    "predefined_config",
    "validate_new_config",
]

#: When CodeDeploy's predefined configurations came into being (the API version date).
PREDEFINED_CREATE_TIME = 1412553600.0
MAX_FLEET_PERCENT = 99
MAX_TRAFFIC_PERCENT = 99
MAX_LAMBDA_SHIFT_SPAN_MINUTES = 2880


@dataclass(frozen=True)
class DeploymentConfig:
    config_id: str
    name: str
    compute_platform: str
    create_time: float
    minimum_healthy_hosts: Mapping[str, Any] | None = None
    traffic_routing: Mapping[str, Any] | None = None
    zonal: Mapping[str, Any] | None = None
    predefined: bool = field(default=False, compare=False)

    def to_api(self) -> dict[str, Any]:
        """The ``DeploymentConfigInfo`` shape."""
        info: dict[str, Any] = {
            "deploymentConfigId": self.config_id,
            "deploymentConfigName": self.name,
            "createTime": self.create_time,
            "computePlatform": self.compute_platform,
        }
        if self.minimum_healthy_hosts is not None:
            info["minimumHealthyHosts"] = dict(self.minimum_healthy_hosts)
        if self.traffic_routing is not None:
            info["trafficRoutingConfig"] = dict(self.traffic_routing)
        if self.zonal is not None:
            info["zonalConfig"] = dict(self.zonal)
        return info


def _predefined(
    number: int,
    name: str,
    platform: str,
    *,
    hosts: Mapping[str, Any] | None = None,
    routing: Mapping[str, Any] | None = None,
) -> DeploymentConfig:
    return DeploymentConfig(
        config_id=f"00000000-0000-0000-0000-{number:012d}",
        name="CodeDeployDefault." + name,
        compute_platform=platform,
        create_time=PREDEFINED_CREATE_TIME,
        minimum_healthy_hosts=hosts,
        traffic_routing=routing,
        predefined=True,
    )


def _canary(percent: int, minutes: int) -> Mapping[str, Any]:
    return {
        "type": "TimeBasedCanary",
        "timeBasedCanary": {"canaryPercentage": percent, "canaryInterval": minutes},
    }


def _linear(percent: int, minutes: int) -> Mapping[str, Any]:
    return {
        "type": "TimeBasedLinear",
        "timeBasedLinear": {"linearPercentage": percent, "linearInterval": minutes},
    }


_ALL_AT_ONCE_ROUTING: Mapping[str, Any] = {"type": "AllAtOnce"}

#: OneAtATime is reported the way the API reference's example shows it; the engine treats it
#: as "one host at a time, a failure tolerated only on the last host" (codedeploy-spec §6.1).
PREDEFINED_CONFIGS: tuple[DeploymentConfig, ...] = (
    _predefined(1, "OneAtATime", "Server", hosts={"type": "MOST_CONCURRENCY", "value": 1}),
    _predefined(2, "HalfAtATime", "Server", hosts={"type": "FLEET_PERCENT", "value": 50}),
    _predefined(3, "AllAtOnce", "Server", hosts={"type": "HOST_COUNT", "value": 0}),
    _predefined(4, "LambdaAllAtOnce", "Lambda", routing=_ALL_AT_ONCE_ROUTING),
    _predefined(5, "LambdaCanary10Percent5Minutes", "Lambda", routing=_canary(10, 5)),
    _predefined(6, "LambdaCanary10Percent10Minutes", "Lambda", routing=_canary(10, 10)),
    _predefined(7, "LambdaCanary10Percent15Minutes", "Lambda", routing=_canary(10, 15)),
    _predefined(8, "LambdaCanary10Percent30Minutes", "Lambda", routing=_canary(10, 30)),
    _predefined(9, "LambdaLinear10PercentEvery1Minute", "Lambda", routing=_linear(10, 1)),
    _predefined(10, "LambdaLinear10PercentEvery2Minutes", "Lambda", routing=_linear(10, 2)),
    _predefined(11, "LambdaLinear10PercentEvery3Minutes", "Lambda", routing=_linear(10, 3)),
    _predefined(12, "LambdaLinear10PercentEvery10Minutes", "Lambda", routing=_linear(10, 10)),
    _predefined(13, "ECSAllAtOnce", "ECS", routing=_ALL_AT_ONCE_ROUTING),
    _predefined(14, "ECSLinear10PercentEvery1Minutes", "ECS", routing=_linear(10, 1)),
    _predefined(15, "ECSLinear10PercentEvery3Minutes", "ECS", routing=_linear(10, 3)),
    _predefined(16, "ECSCanary10Percent5Minutes", "ECS", routing=_canary(10, 5)),
    _predefined(17, "ECSCanary10Percent15Minutes", "ECS", routing=_canary(10, 15)),
)
_BY_NAME = {config.name: config for config in PREDEFINED_CONFIGS}


def predefined_config(name: str) -> DeploymentConfig | None:
    return _BY_NAME.get(name)


def _invalid_hosts(message: str) -> ServiceError:
    return ServiceError("InvalidMinimumHealthyHostValueException", message)


def _invalid_routing(message: str) -> ServiceError:
    return ServiceError("InvalidTrafficRoutingConfigurationException", message)


def _invalid_zonal(message: str) -> ServiceError:
    return ServiceError("InvalidZonalDeploymentConfigurationException", message)


def _check_hosts_value(kind: object, value: object) -> None:
    if kind not in ("HOST_COUNT", "FLEET_PERCENT"):
        raise _invalid_hosts(
            f"minimumHealthyHosts.type must be HOST_COUNT or FLEET_PERCENT, not {kind!r}."
        )
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid_hosts("minimumHealthyHosts.value must be a whole number.")
    if value < 0:
        raise _invalid_hosts(f"minimumHealthyHosts.value {value} is negative.")
    if kind == "FLEET_PERCENT" and value > MAX_FLEET_PERCENT:
        raise _invalid_hosts(
            f"minimumHealthyHosts.value {value} is over {MAX_FLEET_PERCENT} for FLEET_PERCENT."
        )


def _check_zonal(zonal: Mapping[str, Any]) -> None:
    for key in ("firstZoneMonitorDurationInSeconds", "monitorDurationInSeconds"):
        seconds = zonal.get(key)
        if seconds is not None and (not isinstance(seconds, int) or seconds < 0):
            raise _invalid_zonal(f"zonalConfig.{key} must be a whole number of seconds, 0 or more.")
    per_zone = zonal.get("minimumHealthyHostsPerZone")
    if per_zone is not None:
        kind, value = per_zone.get("type"), per_zone.get("value")
        if kind not in ("HOST_COUNT", "FLEET_PERCENT"):
            raise _invalid_zonal(
                "zonalConfig.minimumHealthyHostsPerZone.type must be HOST_COUNT or FLEET_PERCENT."
            )
        if (
            not isinstance(value, int)
            or value < 0
            or (kind == "FLEET_PERCENT" and value > MAX_FLEET_PERCENT)
        ):
            raise _invalid_zonal(
                "zonalConfig.minimumHealthyHostsPerZone.value must be 0 or more "
                f"(at most {MAX_FLEET_PERCENT} for FLEET_PERCENT)."
            )


def _check_shift(percent: object, interval: object, *, prefix: str) -> tuple[int, int]:
    if not isinstance(percent, int) or not 1 <= percent <= MAX_TRAFFIC_PERCENT:
        raise _invalid_routing(f"{prefix}Percentage must be between 1 and {MAX_TRAFFIC_PERCENT}.")
    if not isinstance(interval, int) or interval < 1:
        raise _invalid_routing(f"{prefix}Interval must be a whole number of minutes, 1 or more.")
    return percent, interval


def _check_routing(routing: Mapping[str, Any], platform: str) -> None:
    kind = routing.get("type")
    canary, linear = routing.get("timeBasedCanary"), routing.get("timeBasedLinear")
    if kind == "AllAtOnce":
        if canary is not None or linear is not None:
            raise _invalid_routing(
                "An AllAtOnce traffic routing takes no canary or linear settings."
            )
        return
    if kind == "TimeBasedCanary":
        if canary is None or linear is not None:
            raise _invalid_routing("TimeBasedCanary needs timeBasedCanary and no timeBasedLinear.")
        _, span = _check_shift(
            canary.get("canaryPercentage"),
            canary.get("canaryInterval"),
            prefix="timeBasedCanary.canary",
        )
    elif kind == "TimeBasedLinear":
        if linear is None or canary is not None:
            raise _invalid_routing("TimeBasedLinear needs timeBasedLinear and no timeBasedCanary.")
        percent, interval = _check_shift(
            linear.get("linearPercentage"),
            linear.get("linearInterval"),
            prefix="timeBasedLinear.linear",
        )
        steps = -(-100 // percent) - 1
        span = steps * interval
    else:
        raise _invalid_routing(
            f"trafficRoutingConfig.type {kind!r} is not one of "
            "AllAtOnce, TimeBasedCanary, TimeBasedLinear."
        )
    if platform == "Lambda" and span > MAX_LAMBDA_SHIFT_SPAN_MINUTES:
        raise _invalid_routing(
            f"The traffic shifts span {span} minutes; Lambda allows at most "
            f"{MAX_LAMBDA_SHIFT_SPAN_MINUTES}."
        )


def validate_new_config(
    *,
    platform: str,
    minimum_healthy_hosts: Mapping[str, Any] | None,
    traffic_routing: Mapping[str, Any] | None,
    zonal: Mapping[str, Any] | None,
) -> None:
    """Apply CodeDeploy's rules for CreateDeploymentConfig (codedeploy-spec §3.4, §6.3)."""
    if platform == "Server":
        if traffic_routing is not None:
            raise _invalid_routing(
                "A Server deployment configuration takes no trafficRoutingConfig."
            )
        if minimum_healthy_hosts is None:
            raise _invalid_hosts("A Server deployment configuration needs minimumHealthyHosts.")
        _check_hosts_value(minimum_healthy_hosts.get("type"), minimum_healthy_hosts.get("value"))
        if zonal is not None:
            _check_zonal(zonal)
        return
    if minimum_healthy_hosts is not None:
        raise _invalid_hosts(f"A {platform} deployment configuration takes no minimumHealthyHosts.")
    if zonal is not None:
        raise _invalid_zonal("zonalConfig applies only to Server deployment configurations.")
    if traffic_routing is None:
        raise _invalid_routing(f"A {platform} deployment configuration needs trafficRoutingConfig.")
    _check_routing(traffic_routing, platform)
