"""``opendeploy rollback``: redeploy the last revision that deployed successfully.

This is what CodeDeploy's rollback does too (a new deployment of the previous good revision),
done from the client: find the group's newest Succeeded deployment created before the one
being rolled back, and CreateDeployment with its revision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import click

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.deploy import create_deployment, follow
from opendeploy.cli.remote import ACTIVE_STATUSES, Remote
from opendeploy.cli.render import (
    EXIT_CODES,
    OUTPUT,
    emit_json,
    jsonable,
    make_console,
    revision_text,
)

__all__ = ["RollbackPlan", "find_rollback", "rollback", "start_rollback"]

_STOP_WAIT_SECONDS: Final = 300.0


@dataclass(frozen=True)
class RollbackPlan:
    application: str
    group: str
    #: The deployment being undone (None: the group had none).
    undoing: dict[str, Any] | None
    #: The successful deployment whose revision is redeployed.
    good: dict[str, Any]

    @property
    def revision(self) -> dict[str, Any]:
        return dict(self.good["revision"])

    @property
    def description(self) -> str:
        undone = self.undoing["deploymentId"] if self.undoing else "the latest deployment"
        return (
            f"Rollback of {undone}: redeploys the revision of {self.good['deploymentId']}, "
            "the last successful deployment"
        )


def _created(info: dict[str, Any]) -> float:
    value: Any = info.get("createTime")
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def find_rollback(
    remote: Remote,
    *,
    deployment_id: str | None = None,
    application: str | None = None,
    group: str | None = None,
) -> RollbackPlan:
    """What a rollback of ``deployment_id`` (or of the group's latest deployment) redeploys."""
    undoing: dict[str, Any] | None = None
    if deployment_id is not None:
        undoing = remote.deployment(deployment_id)
        application = str(undoing["applicationName"])
        group = str(undoing["deploymentGroupName"])
    if not application or not group:
        raise click.UsageError("give a deployment ID, or --application and --deployment-group")
    if undoing is None:
        latest = remote.deployment_ids(application=application, group=group, limit=1)
        if latest:
            undoing = remote.deployment(latest[0])
    succeeded = remote.deployment_ids(application=application, group=group, statuses=["Succeeded"])
    for start in range(0, len(succeeded), 25):
        for info in remote.deployments(succeeded[start : start + 25]):
            if undoing is not None and (
                info["deploymentId"] == undoing["deploymentId"]
                or _created(info) > _created(undoing)
            ):
                continue
            return RollbackPlan(application, group, undoing, info)
    what = f"before {undoing['deploymentId']} " if undoing is not None else ""
    raise click.ClickException(
        f"The deployment group {group} of {application} has no successful deployment {what}"
        "to roll back to."
    )


def start_rollback(
    remote: Remote,
    plan: RollbackPlan,
    *,
    config: str | None = None,
    ignore_application_stop_failures: bool = False,
) -> str:
    return create_deployment(
        remote,
        application=plan.application,
        group=plan.group,
        revision=plan.revision,
        config=config,
        description=plan.description,
        ignore_application_stop_failures=ignore_application_stop_failures,
    )


def _stop_and_wait(remote: Remote, deployment_id: str) -> None:
    remote.call(remote.codedeploy_once.stop_deployment, deploymentId=deployment_id)
    deadline = time.monotonic() + _STOP_WAIT_SECONDS
    while remote.deployment(deployment_id).get("status") in ACTIVE_STATUSES:
        if time.monotonic() > deadline:
            raise click.ClickException(f"{deployment_id} did not stop within 5 minutes")
        time.sleep(0.5)


@click.command(epilog=EXIT_CODES, short_help="Redeploy the last good revision.")
@click.argument("deployment_id", metavar="[ID]", required=False)
@click.option(
    "--application",
    "-a",
    default=None,
    help="With --deployment-group: roll back the group's latest deployment.",
)
@click.option("--deployment-group", "-g", "group", default=None, help="The deployment group.")
@click.option(
    "--config",
    "-c",
    "config_name",
    default=None,
    help="Deployment configuration for the rollback [default: the group's].",
)
@click.option(
    "--stop",
    "stop_first",
    is_flag=True,
    help="If the deployment is still running, stop it first (and wait for it to stop).",
)
@click.option(
    "--ignore-application-stop-failures",
    is_flag=True,
    help="Go on when the bad revision's ApplicationStop scripts fail on a host.",
)
@click.option("--wait", "-w", is_flag=True, help="Watch the rollback live; exit with its outcome.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --wait: give up watching after this long (exit code 5).",
)
@ENDPOINT
@REGION
@OUTPUT
def rollback(
    deployment_id: str | None,
    application: str | None,
    group: str | None,
    config_name: str | None,
    stop_first: bool,
    ignore_application_stop_failures: bool,
    wait: bool,
    timeout: float | None,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """Roll back deployment ID (or a group's latest deployment) by redeploying the revision
    of the last successful deployment before it.

    \b
    Examples:
      opendeploy rollback d-ABCDEF123 --wait
      opendeploy rollback -a web -g prod
    """
    if deployment_id is None and not (application and group):
        raise click.UsageError("give a deployment ID, or --application and --deployment-group")
    remote = Remote(endpoint, region)
    console = make_console()
    plan = find_rollback(remote, deployment_id=deployment_id, application=application, group=group)
    undoing = plan.undoing
    if undoing is not None and undoing.get("status") in ACTIVE_STATUSES:
        undone = undoing["deploymentId"]
        if not stop_first:
            raise click.ClickException(
                f"{undone} is still {undoing.get('status')}; stop it first "
                f"(opendeploy stop {undone} --wait) or pass --stop"
            )
        if output != "json":
            console.print(f"stopping {undone} ...")
        _stop_and_wait(remote, undone)
    if output != "json":
        console.print(
            f"rolling back {plan.group}: redeploying {revision_text(plan.revision)} "
            f"(the revision of {plan.good['deploymentId']}, the last successful deployment)"
        )
    new_id = start_rollback(
        remote,
        plan,
        config=config_name,
        ignore_application_stop_failures=ignore_application_stop_failures,
    )
    extra = {
        "rollbackOf": undoing["deploymentId"] if undoing else None,
        "revisionOf": plan.good["deploymentId"],
        "revision": jsonable(plan.revision),
    }
    if not wait:
        if output == "json":
            emit_json({"deploymentId": new_id, **extra})
        else:
            console.print(f"created deployment [bold]{new_id}[/bold]")
            console.print(f"watch it with: opendeploy status {new_id} --watch", style="dim")
        return
    if output != "json":
        console.print(f"created deployment [bold]{new_id}[/bold]")
    raise SystemExit(
        follow(remote, new_id, console=console, output=output, timeout=timeout, extra=extra)
    )
