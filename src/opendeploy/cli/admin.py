"""``opendeploy admin``: users and access keys, through the server's IAM endpoint."""

from __future__ import annotations

import json
from typing import Any

import click

from opendeploy.core.policies import POLICY_ARNS, Role

__all__ = ["admin"]


def _iam(endpoint: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    # One attempt, no retries: a retried CreateAccessKey could make a key whose secret is never
    # shown, and an unreachable server should be reported at once, not after a minute of backoff.
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=30,
    )
    return boto3.session.Session().client(
        "iam", endpoint_url=endpoint, region_name=region, config=config
    )


_ENDPOINT = click.option(
    "--endpoint",
    envvar="OPENDEPLOY_ENDPOINT",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The OpenDeploy server [env OPENDEPLOY_ENDPOINT].",
)
_REGION = click.option(
    "--region", envvar="AWS_DEFAULT_REGION", default="us-east-1", show_default=True
)


def _fail_on_client_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise click.ClickException(f"{details.get('Code')}: {details.get('Message')}") from error
    except BotoCoreError as error:
        raise click.ClickException(str(error)) from error


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
@_ENDPOINT
@_REGION
def create_user(name: str, role: str, endpoint: str, region: str) -> None:
    """Create user NAME with a role; prints its ARN."""
    iam = _iam(endpoint, region)
    user = _fail_on_client_error(iam.create_user, UserName=name)["User"]
    _fail_on_client_error(iam.attach_user_policy, UserName=name, PolicyArn=POLICY_ARNS[Role(role)])
    click.echo(
        json.dumps({"UserName": user["UserName"], "Arn": user["Arn"], "Role": role}, indent=2)
    )


@admin.command("create-access-key")
@click.argument("name")
@_ENDPOINT
@_REGION
def create_access_key(name: str, endpoint: str, region: str) -> None:
    """Create an access key for user NAME; the secret is shown this once."""
    iam = _iam(endpoint, region)
    key = _fail_on_client_error(iam.create_access_key, UserName=name)["AccessKey"]
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
