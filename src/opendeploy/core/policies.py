"""Who may call what: the four roles, named by the AWS managed policy ARNs users know.

admin     AWSCodeDeployFullAccess       everything, including users and keys
deployer  AWSCodeDeployDeployerAccess   reads, revisions, deployments, registering hosts
                                        and their agent users
reader    AWSCodeDeployReadOnlyAccess   Get*, BatchGet*, List*
agent     OpenDeployAgentAccess         the agent API for its own host; nothing public
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "DEPLOYER_IAM_OPERATIONS",
    "POLICY_ARNS",
    "SELF_IAM_OPERATIONS",
    "Role",
    "is_allowed",
    "role_for_policy",
    "roles_of",
]


class Role(StrEnum):
    ADMIN = "admin"
    DEPLOYER = "deployer"
    READER = "reader"
    AGENT = "agent"


POLICY_ARNS: dict[Role, str] = {
    Role.ADMIN: "arn:aws:iam::aws:policy/AWSCodeDeployFullAccess",
    Role.DEPLOYER: "arn:aws:iam::aws:policy/AWSCodeDeployDeployerAccess",
    Role.READER: "arn:aws:iam::aws:policy/AWSCodeDeployReadOnlyAccess",
    Role.AGENT: "arn:aws:iam::aws:policy/OpenDeployAgentAccess",
}
_ROLE_BY_ARN = {arn: role for role, arn in POLICY_ARNS.items()}

_READ_PREFIXES = ("Get", "BatchGet", "List")
_DEPLOYER_OPERATIONS = frozenset(
    {
        "CreateDeployment",
        "StopDeployment",
        "ContinueDeployment",
        "SkipWaitTimeForInstanceTermination",
        "RegisterApplicationRevision",
        "PutLifecycleEventHookExecutionStatus",
        "RegisterOnPremisesInstance",
        "DeregisterOnPremisesInstance",
        "AddTagsToOnPremisesInstances",
        "RemoveTagsFromOnPremisesInstances",
        "PushRevision",
    }
)
#: IAM calls a deployer may make; the IAM service narrows them to agent users.
DEPLOYER_IAM_OPERATIONS = frozenset(
    {"CreateUser", "CreateAccessKey", "ListAccessKeys", "DeleteAccessKey", "AttachUserPolicy"}
)
#: IAM calls any signed-in user may make about themselves.
SELF_IAM_OPERATIONS = frozenset({"GetUser"})

PUBLIC = "codedeploy"
IAM = "iam"
AGENT = "codedeploy-commands"


def role_for_policy(policy_arn: str) -> Role | None:
    return _ROLE_BY_ARN.get(policy_arn)


def roles_of(policy_arns: Iterable[str]) -> frozenset[Role]:
    return frozenset(role for arn in policy_arns if (role := role_for_policy(arn)) is not None)


def is_allowed(roles: frozenset[Role], service: str, operation: str) -> bool:
    """Whether a caller with ``roles`` may call ``operation`` of ``service`` at all."""
    if Role.ADMIN in roles and service in (PUBLIC, IAM):
        return True
    if service == AGENT:
        return Role.AGENT in roles
    if service == IAM:
        if operation in SELF_IAM_OPERATIONS:
            return bool(roles)
        return Role.DEPLOYER in roles and operation in DEPLOYER_IAM_OPERATIONS
    if service != PUBLIC:
        return False
    if operation.startswith(_READ_PREFIXES) and roles & {Role.DEPLOYER, Role.READER}:
        return True
    return Role.DEPLOYER in roles and operation in _DEPLOYER_OPERATIONS
