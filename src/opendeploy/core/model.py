"""Frozen records of the control plane's resources.

Groups keep the members of the CodeDeploy model that the core does not interpret as the JSON
mapping the user sent (``spec``), so a Get returns exactly what a Create or Update stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AccessKey",
    "Application",
    "DeploymentGroup",
    "OnPremisesInstance",
    "Revision",
    "User",
]


@dataclass(frozen=True)
class Application:
    application_id: str
    name: str
    compute_platform: str
    create_time: float
    github_account_name: str | None = None


@dataclass(frozen=True)
class DeploymentGroup:
    group_id: str
    application_id: str
    application_name: str
    compute_platform: str
    name: str
    config_name: str
    service_role_arn: str
    spec: Mapping[str, Any]
    create_time: float
    target_revision: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Revision:
    application_id: str
    identity: str
    location: Mapping[str, Any]
    register_time: float
    description: str | None = None
    first_used_time: float | None = None
    last_used_time: float | None = None


@dataclass(frozen=True)
class OnPremisesInstance:
    name: str
    instance_arn: str
    register_time: float
    iam_user_arn: str | None = None
    iam_session_arn: str | None = None
    deregister_time: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def registered(self) -> bool:
        return self.deregister_time is None


@dataclass(frozen=True)
class User:
    name: str
    user_id: str
    arn: str
    path: str
    create_time: float


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    user_name: str
    status: str
    create_time: float
