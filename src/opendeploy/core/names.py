"""Naming rules of CodeDeploy resources (codedeploy-spec §10) and the ids we mint."""

from __future__ import annotations

import re
import secrets
import string

from opendeploy.core.errors import ServiceError

__all__ = [
    "PREDEFINED_CONFIG_PREFIX",
    "check_config_name",
    "check_description",
    "check_resource_name",
    "new_deployment_id",
    "new_instance_suffix",
]

PREDEFINED_CONFIG_PREFIX = "CodeDeployDefault."
MAX_NAME_LENGTH = 100
MAX_DESCRIPTION_LENGTH = 256
_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]+")
_ID_ALPHABET = string.ascii_uppercase + string.digits


def check_resource_name(value: object, *, kind: str, required_code: str, invalid_code: str) -> str:
    """Return ``value`` if it is a valid application/group/config name, else raise.

    ``kind`` is the human word used in messages ("application", "deployment group").
    """
    if value is None or value == "":
        raise ServiceError(required_code, f"The {kind} name is required.")
    if not isinstance(value, str):
        raise ServiceError(invalid_code, f"The {kind} name must be a string.")
    if len(value) > MAX_NAME_LENGTH:
        raise ServiceError(
            invalid_code,
            f"The {kind} name is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}.",
        )
    if not _NAME.fullmatch(value):
        raise ServiceError(
            invalid_code,
            f"The {kind} name {value!r} may contain only letters, digits and + = , . @ _ -.",
        )
    return value


def check_config_name(value: object, *, for_create: bool) -> str:
    """Validate a deployment config name; a new config may not use the reserved prefix."""
    name = check_resource_name(
        value,
        kind="deployment configuration",
        required_code="DeploymentConfigNameRequiredException",
        invalid_code="InvalidDeploymentConfigNameException",
    )
    if for_create and name.startswith(PREDEFINED_CONFIG_PREFIX):
        raise ServiceError(
            "InvalidDeploymentConfigNameException",
            f"The deployment configuration name {name!r} uses the reserved prefix "
            f"{PREDEFINED_CONFIG_PREFIX!r}.",
        )
    return name


def check_description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ServiceError("InvalidInputException", "The description must be a string.")
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise ServiceError(
            "DescriptionTooLongException",
            f"The description is {len(value)} characters long; the limit is "
            f"{MAX_DESCRIPTION_LENGTH}.",
        )
    return value


def new_deployment_id(rng: secrets.SystemRandom | None = None) -> str:
    """A deployment id in AWS's form: ``d-`` and nine upper-case letters or digits."""
    chooser = rng or secrets.SystemRandom()
    return "d-" + "".join(chooser.choice(_ID_ALPHABET) for _ in range(9))


def new_instance_suffix(rng: secrets.SystemRandom | None = None) -> str:
    """The ten random characters AWS appends to an on-premises instance ARN."""
    chooser = rng or secrets.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    return "".join(chooser.choice(alphabet) for _ in range(10))
