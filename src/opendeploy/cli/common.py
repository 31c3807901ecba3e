"""What every client command shares: the endpoint, the region, AWS-convention credentials."""

from __future__ import annotations

from typing import Any

import click

__all__ = [
    "ENDPOINT",
    "REGION",
    "aws_client",
    "aws_credentials",
    "fail_on_client_error",
]

ENDPOINT = click.option(
    "--endpoint",
    envvar="OPENDEPLOY_ENDPOINT",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The OpenDeploy server [env OPENDEPLOY_ENDPOINT].",
)
REGION = click.option(
    "--region", envvar="AWS_DEFAULT_REGION", default="us-east-1", show_default=True
)


def aws_client(service: str, endpoint: str, region: str) -> Any:
    """A boto3 client for the server, credentials by the AWS conventions.

    One attempt, no retries: a retried CreateAccessKey could make a key whose secret is never
    shown, and an unreachable server should be reported at once, not after a minute of backoff.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client(
        service, endpoint_url=endpoint, region_name=region, config=config
    )


def aws_credentials() -> Any:
    """The caller's credentials (env, shared credentials file, profile), or a clear error."""
    import boto3

    credentials = boto3.session.Session().get_credentials()
    if credentials is None:
        raise click.ClickException(
            "No AWS credentials found: set AWS_SHARED_CREDENTIALS_FILE (e.g. to the server's "
            "admin-credentials file), AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
        )
    return credentials.get_frozen_credentials()


def fail_on_client_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a boto3 call; turn its errors into a one-line message for the user."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise click.ClickException(f"{details.get('Code')}: {details.get('Message')}") from error
    except BotoCoreError as error:
        raise click.ClickException(str(error)) from error
