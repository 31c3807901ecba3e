"""``opendeploy agent register`` and ``opendeploy agent run``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["agent"]


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


def _parse_hook_environment(values: tuple[str, ...]) -> dict[str, str]:
    from opendeploy.agent.config import ConfigError, validate_hook_environment

    try:
        return validate_hook_environment(
            dict(_parse_pairs(values, "--hook-env")), file="--hook-env"
        )
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--hook-env") from None


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

    from opendeploy.agent.config import write_config
    from opendeploy.agent.registration import (
        Registration,
        RegistrationError,
        fetch_signer_certificate,
        register_host,
    )

    endpoint = endpoint.rstrip("/")
    parsed_tags = dict(_parse_pairs(tags, "--tag"))
    hook_environment = _parse_hook_environment(hook_env)
    if config_path.exists() and not force:
        raise click.ClickException(
            f"{config_path} exists; pass --force to overwrite it (its key would be lost)"
        )
    if not root.is_absolute() or not destination_root.is_absolute():
        raise click.ClickException("--root and --destination-root must be absolute paths")
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
    registration = Registration(
        endpoint=endpoint,
        instance_name=instance_name,
        root=root,
        destination_root=destination_root,
        region=region,
        tags=parsed_tags,
        hook_environment=hook_environment,
        ca_bundle=ca_bundle,
    )
    try:
        certificate = fetch_signer_certificate(endpoint, ca_bundle)
        config = register_host(
            session.client("iam", **options),
            session.client("codedeploy", **options),
            registration,
            certificate=certificate,
            report=click.echo,
        )
        write_config(config_path, config)
    except (RegistrationError, OSError) as error:
        raise click.ClickException(str(error)) from None
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
