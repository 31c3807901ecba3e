import pytest

from opendeploy.core.policies import AGENT, IAM, POLICY_ARNS, PUBLIC, Role, is_allowed, roles_of

ADMIN, DEPLOYER, READER, AGENT_ROLE = (frozenset({r}) for r in Role)


@pytest.mark.parametrize(
    ("roles", "service", "operation", "allowed"),
    [
        (ADMIN, PUBLIC, "DeleteApplication", True),
        (ADMIN, IAM, "CreateAccessKey", True),
        (ADMIN, AGENT, "PollHostCommand", False),
        (DEPLOYER, PUBLIC, "GetApplication", True),
        (DEPLOYER, PUBLIC, "CreateDeployment", True),
        (DEPLOYER, PUBLIC, "RegisterOnPremisesInstance", True),
        (DEPLOYER, PUBLIC, "CreateApplication", False),
        (DEPLOYER, PUBLIC, "DeleteDeploymentGroup", False),
        (DEPLOYER, IAM, "CreateUser", True),
        (DEPLOYER, IAM, "DeleteUser", False),
        (READER, PUBLIC, "ListApplications", True),
        (READER, PUBLIC, "BatchGetDeployments", True),
        (READER, PUBLIC, "CreateDeployment", False),
        (READER, IAM, "GetUser", True),
        (READER, IAM, "ListUsers", False),
        (AGENT_ROLE, PUBLIC, "GetApplication", False),
        (AGENT_ROLE, AGENT, "PollHostCommand", True),
        (frozenset(), PUBLIC, "GetApplication", False),
        (frozenset(), IAM, "GetUser", False),
        (ADMIN, "s3", "ListBuckets", False),
    ],
)
def test_role_table(roles: frozenset[Role], service: str, operation: str, allowed: bool) -> None:
    assert is_allowed(roles, service, operation) is allowed


def test_roles_of_ignores_unknown_policies() -> None:
    arns = [POLICY_ARNS[Role.READER], "arn:aws:iam::aws:policy/AdministratorAccess"]
    assert roles_of(arns) == {Role.READER}
