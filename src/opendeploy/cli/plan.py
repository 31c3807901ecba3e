"""``opendeploy plan``: what a deployment would do, deploying nothing.

Targets are resolved from the group's tag filters (or tag set) exactly as the server resolves
them, ordered and batched with the same core rollout rules the server's engine uses
(``core.rollout``), with each host's standing derived from the group's earlier deployments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.deploy import parse_revision
from opendeploy.cli.remote import Remote
from opendeploy.cli.render import (
    EXIT_CODES,
    OUTPUT,
    emit_json,
    jsonable,
    make_console,
    revision_text,
)
from opendeploy.cli.tables import describe_filters, matching_instances
from opendeploy.core.lifecycle import LAST_REVISION_EVENTS, events_for
from opendeploy.core.revisions import revision_identity, with_sha256
from opendeploy.core.rollout import (
    ZONE_MINIMUM_DEFAULT,
    MinimumHealthyHosts,
    RolloutState,
    Standing,
    StartFailure,
    Target,
    batch_size,
    check_start,
    minimum_healthy,
    next_dispatch,
    standing,
    start_rollout,
)

__all__ = ["Plan", "make_plan", "plan"]

_HISTORY: Final = 25
_STANDING_TEXT: Final[Mapping[Standing, str]] = {
    Standing.UNHEALTHY: "never deployed here, or its last deployment failed (goes first)",
    Standing.REVISION_UNKNOWN: "healthy, revision unknown",
    Standing.OLD_REVISION: "healthy, on an older revision",
    Standing.CURRENT_REVISION: "already on this revision (goes last)",
}
_START_TEXT: Final[Mapping[str, str]] = {
    "NO_INSTANCES": "No registered instance matches the group's tag filters: the deployment "
    "would fail at once (NO_INSTANCES).",
    "OVER_MAX_INSTANCES": "More instances match than one deployment may target "
    "(OVER_MAX_INSTANCES).",
    "HEALTH_CONSTRAINTS_INVALID": "The minimum of healthy hosts leaves no host that may be "
    "taken out of service: the deployment would fail at once (HEALTH_CONSTRAINTS_INVALID).",
}


@dataclass
class Plan:
    application: str
    group: str
    config_name: str
    minimum: MinimumHealthyHosts
    filters: str
    revision: Mapping[str, Any] | None
    revision_source: str
    targets: list[Target]
    start_failure: StartFailure | None
    batches: list[list[str]]
    events: list[dict[str, Any]]
    last_success: Mapping[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.targets)

    @property
    def m(self) -> int:
        return minimum_healthy(self.minimum, self.n)

    @property
    def b(self) -> int:
        return batch_size(self.minimum, self.n)

    @property
    def failures_to_stop(self) -> int:
        """How many failed hosts stop the deployment while others still wait (then fewer than
        M could end healthy); with M = 0 only a failure of every host fails it."""
        return self.n - self.m

    def explain_minimum(self) -> str:
        n, m, b = self.n, self.m, self.b
        kind, value = self.minimum.kind, self.minimum.value
        if kind == "MOST_CONCURRENCY":
            return (
                f"{value} host at a time (minimum healthy {n} - {value} = {m} of {n}); the first "
                "failed host stops the deployment, unless it is the last one"
            )
        if m == 0:
            return (
                f"no host has to stay healthy, so all {n} deploy at once; it succeeds if at "
                "least one host does"
            )
        if kind == "FLEET_PERCENT":
            rule = f"at least {value}% of {n} hosts (rounded up: {m}) must stay healthy"
        else:
            rule = f"at least {value} of {n} hosts must stay healthy"
        return (
            f"{rule}, so up to {b} deploy at once; once {self.failures_to_stop} host(s) have "
            "failed it stops and the hosts still waiting are skipped (unless none are left)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "application": self.application,
            "deploymentGroup": self.group,
            "deploymentConfig": {
                "name": self.config_name,
                "minimumHealthyHosts": self.minimum.to_api(),
            },
            "targetFilters": self.filters,
            "revision": jsonable(self.revision),
            "revisionSource": self.revision_source,
            "targets": [
                {"instance": t.name, "standing": t.standing.name.lower()} for t in self.targets
            ],
            "minimumHealthy": self.m,
            "atOnce": self.b,
            "failuresToStop": self.failures_to_stop,
            "explanation": self.explain_minimum(),
            "startCheck": self.start_failure,
            "batches": self.batches,
            "events": self.events,
            "lastSuccessfulDeployment": (
                self.last_success.get("deploymentId") if self.last_success else None
            ),
            "notes": self.notes,
        }


def _identity(revision: Mapping[str, Any] | None) -> str | None:
    if not revision:
        return None
    try:
        return revision_identity(with_sha256(revision))
    except (KeyError, TypeError):
        return None


def _standings(
    remote: Remote, application: str, group: str, names: Sequence[str], deploying: str | None
) -> tuple[dict[str, Standing], dict[str, Any] | None]:
    """Each host's standing from the group's recent deployments (the newest one that finished
    on the host decides), and the group's last successful deployment."""
    ids = remote.deployment_ids(application=application, group=group, limit=_HISTORY)
    infos = remote.deployments(ids)
    health: dict[str, tuple[bool, str | None]] = {}
    last_success = next((i for i in infos if i.get("status") == "Succeeded"), None)
    wanted = set(names)
    for info in infos:
        if wanted <= set(health):
            break
        identity = _identity(info.get("revision"))
        for target in remote.targets(str(info["deploymentId"])):
            name = str(target.get("targetId"))
            if (
                name in wanted
                and name not in health
                and target.get("status")
                in (
                    "Succeeded",
                    "Failed",
                )
            ):
                health[name] = (target["status"] == "Succeeded", identity)
    result = {}
    for name in names:
        if name not in health:
            result[name] = Standing.UNHEALTHY
            continue
        healthy, identity = health[name]
        result[name] = standing(healthy, identity, deploying or "")
    return result, last_success


def simulate_batches(state: RolloutState) -> list[list[str]]:
    """The waves of a rollout in which every host succeeds and takes as long as the others."""
    batches: list[list[str]] = []
    while True:
        started = next_dispatch(state)
        if not started:
            return batches
        batches.append(list(started))
        state = state.start(started)
        for name in started:
            state = state.finish(name, succeeded=True)


def _appspec_hooks(source: Path | None) -> Mapping[str, Any] | None:
    if source is None:
        return None
    from opendeploy.agent.appspec_file import read_appspec
    from opendeploy.core.errors import AppSpecError

    try:
        return read_appspec(source).hooks
    except AppSpecError as error:
        raise click.ClickException(f"{source}: {error}") from None


def _events(
    hooks: Mapping[str, Any] | None, last_success: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    events = []
    for name in events_for("IN_PLACE"):
        entry: dict[str, Any] = {"name": name}
        if name == "DownloadBundle":
            entry["runs"] = "agent"
            entry["what"] = "the agent downloads and unpacks the new revision"
        elif name == "Install":
            entry["runs"] = "agent"
            entry["what"] = "the agent copies the appspec's files into place"
        elif name in LAST_REVISION_EVENTS:
            entry["runs"] = "last successful revision"
            where = (
                f" (the group's last successful deployment: {last_success['deploymentId']}, "
                f"{revision_text(last_success.get('revision'))})"
                if last_success
                else ""
            )
            entry["what"] = (
                "scripts of the revision last installed successfully on each host"
                + where
                + "; nothing on a host that never had one"
            )
        else:
            entry["runs"] = "new revision"
            entry["what"] = "scripts of the new revision"
            if hooks is not None:
                entry["scripts"] = [
                    {"location": hook.location, "timeout": hook.timeout, "runas": hook.runas}
                    for hook in hooks.get(name, ())
                ]
        events.append(entry)
    return events


def make_plan(
    remote: Remote,
    *,
    application: str,
    group: str,
    config_name: str | None = None,
    revision: Mapping[str, Any] | None = None,
    source: Path | None = None,
) -> Plan:
    info = remote.group(application, group)
    name = config_name or str(info.get("deploymentConfigName"))
    config = remote.call(remote.codedeploy.get_deployment_config, deploymentConfigName=name)[
        "deploymentConfigInfo"
    ]
    notes: list[str] = []
    shape = config.get("minimumHealthyHosts")
    if config.get("computePlatform", "Server") != "Server" or not shape:
        raise click.ClickException(f"{name} is not a deployment configuration for servers")
    minimum = MinimumHealthyHosts.from_api(shape)
    zonal = config.get("zonalConfig")
    zone_minimum = None
    if zonal:
        per_zone = zonal.get("minimumHealthyHostsPerZone")
        zone_minimum = MinimumHealthyHosts.from_api(per_zone) if per_zone else ZONE_MINIMUM_DEFAULT
        notes.append("zonal config: on-premises hosts have no zone, so they form one zone")
    if revision is not None:
        revision_source = "given"
    elif source is not None:
        revision_source = f"the directory {source} (not pushed yet)"
    elif info.get("targetRevision"):
        revision = info["targetRevision"]
        revision_source = "the group's target revision (what `deploy` without a revision uses)"
    else:
        revision_source = "none: give --revision or --source"
    selected = matching_instances(info, remote.instances())
    names = sorted(str(i["instanceName"]) for i in selected)
    deploying = _identity(revision) if revision is not None else None
    standings, last_success = _standings(remote, application, group, names, deploying)
    state = start_rollout(
        minimum,
        (Target(n, standings[n]) for n in names),
        zone_minimum=zone_minimum,
    )
    start_failure = check_start(
        minimum,
        len(names),
        zone_sizes=[len(names)] if zone_minimum and names else (),
        zone_minimum=zone_minimum,
    )
    batches = simulate_batches(state) if start_failure is None else []
    return Plan(
        application=application,
        group=group,
        config_name=name,
        minimum=minimum,
        filters=describe_filters(info),
        revision=revision,
        revision_source=revision_source,
        targets=list(state.plan),
        start_failure=start_failure,
        batches=batches,
        events=_events(_appspec_hooks(source), last_success),
        last_success=last_success,
        notes=notes,
    )


def print_plan(console: Console, result: Plan) -> None:
    title = Text()
    title.append(f"Plan for {result.application} / {result.group}", style="bold")
    title.append("  (nothing is deployed)", style="dim")
    console.print(title)
    console.print(f"  targets:  {result.filters}: {result.n} registered host(s) match")
    console.print(
        f"  revision: {revision_text(result.revision)}  [dim]({result.revision_source})[/dim]"
    )
    console.print(f"  config:   {result.config_name}")
    if result.n:
        console.print(f"            {result.explain_minimum()}")
    for note in result.notes:
        console.print(f"  note:     {note}", style="dim")
    console.print()
    if result.start_failure is not None:
        console.print(
            f"✗ start check: {result.start_failure}. {_START_TEXT[result.start_failure]}",
            style="bold red",
        )
        if result.start_failure == "HEALTH_CONSTRAINTS_INVALID":
            console.print(
                f"  With {result.n} host(s), {result.config_name} needs {result.m} healthy at "
                "all times, so none may start. Add hosts or use a config with a lower minimum "
                "(e.g. CodeDeployDefault.AllAtOnce or OneAtATime).",
                style="red",
            )
    else:
        console.print("✓ start check passed", style="green")
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("Batch")
        table.add_column("Hosts (in dispatch order)")
        table.add_column("At once", justify="right")
        for index, batch in enumerate(result.batches, 1):
            table.add_row(str(index), ", ".join(batch), str(len(batch)))
        console.print(table)
        console.print(
            "  batches assume every host succeeds and takes as long as the others; the server "
            "starts the next host as soon as one finishes",
            style="dim",
        )
        unhealthy = [t.name for t in result.targets if t.standing is Standing.UNHEALTHY]
        if unhealthy:
            console.print(
                f"  first: {', '.join(unhealthy)} ({_STANDING_TEXT[Standing.UNHEALTHY]})",
                style="dim",
            )
    console.print()
    console.print(Text("Lifecycle events on each host, in order:", style="bold"))
    for index, event in enumerate(result.events, 1):
        line = Text(f"  {index}. {event['name']:<17} ")
        line.append(event["what"], style="dim")
        console.print(line)
        for script in event.get("scripts") or []:
            extra = f" as {script['runas']}" if script.get("runas") else ""
            console.print(f"       - {script['location']} (timeout {script['timeout']} s{extra})")
        if "scripts" in event and not event["scripts"]:
            console.print("       (no scripts)", style="dim")


@click.command(epilog=EXIT_CODES, short_help="What a deployment would do (targets, batches).")
@click.option("--application", "-a", required=True, help="The application.")
@click.option("--deployment-group", "-g", "group", required=True, help="The deployment group.")
@click.option(
    "--config",
    "-c",
    "config_name",
    default=None,
    help="Plan with this deployment configuration instead of the group's.",
)
@click.option(
    "--revision",
    default=None,
    metavar="JSON|@FILE",
    help="The revision to plan for (hosts already on it go last).",
)
@click.option(
    "--source",
    "-s",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A bundle directory: its appspec is validated and its scripts listed per event.",
)
@ENDPOINT
@REGION
@OUTPUT
def plan(
    application: str,
    group: str,
    config_name: str | None,
    revision: str | None,
    source: Path | None,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """Show what a deployment to a group would do, deploying nothing: the hosts its tag
    filters select, the batches and minimum-healthy rule of its config, the start check, and
    the lifecycle events with whose scripts each one runs.

    Exits 0 when the deployment could start, 3 when its start check would fail it.
    """
    remote = Remote(endpoint, region)
    result = make_plan(
        remote,
        application=application,
        group=group,
        config_name=config_name,
        revision=parse_revision(revision) if revision else None,
        source=source,
    )
    if output == "json":
        emit_json(result.to_json())
    else:
        print_plan(make_console(), result)
    raise SystemExit(0 if result.start_failure is None else 3)
