"""``opendeploy``: run the server and agents, deploy, watch, roll back, run locally."""

from __future__ import annotations

import click

from opendeploy import __version__
from opendeploy.cli.admin import admin
from opendeploy.cli.agent import agent
from opendeploy.cli.demo import demo
from opendeploy.cli.deploy import deploy
from opendeploy.cli.local import local
from opendeploy.cli.logs import logs
from opendeploy.cli.plan import plan
from opendeploy.cli.push import push
from opendeploy.cli.render import EXIT_CODES
from opendeploy.cli.rollback import rollback
from opendeploy.cli.server import db, server
from opendeploy.cli.status import list_deployments, status, stop
from opendeploy.cli.tables import applications, groups, instances

__all__ = ["cli", "main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="opendeploy")
def cli() -> None:
    """OpenDeploy: self-hosted deployments that speak the AWS CodeDeploy API.

    New here? Run `opendeploy demo`: a server, five local hosts and a sample app, no setup.

    Client commands find the server with --endpoint or OPENDEPLOY_ENDPOINT, and credentials
    the AWS way: AWS_SHARED_CREDENTIALS_FILE (e.g. the server's <data-dir>/admin-credentials),
    AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. Every one takes --output json.
    """


for command in (
    demo,
    deploy,
    status,
    list_deployments,
    logs,
    stop,
    rollback,
    plan,
    local,
    push,
    applications,
    groups,
    instances,
    server,
    db,
    admin,
    agent,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="opendeploy")
