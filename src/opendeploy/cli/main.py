"""``opendeploy``: run the server and agents, deploy, watch, roll back, run locally."""

from __future__ import annotations

import importlib

import click

from opendeploy import __version__
from opendeploy.cli.render import EXIT_CODES

__all__ = ["cli", "main"]

#: Command name -> "module:attribute". Imported when used, so that ``opendeploy agent run``
#: (a process on every host, idle for days) does not load the client commands' libraries
#: (botocore, httpx, rich): about 20 MB of memory per host.
_COMMANDS = {
    "demo": "opendeploy.cli.demo:demo",
    "deploy": "opendeploy.cli.deploy:deploy",
    "status": "opendeploy.cli.status:status",
    "list": "opendeploy.cli.status:list_deployments",
    "logs": "opendeploy.cli.logs:logs",
    "stop": "opendeploy.cli.status:stop",
    "rollback": "opendeploy.cli.rollback:rollback",
    "plan": "opendeploy.cli.plan:plan",
    "local": "opendeploy.cli.local:local",
    "push": "opendeploy.cli.push:push",
    "applications": "opendeploy.cli.tables:applications",
    "groups": "opendeploy.cli.tables:groups",
    "instances": "opendeploy.cli.tables:instances",
    "server": "opendeploy.cli.server:server",
    "db": "opendeploy.cli.server:db",
    "admin": "opendeploy.cli.admin:admin",
    "agent": "opendeploy.cli.agent:agent",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (help lists them all)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            module, _, attribute = _COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return command


@click.group(
    cls=_LazyGroup,
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


def main() -> None:
    cli(prog_name="opendeploy")
