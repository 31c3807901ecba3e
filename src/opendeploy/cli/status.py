"""``opendeploy status``, ``opendeploy list`` and ``opendeploy stop``."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.deploy import finish, follow
from opendeploy.cli.remote import ACTIVE_STATUSES, TERMINAL_STATUSES, Remote, describe_client_error
from opendeploy.cli.render import (
    EXIT_CODES,
    OUTPUT,
    emit_json,
    format_duration,
    jsonable,
    make_console,
    revision_text,
    seconds_between,
    status_text,
)

__all__ = ["list_deployments", "status", "stop"]

_STATUSES = ("Created", "Queued", "InProgress", "Baking", "Ready", "Succeeded", "Failed", "Stopped")


@click.command(epilog=EXIT_CODES, short_help="Show a deployment: hosts x events, failures.")
@click.argument("deployment_id", metavar="ID")
@click.option("--watch", "-w", is_flag=True, help="Follow it live until it ends.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --watch: give up after this long (exit code 5).",
)
@click.option(
    "--log-lines",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="Lines of a failed script's log to show.",
)
@ENDPOINT
@REGION
@OUTPUT
def status(
    deployment_id: str,
    watch: bool,
    timeout: float | None,
    log_lines: int,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """Show deployment ID: every host's lifecycle events, and why it failed if it did.

    Exits with the deployment's outcome (0 also while it is still running, unless --watch).
    """
    console = make_console()
    remote = Remote(endpoint, region)
    if watch:
        raise SystemExit(
            follow(
                remote,
                deployment_id,
                console=console,
                output=output,
                timeout=timeout,
                log_lines=log_lines,
            )
        )
    snapshot = remote.snapshot(deployment_id)
    code = finish(
        remote,
        snapshot,
        console=console,
        output=output,
        log_lines=log_lines,
        show_view=True,
    )
    raise SystemExit(code)


@click.command("list", epilog=EXIT_CODES)
@click.option("--application", "-a", default=None, help="Only this application's deployments.")
@click.option(
    "--deployment-group",
    "-g",
    "group",
    default=None,
    help="Only this group's deployments (needs --application).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUSES),
    help="Only deployments in this status (repeat for several).",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many deployments, newest first.",
)
@ENDPOINT
@REGION
@OUTPUT
def list_deployments(
    application: str | None,
    group: str | None,
    statuses: tuple[str, ...],
    limit: int,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """List deployments, newest first."""
    if group and not application:
        raise click.UsageError("--deployment-group needs --application")
    remote = Remote(endpoint, region)
    if application and not group:
        ids: list[str] = []
        for name in remote.group_names(application):
            ids.extend(
                remote.deployment_ids(
                    application=application, group=name, statuses=list(statuses), limit=limit
                )
            )
    else:
        ids = remote.deployment_ids(
            application=application, group=group, statuses=list(statuses), limit=limit
        )
    infos = remote.deployments(ids)
    infos.sort(key=lambda info: _timestamp(info.get("createTime")), reverse=True)
    infos = infos[:limit]
    if output == "json":
        emit_json({"deployments": jsonable(infos)})
        return
    console = make_console()
    if not infos:
        console.print("no deployments", style="dim")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("Deployment", "Application", "Group", "Status", "Hosts", "Created", "Took"):
        table.add_column(column, no_wrap=True)
    table.add_column("Revision / error")
    for info in infos:
        overview = info.get("deploymentOverview") or {}
        total = sum(int(v or 0) for v in overview.values())
        ok = int(overview.get("Succeeded") or 0)
        failed = int(overview.get("Failed") or 0)
        hosts = Text(f"{ok}/{total}")
        if failed:
            hosts.append(f" ({failed} failed)", style="red")
        error = info.get("errorInformation") or {}
        detail = (
            Text(str(error.get("code")), style="red")
            if error
            else Text(revision_text(info.get("revision")), style="dim")
        )
        took = seconds_between(
            info.get("startTime") or info.get("createTime"),
            info.get("completeTime"),
            now=time.time() if info.get("status") not in TERMINAL_STATUSES else None,
        )
        table.add_row(
            str(info.get("deploymentId")),
            str(info.get("applicationName")),
            str(info.get("deploymentGroupName")),
            status_text(str(info.get("status"))),
            hosts,
            _when(info.get("createTime")),
            format_duration(took),
            detail,
        )
    console.print(table)


def _timestamp(value: Any) -> float:
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value or 0)


def _when(value: Any) -> str:
    if hasattr(value, "astimezone"):
        return str(value.astimezone().strftime("%Y-%m-%d %H:%M:%S"))
    return ""


@click.command(epilog=EXIT_CODES, short_help="Stop a running deployment.")
@click.argument("deployment_id", metavar="ID")
@click.option(
    "--wait",
    "-w",
    is_flag=True,
    help="Wait until the commands already running on hosts finish and it is Stopped.",
)
@ENDPOINT
@REGION
@OUTPUT
def stop(deployment_id: str, wait: bool, endpoint: str, region: str, output: str) -> None:
    """Stop deployment ID: no new lifecycle events start; running ones finish.

    Hosts keep whatever the deployment got done on them; roll back with
    `opendeploy rollback ID`.
    """
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    remote = Remote(endpoint, region)
    console = make_console()
    try:
        result = remote.codedeploy_once.stop_deployment(deploymentId=deployment_id)
    except (ClientError, BotoCoreError) as error:
        if remote.error_code(error) == "DeploymentAlreadyCompletedException":
            info = remote.deployment(deployment_id)
            message = f"{deployment_id} already ended: {info.get('status')}"
            if output == "json":
                emit_json({"deploymentId": deployment_id, "status": info.get("status")})
                raise SystemExit(0) from None
            console.print(message)
            raise SystemExit(0) from None
        raise click.ClickException(describe_client_error(error, remote.endpoint)) from error
    final: dict[str, Any] | None = None
    if wait:
        while True:
            final = remote.deployment(deployment_id)
            if final.get("status") not in ACTIVE_STATUSES:
                break
            time.sleep(0.5)
    if output == "json":
        document: dict[str, Any] = {
            "deploymentId": deployment_id,
            "stopStatus": result.get("status"),
            "statusMessage": result.get("statusMessage"),
        }
        if final is not None:
            document["status"] = final.get("status")
        emit_json(document)
        return
    console.print(
        f"{deployment_id}: stop {result.get('status')}. {result.get('statusMessage', '')}"
    )
    if final is not None:
        console.print(Text(f"{deployment_id} is ").append_text(status_text(str(final["status"]))))
