"""AWS JSON 1.1 requests and responses, checked against botocore's own service model.

Input is validated member by member (required, type, length, range, pattern, enum) so that a
client other than boto3, which validates little itself, gets the same clear errors. Failures
map to the CodeDeploy exception that names the offending top-level member, e.g. a bad
``applicationName`` is ``InvalidApplicationNameException``; members without a specific exception
get ``InvalidInputException``. Every message names the member path.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import botocore.session  # type: ignore[import-untyped]
from botocore.model import (  # type: ignore[import-untyped]
    OperationModel,
    ServiceModel,
    Shape,
    StructureShape,
)

from opendeploy.core.errors import ServiceError

__all__ = ["JsonProtocol", "load_service_model"]

#: Top-level member -> exception when it is missing.
REQUIRED_ERRORS: Mapping[str, str] = {
    "applicationName": "ApplicationNameRequiredException",
    "applicationNames": "ApplicationNameRequiredException",
    "deploymentGroupName": "DeploymentGroupNameRequiredException",
    "currentDeploymentGroupName": "DeploymentGroupNameRequiredException",
    "deploymentGroupNames": "DeploymentGroupNameRequiredException",
    "deploymentConfigName": "DeploymentConfigNameRequiredException",
    "deploymentId": "DeploymentIdRequiredException",
    "deploymentIds": "DeploymentIdRequiredException",
    "instanceName": "InstanceNameRequiredException",
    "instanceNames": "InstanceNameRequiredException",
    "instanceId": "InstanceIdRequiredException",
    "instanceIds": "InstanceIdRequiredException",
    "targetId": "DeploymentTargetIdRequiredException",
    "targetIds": "DeploymentTargetIdRequiredException",
    "revision": "RevisionRequiredException",
    "revisions": "RevisionRequiredException",
    "serviceRoleArn": "RoleRequiredException",
    "tags": "TagRequiredException",
    "ResourceArn": "ResourceArnRequiredException",
    "Tags": "TagRequiredException",
    "TagKeys": "TagRequiredException",
}

#: Top-level member -> exception when its value breaks the model's constraints.
INVALID_ERRORS: Mapping[str, str] = {
    "applicationName": "InvalidApplicationNameException",
    "newApplicationName": "InvalidApplicationNameException",
    "applicationNames": "InvalidApplicationNameException",
    "deploymentGroupName": "InvalidDeploymentGroupNameException",
    "currentDeploymentGroupName": "InvalidDeploymentGroupNameException",
    "newDeploymentGroupName": "InvalidDeploymentGroupNameException",
    "deploymentGroupNames": "InvalidDeploymentGroupNameException",
    "deploymentConfigName": "InvalidDeploymentConfigNameException",
    "deploymentId": "InvalidDeploymentIdException",
    "deploymentIds": "InvalidDeploymentIdException",
    "instanceName": "InvalidInstanceNameException",
    "instanceNames": "InvalidInstanceNameException",
    "computePlatform": "InvalidComputePlatformException",
    "sortBy": "InvalidSortByException",
    "sortOrder": "InvalidSortOrderException",
    "deployed": "InvalidDeployedStateFilterException",
    "registrationStatus": "InvalidRegistrationStatusException",
    "fileExistsBehavior": "InvalidFileExistsBehaviorException",
    "includeOnlyStatuses": "InvalidDeploymentStatusException",
    "description": "DescriptionTooLongException",
    "iamUserArn": "InvalidIamUserArnException",
    "iamSessionArn": "InvalidIamSessionArnException",
    "ResourceArn": "InvalidArnException",
    "deploymentStyle": "InvalidDeploymentStyleException",
    "autoRollbackConfiguration": "InvalidAutoRollbackConfigException",
    "alarmConfiguration": "InvalidAlarmConfigException",
    "triggerConfigurations": "InvalidTriggerConfigException",
    "loadBalancerInfo": "InvalidLoadBalancerInfoException",
    "blueGreenDeploymentConfiguration": "InvalidBlueGreenDeploymentConfigurationException",
    "ec2TagFilters": "InvalidEC2TagException",
    "ec2TagSet": "InvalidEC2TagException",
    "onPremisesInstanceTagFilters": "InvalidTagException",
    "onPremisesTagSet": "InvalidTagException",
    "tagFilters": "InvalidTagFilterException",
    "tags": "InvalidTagException",
    "Tags": "InvalidTagsToAddException",
    "minimumHealthyHosts": "InvalidMinimumHealthyHostValueException",
    "trafficRoutingConfig": "InvalidTrafficRoutingConfigurationException",
    "zonalConfig": "InvalidZonalDeploymentConfigurationException",
    "revision": "InvalidRevisionException",
    "revisions": "InvalidRevisionException",
    "targetInstances": "InvalidTargetInstancesException",
    "serviceRoleArn": "InvalidRoleException",
    "autoScalingGroups": "InvalidAutoScalingGroupException",
    "ec2DeploymentOptions": "InvalidAutoScalingGroupProcessToSuspendException",
    "ecsServices": "InvalidECSServiceException",
    "targetFilters": "InvalidTargetFilterNameException",
    "createTimeRange": "InvalidTimeRangeException",
    "instanceStatusFilter": "InvalidInstanceStatusException",
    "instanceTypeFilter": "InvalidInstanceTypeException",
    "deploymentWaitType": "InvalidDeploymentWaitTypeException",
    "externalId": "InvalidExternalIdException",
    "nextToken": "InvalidNextTokenException",
}


@lru_cache(maxsize=8)
def load_service_model(service_name: str) -> ServiceModel:
    """botocore's model of an AWS service, loaded once per process."""
    return botocore.session.get_session().get_service_model(service_name)


class JsonProtocol:
    """Validates requests and shapes responses of one JSON 1.1 service.

    ``strict`` makes an output member that the model does not know a programming error
    (tests use it); otherwise such members are dropped from the response.
    """

    def __init__(self, model: ServiceModel, *, strict: bool = False) -> None:
        self.model = model
        self.strict = strict
        self.target_prefix: str = model.metadata["targetPrefix"]
        self._operations = frozenset(model.operation_names)

    def operation(self, name: str) -> OperationModel:
        if name not in self._operations:
            raise ServiceError(
                "UnknownOperationException",
                f"{self.target_prefix}.{name} is not an operation of this service.",
            )
        return self.model.operation_model(name)

    def validate_input(self, operation: OperationModel, params: object) -> dict[str, Any]:
        shape = operation.input_shape
        if not isinstance(params, dict):
            raise ServiceError("SerializationException", "The request body must be a JSON object.")
        if shape is None:
            return params
        for member in shape.required_members:
            if params.get(member) in (None, "", [], {}):
                code = REQUIRED_ERRORS.get(member, "InvalidInputException")
                raise ServiceError(code, f"{member} is required by {operation.name}.")
        for member, value in params.items():
            member_shape = shape.members.get(member)
            if member_shape is None or value is None:
                continue
            problem = _check(member_shape, value, member)
            if problem is not None:
                code = INVALID_ERRORS.get(member, "InvalidInputException")
                raise ServiceError(code, problem)
        return params

    def serialize_output(self, operation: OperationModel, result: Mapping[str, Any]) -> Any:
        shape = operation.output_shape
        if shape is None:
            return {}
        return self._serialize(shape, result, operation.name)

    def _serialize(self, shape: Shape, value: Any, path: str) -> Any:
        if shape.type_name == "structure":
            assert isinstance(shape, StructureShape)
            out: dict[str, Any] = {}
            for key, item in value.items():
                if item is None:
                    continue
                member = shape.members.get(key)
                if member is None:
                    if self.strict:
                        raise KeyError(f"{path}.{key} is not in the {shape.name} shape")
                    continue
                out[key] = self._serialize(member, item, f"{path}.{key}")
            return out
        if shape.type_name == "list":
            return [self._serialize(shape.member, item, f"{path}[]") for item in value]
        if shape.type_name == "map":
            return {k: self._serialize(shape.value, v, f"{path}.{k}") for k, v in value.items()}
        if shape.type_name == "timestamp":
            if isinstance(value, dt.datetime):
                return value.timestamp()
            return round(float(value), 3)
        if shape.type_name == "blob" and isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        return value


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(source: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(source)
    if compiled is None:
        compiled = _PATTERNS[source] = re.compile(source)
    return compiled


def _length_problem(shape: Shape, size: int, path: str, unit: str) -> str | None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and size < low:
        return (
            f"Value at '{path}' failed to satisfy constraint: "
            f"{unit} greater than or equal to {low}."
        )
    if high is not None and size > high:
        return (
            f"Value at '{path}' failed to satisfy constraint: {unit} less than or equal to {high}."
        )
    return None


def _check(shape: Shape, value: object, path: str) -> str | None:
    """Return a message naming what is wrong with ``value`` at ``path``, or None."""
    kind = shape.type_name
    if kind == "structure":
        return _check_structure(shape, value, path)
    if kind == "list":
        if not isinstance(value, list):
            return f"Value at '{path}' must be a list."
        problem = _length_problem(shape, len(value), path, "Member must have length")
        for index, item in enumerate(value):
            problem = problem or _check(shape.member, item, f"{path}[{index}]")
        return problem
    if kind == "map":
        if not isinstance(value, dict):
            return f"Value at '{path}' must be an object."
        problem = _length_problem(shape, len(value), path, "Map must have size")
        for key, item in value.items():
            problem = (
                problem
                or _check(shape.key, key, f"{path}.key")
                or _check(shape.value, item, f"{path}.{key}")
            )
        return problem
    if kind == "string":
        return _check_string(shape, value, path)
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"Value at '{path}' must be a whole number."
        return _length_problem(shape, value, path, "Member must have value")
    if kind in ("double", "float"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"Value at '{path}' must be a number."
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else f"Value at '{path}' must be true or false."
    if kind == "timestamp":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return None
        return f"Value at '{path}' must be a timestamp in epoch seconds."
    if kind == "blob":
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            return f"Value at '{path}' must be base64."
    return None


def _check_structure(shape: Shape, value: object, path: str) -> str | None:
    if not isinstance(value, dict):
        return f"Value at '{path}' must be an object."
    assert isinstance(shape, StructureShape)
    for member in shape.required_members:
        if value.get(member) is None:
            return f"Value at '{path}.{member}' is required."
    for key, item in value.items():
        member_shape = shape.members.get(key)
        if member_shape is not None and item is not None:
            problem = _check(member_shape, item, f"{path}.{key}")
            if problem is not None:
                return problem
    return None


def _check_string(shape: Shape, value: object, path: str) -> str | None:
    if not isinstance(value, str):
        return f"Value at '{path}' must be a string."
    enum = shape.enum
    if enum and value not in enum:
        allowed = ", ".join(enum)
        return (
            f"Value {value!r} at '{path}' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{allowed}]."
        )
    problem = _length_problem(shape, len(value), path, "Member must have length")
    if problem is not None:
        return problem
    pattern = shape.metadata.get("pattern")
    if pattern and not _pattern(pattern).search(value):
        return (
            f"Value at '{path}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern}."
        )
    return None
