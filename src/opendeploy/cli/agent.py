"""``opendeploy agent register`` and ``opendeploy agent run``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["agent"]

SIGNER_PATH = "/agent/spec-signer.pem"
USER_PREFIX = "opendeploy-agent-"


@click.group()
def agent() -> None:
    """Register this host and run its deployment agent."""


def _parse_pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key, item))
    return pairs


def _parse_tags(values: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in _parse_pairs(values, "--tag")]


def _parse_hook_environment(values: tuple[str, ...]) -> dict[str, str]:
    from opendeploy.agent.config import ConfigError, validate_hook_environment

    try:
        return validate_hook_environment(
            dict(_parse_pairs(values, "--hook-env")), file="--hook-env"
        )
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--hook-env") from None


def _client_error_text(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        details = response.get("Error") or {}
        return f"{details.get('Code')}: {details.get('Message')}"
    return str(error)


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def fetch_signer_certificate(endpoint: str, ca_bundle: Path | None) -> str:
    """The server's spec signer certificate (PEM), checked to be one."""
    import ssl

    import httpx
    from cryptography import x509

    url = endpoint.rstrip("/") + SIGNER_PATH
    verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    try:
        response = httpx.get(url, timeout=30.0, verify=verify)
    except httpx.HTTPError as error:
        raise click.ClickException(f"cannot reach {url}: {error}") from None
    if response.status_code != 200:
        raise click.ClickException(
            f"GET {url} answered HTTP {response.status_code}; is this an OpenDeploy server?"
        )
    text = response.text
    try:
        x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise click.ClickException(f"{url} did not return a PEM certificate") from None
    return text


@agent.command()
@click.option("--endpoint", required=True, help="The OpenDeploy server, e.g. https://deploy:8080.")
@click.option("--instance-name", required=True, help="Name of this host in OpenDeploy.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Instance tag (repeat).")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The agent's deployment root (revisions, logs, instruction files).",
)
@click.option(
    "--destination-root",
    default="/",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Prefix of every appspec destination.",
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the agent's configuration (mode 0600).",
)
@click.option("--region", default="us-east-1", show_default=True)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA certificates (PEM) the server's TLS certificate must chain to.",
)
@click.option(
    "--hook-env",
    "hook_env",
    multiple=True,
    metavar="NAME=VALUE",
    help="A variable every hook on this host sees (repeat). Not for secrets.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing configuration file.")
def register(
    endpoint: str,
    instance_name: str,
    tags: tuple[str, ...],
    root: Path,
    destination_root: Path,
    config_path: Path,
    region: str,
    ca_bundle: Path | None,
    hook_env: tuple[str, ...],
    force: bool,
) -> None:
    """Create this host's agent user and key, register the host, write the agent config.

    Runs with admin or deployer credentials found the AWS way (environment, shared
    credentials file, AWS_PROFILE).
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    from opendeploy.agent.config import AgentConfig, write_config
    from opendeploy.core.policies import POLICY_ARNS, Role

    endpoint = endpoint.rstrip("/")
    parsed_tags = _parse_tags(tags)
    hook_environment = _parse_hook_environment(hook_env)
    if config_path.exists() and not force:
        raise click.ClickException(
            f"{config_path} exists; pass --force to overwrite it (its key would be lost)"
        )
    if not root.is_absolute() or not destination_root.is_absolute():
        raise click.ClickException("--root and --destination-root must be absolute paths")
    certificate = fetch_signer_certificate(endpoint, ca_bundle)

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise click.ClickException(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_SHARED_CREDENTIALS_FILE or AWS_PROFILE to an OpenDeploy admin or deployer"
        )
    options: dict[str, Any] = {
        "endpoint_url": endpoint,
        "region_name": region,
        "config": Config(retries={"max_attempts": 3, "mode": "standard"}),
    }
    if ca_bundle is not None:
        options["verify"] = str(ca_bundle)
    iam = session.client("iam", **options)
    codedeploy = session.client("codedeploy", **options)

    user_name = USER_PREFIX + instance_name
    key_id: str | None = None
    try:
        try:
            user = iam.create_user(UserName=user_name)["User"]
            click.echo(f"created IAM user {user['Arn']}")
        except ClientError as error:
            if _error_code(error) != "EntityAlreadyExists":
                raise
            user = iam.get_user(UserName=user_name)["User"]
            click.echo(f"reusing the existing IAM user {user['Arn']}")
        iam.attach_user_policy(UserName=user_name, PolicyArn=POLICY_ARNS[Role.AGENT])
        click.echo(f"attached {POLICY_ARNS[Role.AGENT]}")
        key = iam.create_access_key(UserName=user_name)["AccessKey"]
        key_id = key["AccessKeyId"]
        click.echo(f"created access key {key_id}")
        codedeploy.register_on_premises_instance(instanceName=instance_name, iamUserArn=user["Arn"])
        click.echo(f"registered on-premises instance {instance_name}")
        if parsed_tags:
            codedeploy.add_tags_to_on_premises_instances(
                tags=parsed_tags, instanceNames=[instance_name]
            )
            shown = ", ".join(f"{tag['Key']}={tag['Value']}" for tag in parsed_tags)
            click.echo(f"tagged it {shown}")
        config = AgentConfig(
            endpoint=endpoint,
            region=region,
            instance_name=instance_name,
            host_identifier=user["Arn"],
            access_key_id=key_id,
            secret_access_key=key["SecretAccessKey"],
            root_dir=root,
            spec_signer_certificate=certificate,
            destination_root=destination_root,
            ca_bundle=ca_bundle.absolute() if ca_bundle is not None else None,
            hook_environment=hook_environment,
        )
        write_config(config_path, config)
    except (ClientError, BotoCoreError, OSError) as error:
        if key_id is not None:
            try:
                iam.delete_access_key(UserName=user_name, AccessKeyId=key_id)
                click.echo(f"deleted access key {key_id} again", err=True)
            except (ClientError, BotoCoreError):
                click.echo(f"could not delete access key {key_id}; delete it by hand", err=True)
        raise click.ClickException(
            f"registration failed: {_client_error_text(error)}"
            + (f" (IAM user {user_name} is left in place; a re-run reuses it)" if key_id else "")
        ) from None
    click.echo(f"wrote {config_path} (mode 0600)")
    click.echo(f"start the agent with: opendeploy agent run --config {config_path}")


@agent.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent configuration written by `opendeploy agent register`.",
)
@click.option("--log-level", default="info", show_default=True)
def run(config_path: Path, log_level: str) -> None:
    """Run the agent: poll for commands and execute them (SIGTERM: finish, then stop)."""
    from opendeploy.agent.config import ConfigError
    from opendeploy.agent.main import run as run_agent

    try:
        status = run_agent(config_path, log_level=log_level)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(status)
