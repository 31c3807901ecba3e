"""``opendeploy``: run the server, manage users and keys, and (soon) deploy."""

from __future__ import annotations

import click

from opendeploy import __version__
from opendeploy.cli.admin import admin
from opendeploy.cli.agent import agent
from opendeploy.cli.push import push
from opendeploy.cli.server import db, server

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="opendeploy")
def cli() -> None:
    """OpenDeploy: self-hosted deployments that speak the AWS CodeDeploy API."""


cli.add_command(server)
cli.add_command(db)
cli.add_command(admin)
cli.add_command(agent)
cli.add_command(push)


def main() -> None:
    cli(prog_name="opendeploy")
