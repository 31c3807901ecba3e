"""``opendeploy admin``: users and access keys, through the server's IAM endpoint."""

from __future__ import annotations

import json
from typing import Any

import click

from opendeploy.cli.common import ENDPOINT, REGION, aws_client, fail_on_client_error
from opendeploy.core.policies import POLICY_ARNS, Role

__all__ = ["admin"]


def _iam(endpoint: str, region: str) -> Any:
    return aws_client("iam", endpoint, region)


@click.group()
def admin() -> None:
    """Manage users and access keys (credentials by the AWS conventions)."""


@admin.command("create-user")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([role.value for role in Role]),
    required=True,
    help="admin: everything; deployer: deploy and register hosts; reader: read only; "
    "agent: one host's agent.",
)
@ENDPOINT
@REGION
def create_user(name: str, role: str, endpoint: str, region: str) -> None:
    """Create user NAME with a role; prints its ARN."""
    iam = _iam(endpoint, region)
    user = fail_on_client_error(iam.create_user, UserName=name)["User"]
    fail_on_client_error(iam.attach_user_policy, UserName=name, PolicyArn=POLICY_ARNS[Role(role)])
    click.echo(
        json.dumps({"UserName": user["UserName"], "Arn": user["Arn"], "Role": role}, indent=2)
    )


@admin.command("create-access-key")
@click.argument("name")
@ENDPOINT
@REGION
def create_access_key(name: str, endpoint: str, region: str) -> None:
    """Create an access key for user NAME; the secret is shown this once."""
    iam = _iam(endpoint, region)
    key = fail_on_client_error(iam.create_access_key, UserName=name)["AccessKey"]
    click.echo(
        json.dumps(
            {
                "UserName": key["UserName"],
                "AccessKeyId": key["AccessKeyId"],
                "SecretAccessKey": key["SecretAccessKey"],
            },
            indent=2,
        )
    )
    click.echo("Keep the secret now: it cannot be shown again.", err=True)
