"""``opendeploy applications``, ``opendeploy groups`` and ``opendeploy instances``: tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.remote import Remote, tag_filters_of
from opendeploy.cli.render import (
    EXIT_CODES,
    OUTPUT,
    emit_json,
    jsonable,
    make_console,
    status_text,
)
from opendeploy.core.targeting import matches_any, matches_tag_set

__all__ = [
    "applications",
    "describe_filters",
    "groups",
    "instances",
    "matching_instances",
    "parse_tag_filters",
]


def _when(value: Any) -> str:
    if hasattr(value, "astimezone"):
        return str(value.astimezone().strftime("%Y-%m-%d %H:%M"))
    return ""


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(tag["Key"]): str(tag.get("Value") or "") for tag in instance.get("tags") or []}


def describe_filter(tag_filter: Mapping[str, Any]) -> str:
    kind = tag_filter.get("Type") or "KEY_AND_VALUE"
    if kind == "KEY_ONLY":
        return f"{tag_filter.get('Key')}=*"
    if kind == "VALUE_ONLY":
        return f"*={tag_filter.get('Value')}"
    return f"{tag_filter.get('Key')}={tag_filter.get('Value')}"


def describe_filters(group: Mapping[str, Any]) -> str:
    """A group's targeting in one line: ``env=prod or role=web``; tag sets: ``(a) and (b)``."""
    filters, tag_set = tag_filters_of(group)
    if filters:
        return " or ".join(describe_filter(f) for f in filters)
    if tag_set:
        return " and ".join(
            "(" + " or ".join(describe_filter(f) for f in entry) + ")" for entry in tag_set
        )
    return "(no on-premises tag filters)"


def matching_instances(
    group: Mapping[str, Any], instances: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The registered instances a group's tag filters or tag set select (as the server does)."""
    filters, tag_set = tag_filters_of(group)
    selected = []
    for instance in instances:
        if instance.get("deregisterTime"):
            continue
        tags = tags_of(instance)
        if (filters and matches_any(tags, filters)) or (tag_set and matches_tag_set(tags, tag_set)):
            selected.append(instance)
    return selected


def parse_tag_filters(values: Sequence[str]) -> list[dict[str, str]]:
    """``KEY=VALUE`` -> KEY_AND_VALUE, ``KEY`` -> KEY_ONLY, ``=VALUE`` -> VALUE_ONLY."""
    filters = []
    for value in values:
        key, separator, item = value.partition("=")
        if not separator:
            filters.append({"Key": key, "Type": "KEY_ONLY"})
        elif not key:
            filters.append({"Value": item, "Type": "VALUE_ONLY"})
        else:
            filters.append({"Key": key, "Value": item, "Type": "KEY_AND_VALUE"})
    return filters


@click.command(epilog=EXIT_CODES)
@ENDPOINT
@REGION
@OUTPUT
def applications(endpoint: str, region: str, output: str) -> None:
    """List applications."""
    remote = Remote(endpoint, region)
    names: list[str] = []
    token = None
    while True:
        page = remote.call(
            remote.codedeploy.list_applications, **({"nextToken": token} if token else {})
        )
        names.extend(page.get("applications") or [])
        token = page.get("nextToken")
        if not token:
            break
    infos: list[dict[str, Any]] = []
    for start in range(0, len(names), 100):
        page = remote.call(
            remote.codedeploy.batch_get_applications, applicationNames=names[start : start + 100]
        )
        infos.extend(page.get("applicationsInfo") or [])
    infos.sort(key=lambda info: str(info.get("applicationName")))
    counts = {
        str(info["applicationName"]): len(remote.group_names(info["applicationName"]))
        for info in infos
    }
    if output == "json":
        emit_json(
            {
                "applications": [
                    {**jsonable(info), "deploymentGroupCount": counts[info["applicationName"]]}
                    for info in infos
                ]
            }
        )
        return
    console = make_console()
    if not infos:
        console.print(
            "no applications yet: create one with `aws deploy create-application` "
            "or run `opendeploy demo`",
            style="dim",
        )
        return
    table = _table("Application", "Platform", "Groups", "Created")
    for info in infos:
        name = str(info["applicationName"])
        table.add_row(
            name, str(info.get("computePlatform")), str(counts[name]), _when(info.get("createTime"))
        )
    console.print(table)


@click.command(epilog=EXIT_CODES, short_help="List an application's deployment groups.")
@click.option("--application", "-a", required=True, help="The application.")
@ENDPOINT
@REGION
@OUTPUT
def groups(application: str, endpoint: str, region: str, output: str) -> None:
    """List an application's deployment groups: targets, config and latest deployment."""
    remote = Remote(endpoint, region)
    names = remote.group_names(application)
    infos: list[dict[str, Any]] = []
    for start in range(0, len(names), 100):
        page = remote.call(
            remote.codedeploy.batch_get_deployment_groups,
            applicationName=application,
            deploymentGroupNames=names[start : start + 100],
        )
        infos.extend(page.get("deploymentGroupsInfo") or [])
    infos.sort(key=lambda info: str(info.get("deploymentGroupName")))
    every = remote.instances()
    latest_ids: dict[str, str] = {}
    for info in infos:
        ids = remote.deployment_ids(
            application=application, group=str(info["deploymentGroupName"]), limit=1
        )
        if ids:
            latest_ids[str(info["deploymentGroupName"])] = ids[0]
    latest = {d["deploymentId"]: d for d in remote.deployments(list(latest_ids.values()))}
    rows = []
    for info in infos:
        name = str(info["deploymentGroupName"])
        hosts = [str(i["instanceName"]) for i in matching_instances(info, every)]
        last = latest.get(latest_ids.get(name, ""))
        rows.append((info, hosts, last))
    if output == "json":
        emit_json(
            {
                "deploymentGroups": [
                    {
                        **jsonable(info),
                        "matchingInstances": hosts,
                        "latestDeployment": (
                            {"deploymentId": last["deploymentId"], "status": last["status"]}
                            if last
                            else None
                        ),
                    }
                    for info, hosts, last in rows
                ]
            }
        )
        return
    console = make_console()
    if not rows:
        console.print(f"{application} has no deployment groups", style="dim")
        return
    table = _table("Group", "Config", "Targets", "Hosts", "Auto rollback", "Latest deployment")
    for info, hosts, last in rows:
        rollback = info.get("autoRollbackConfiguration") or {}
        latest_text = Text("none", style="dim")
        if last:
            latest_text = Text(f"{last['deploymentId']} ").append_text(
                status_text(str(last["status"]))
            )
        table.add_row(
            str(info["deploymentGroupName"]),
            str(info.get("deploymentConfigName", "")).removeprefix("CodeDeployDefault."),
            describe_filters(info),
            str(len(hosts)),
            ", ".join(rollback.get("events") or []) if rollback.get("enabled") else "off",
            latest_text,
        )
    console.print(table)


@click.command(epilog=EXIT_CODES, short_help="List the registered hosts and their tags.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only instances with this tag (KEY alone: any value); repeat: any of them.",
)
@click.option("--all", "show_all", is_flag=True, help="Include deregistered instances.")
@ENDPOINT
@REGION
@OUTPUT
def instances(
    tags: tuple[str, ...], show_all: bool, endpoint: str, region: str, output: str
) -> None:
    """List the registered hosts (on-premises instances) and their tags."""
    remote = Remote(endpoint, region)
    infos = remote.instances(tag_filters=parse_tag_filters(tags), registered_only=not show_all)
    if output == "json":
        emit_json({"instances": jsonable(infos)})
        return
    console = make_console()
    if not infos:
        console.print(
            "no instances"
            + (" with these tags" if tags else "")
            + "; register a host with `opendeploy agent register`",
            style="dim",
        )
        return
    table = _table("Instance", "Tags", "Registered", "Identity")
    for info in infos:
        tag_text = ", ".join(f"{k}={v}" for k, v in sorted(tags_of(info).items()))
        registered = _when(info.get("registerTime"))
        if info.get("deregisterTime"):
            registered = f"deregistered {_when(info.get('deregisterTime'))}"
        table.add_row(
            str(info.get("instanceName")),
            tag_text,
            registered,
            str(info.get("iamUserArn") or info.get("iamSessionArn") or ""),
        )
    console.print(table)
