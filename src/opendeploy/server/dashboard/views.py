"""What each dashboard page shows, gathered through the same service functions as the API.

Framework-free and synchronous: the routes run these in a worker thread. Every value is an
API-shaped dict (or a small dataclass around them), so the templates read the same member
names a boto3 user knows. The one read outside a List/Get use case is the live grid's
(``deployment_view``): the deployment and its targets in one transaction, shaped by the
service's own ``deployment_info``. Every change goes through a service use case.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opendeploy.core.deployments import (
    ACTIVE_DEPLOYMENT_STATUSES,
    DeploymentStatus,
    InstanceTarget,
)
from opendeploy.core.errors import ServiceError
from opendeploy.core.targeting import matches_any, matches_tag_set
from opendeploy.server.service import applications, configs, deployments, groups, instances
from opendeploy.server.service.context import ServiceContext
from opendeploy.store import deployments as deployment_store

__all__ = [
    "DEPLOYMENT_STATUSES",
    "LOG_DISPLAY_LIMIT",
    "DeploymentView",
    "HistoryFilters",
    "application_page",
    "deployment_view",
    "event_log",
    "history_page",
    "home_page",
    "last_good_deployment",
    "rollback",
    "stop",
]

DEPLOYMENT_STATUSES = [status.value for status in DeploymentStatus]
_ACTIVE = {status.value for status in ACTIVE_DEPLOYMENT_STATUSES}
#: The end of a log shown in the page; the whole of it is one click away as plain text.
LOG_DISPLAY_LIMIT = 256 * 1024
#: Deployments in a group card, and on the first page.
RECENT = 5
HISTORY_PAGE = 50
_BATCH = 100


def _pages(call: Any, ctx: ServiceContext, params: dict[str, Any], member: str) -> Iterator[Any]:
    """Every item of a paged List operation."""
    token: str | None = None
    while True:
        page = call(ctx, {**params, **({"nextToken": token} if token else {})})
        yield from page.get(member) or []
        token = page.get("nextToken")
        if not token:
            return


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _deployment_infos(ctx: ServiceContext, ids: Sequence[str]) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    for chunk in _chunks(ids, _BATCH):
        found = deployments.batch_get_deployments(ctx, {"deploymentIds": chunk})
        infos += found["deploymentsInfo"]
    return infos


def _recent(ctx: ServiceContext, params: dict[str, Any], count: int) -> list[dict[str, Any]]:
    ids = deployments.list_deployments(ctx, params)["deployments"][:count]
    return _deployment_infos(ctx, ids)


# -- applications ------------------------------------------------------------------------------


def home_page(ctx: ServiceContext) -> dict[str, Any]:
    """Every application with its group count, and the latest deployments of all."""
    names = list(_pages(applications.list_applications, ctx, {}, "applications"))
    apps: list[dict[str, Any]] = []
    for chunk in _chunks(names, _BATCH):
        apps += applications.batch_get_applications(ctx, {"applicationNames": chunk})[
            "applicationsInfo"
        ]
    for app in apps:
        app["groups"] = list(
            _pages(
                groups.list_deployment_groups,
                ctx,
                {"applicationName": app["applicationName"]},
                "deploymentGroups",
            )
        )
    return {"applications": apps, "recent": _recent(ctx, {}, 10)}


@dataclass
class GroupCard:
    info: dict[str, Any]
    config: dict[str, Any] | None
    targets: list[dict[str, Any]]
    recent: list[dict[str, Any]]


def _registered_instances(ctx: ServiceContext) -> list[dict[str, Any]]:
    names = list(
        _pages(
            instances.list_on_premises_instances,
            ctx,
            {"registrationStatus": "Registered"},
            "instanceNames",
        )
    )
    found: list[dict[str, Any]] = []
    for chunk in _chunks(names, _BATCH):
        found += instances.batch_get_on_premises_instances(ctx, {"instanceNames": chunk})[
            "instanceInfos"
        ]
    for instance in found:
        instance["tagMap"] = {tag["Key"]: tag.get("Value") or "" for tag in instance["tags"]}
    return found


def _targets_of(group: Mapping[str, Any], every: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registered instances the group's tag filters or tag set select (as deployments do)."""
    filters = group.get("onPremisesInstanceTagFilters") or []
    tag_set = (group.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
    if not filters and not tag_set:
        return []
    return [
        instance
        for instance in every
        if (filters and matches_any(instance["tagMap"], filters))
        or (tag_set and matches_tag_set(instance["tagMap"], tag_set))
    ]


def application_page(ctx: ServiceContext, name: str) -> dict[str, Any]:
    app = applications.get_application(ctx, {"applicationName": name})["application"]
    group_names = list(
        _pages(groups.list_deployment_groups, ctx, {"applicationName": name}, "deploymentGroups")
    )
    infos: list[dict[str, Any]] = []
    for chunk in _chunks(group_names, _BATCH):
        infos += groups.batch_get_deployment_groups(
            ctx, {"applicationName": name, "deploymentGroupNames": chunk}
        )["deploymentGroupsInfo"]
    every = _registered_instances(ctx) if infos else []
    config_cache: dict[str, dict[str, Any] | None] = {}
    cards = []
    for info in infos:
        config_name = info["deploymentConfigName"]
        if config_name not in config_cache:
            try:
                config_cache[config_name] = configs.get_deployment_config(
                    ctx, {"deploymentConfigName": config_name}
                )["deploymentConfigInfo"]
            except ServiceError:
                config_cache[config_name] = None
        cards.append(
            GroupCard(
                info=info,
                config=config_cache[config_name],
                targets=_targets_of(info, every),
                recent=_recent(
                    ctx,
                    {"applicationName": name, "deploymentGroupName": info["deploymentGroupName"]},
                    RECENT,
                ),
            )
        )
    return {"application": app, "groups": cards}


# -- one deployment ----------------------------------------------------------------------------


@dataclass
class DeploymentView:
    info: dict[str, Any]
    #: Instance targets in dispatch order, each with ``lifecycleEvents``.
    targets: list[dict[str, Any]]
    #: The lifecycle event names, in order: the grid's columns.
    events: list[str]
    #: For a finished deployment: the earlier Succeeded deployment of its group, if any.
    rollback_to: dict[str, Any] | None = None
    now: float = 0.0

    @property
    def active(self) -> bool:
        return self.info["status"] in _ACTIVE

    @property
    def failures(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(target, event)`` for every failed event, to name them above the grid."""
        return [
            (target, event)
            for target in self.targets
            for event in target["lifecycleEvents"]
            if event["status"] == "Failed"
        ]


def _target_shape(target: InstanceTarget) -> dict[str, Any]:
    """An ``InstanceTarget`` as the API shows it, with its events also by name."""
    events = [event.to_api() for event in target.events]
    return {
        "deploymentId": target.deployment_id,
        "targetId": target.instance_name,
        "status": target.status.value,
        "lastUpdatedAt": target.last_updated,
        "lifecycleEvents": events,
        "eventMap": {event["lifecycleEventName"]: event for event in events},
    }


def last_good_deployment(ctx: ServiceContext, info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The latest Succeeded deployment of ``info``'s group created before it."""
    params = {
        "applicationName": info["applicationName"],
        "deploymentGroupName": info["deploymentGroupName"],
        "includeOnlyStatuses": ["Succeeded"],
        "createTimeRange": {"end": info["createTime"]},
    }
    try:
        ids = [
            deployment_id
            for deployment_id in deployments.list_deployments(ctx, params)["deployments"]
            if deployment_id != info["deploymentId"]
        ]
    except ServiceError:  # the application or group is gone
        return None
    for candidate in _deployment_infos(ctx, ids[:10]):
        if candidate["createTime"] <= info["createTime"]:
            return candidate
    return None


def deployment_view(ctx: ServiceContext, deployment_id: str) -> DeploymentView:
    """The deployment and all its targets, read in one transaction: the live grid asks for
    this every second, so it costs one query of the targets whatever the fleet's size (the
    API's BatchGetDeploymentTargets would take one call per 25 hosts)."""
    with ctx.db.read() as connection:
        deployment = deployments.require_deployment(connection, deployment_id)
        stored = deployment_store.targets_of(connection, deployment_id)
    info = deployments.deployment_info(deployment, deployments.overview_of(stored))
    targets = [_target_shape(target) for target in sorted(stored, key=lambda t: t.position)]
    events: list[str] = []
    for target in targets:
        for event in target["lifecycleEvents"]:
            if event["lifecycleEventName"] not in events:
                events.append(event["lifecycleEventName"])
    view = DeploymentView(info=info, targets=targets, events=events, now=ctx.clock())
    if not view.active:
        view.rollback_to = last_good_deployment(ctx, info)
    return view


def event_log(
    ctx: ServiceContext, deployment_id: str, target_id: str, event_name: str
) -> dict[str, Any]:
    """One lifecycle event of one target: its status, times, diagnostics and full log."""
    target = deployments.get_deployment_target(
        ctx, {"deploymentId": deployment_id, "targetId": target_id}
    )["deploymentTarget"]["instanceTarget"]
    event = next(
        (e for e in target["lifecycleEvents"] if e["lifecycleEventName"] == event_name), None
    )
    if event is None:
        raise ServiceError(
            "LifecycleEventDoesNotExistException",
            f"{event_name!r} is not a lifecycle event of this deployment.",
        )
    log = deployments.get_lifecycle_event_log(
        ctx,
        {"deploymentId": deployment_id, "targetId": target_id, "lifecycleEventName": event_name},
    )
    text: str = log["log"]
    truncated = len(text) > LOG_DISPLAY_LIMIT
    return {
        "deploymentId": deployment_id,
        "target": target,
        "event": event,
        "log": text[-LOG_DISPLAY_LIMIT:] if truncated else text,
        "full_log": text,
        "size": log["size"],
        "truncated": truncated,
        "now": ctx.clock(),
    }


# -- history -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryFilters:
    statuses: tuple[str, ...] = ()
    #: ``application/group`` (names never hold a slash), or empty for every group.
    group: str = ""
    #: ``YYYY-MM-DDTHH:MM`` in UTC, as a datetime-local input sends it.
    start: str = ""
    end: str = ""
    next_token: str = ""

    @property
    def application_and_group(self) -> tuple[str, str] | None:
        if "/" not in self.group:
            return None
        application, _, group = self.group.partition("/")
        return application, group

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.statuses:
            params["includeOnlyStatuses"] = list(self.statuses)
        pair = self.application_and_group
        if pair is not None:
            params["applicationName"], params["deploymentGroupName"] = pair
        time_range = {
            key: stamp
            for key, value in (("start", self.start), ("end", self.end))
            if (stamp := parse_utc_minute(value, end=key == "end")) is not None
        }
        if time_range:
            params["createTimeRange"] = time_range
        if self.next_token:
            params["nextToken"] = self.next_token
        return params

    def query(self, **changes: Any) -> list[tuple[str, str]]:
        """The query string items of these filters (with ``changes``), for links."""
        filters = replace(self, **changes)
        items = [("status", status) for status in filters.statuses]
        items += [
            (key, value)
            for key, value in (
                ("group", filters.group),
                ("start", filters.start),
                ("end", filters.end),
                ("next", filters.next_token),
            )
            if value
        ]
        return items


def parse_utc_minute(value: str, *, end: bool = False) -> float | None:
    """Epoch seconds of a ``YYYY-MM-DDTHH:MM`` (or a date alone) read as UTC; the end of a
    range covers its whole minute (or day). None when empty; ValueError when malformed."""
    if not value:
        return None
    if len(value) == 10:
        day = dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        return day.timestamp() + (86400 - 0.001 if end else 0)
    moment = dt.datetime.strptime(value[:16], "%Y-%m-%dT%H:%M").replace(tzinfo=dt.UTC)
    return moment.timestamp() + (60 - 0.001 if end else 0)


def history_page(ctx: ServiceContext, filters: HistoryFilters) -> dict[str, Any]:
    page = deployments.list_deployments(replace(ctx, page_size=HISTORY_PAGE), filters.params())
    choices: list[str] = []
    for app in _pages(applications.list_applications, ctx, {}, "applications"):
        choices += [
            f"{app}/{group}"
            for group in _pages(
                groups.list_deployment_groups, ctx, {"applicationName": app}, "deploymentGroups"
            )
        ]
    return {
        "deployments": _deployment_infos(ctx, page["deployments"]),
        "next_token": page.get("nextToken"),
        "group_choices": choices,
        "statuses": DEPLOYMENT_STATUSES,
        "now": ctx.clock(),
    }


# -- actions -----------------------------------------------------------------------------------


def stop(ctx: ServiceContext, deployment_id: str) -> dict[str, Any]:
    return deployments.stop_deployment(ctx, {"deploymentId": deployment_id})


def rollback(ctx: ServiceContext, deployment_id: str) -> str:
    """Deploy, to the deployment's group, the revision of the group's last Succeeded
    deployment before it; the new deployment's id."""
    info = deployments.get_deployment(ctx, {"deploymentId": deployment_id})["deploymentInfo"]
    if info["status"] in _ACTIVE:
        raise ServiceError(
            "DeploymentNotCompletedException",
            f"{deployment_id} is still {info['status']}: stop it before rolling back.",
        )
    good = last_good_deployment(ctx, info)
    if good is None:
        raise ServiceError(
            "InvalidOperationException",
            f"The deployment group {info['deploymentGroupName']} has no successful deployment "
            f"before {deployment_id} to roll back to.",
        )
    params: dict[str, Any] = {
        "applicationName": info["applicationName"],
        "deploymentGroupName": info["deploymentGroupName"],
        "revision": good["revision"],
        "description": f"Rollback of {deployment_id} to the revision of "
        f"{good['deploymentId']} (from the dashboard)",
    }
    if good.get("fileExistsBehavior"):
        params["fileExistsBehavior"] = good["fileExistsBehavior"]
    created = deployments.create_deployment(ctx, params)
    return str(created["deploymentId"])
