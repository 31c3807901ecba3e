"""The client side of the CLI: boto3/botocore clients for a server, errors a person can act on,
and the reads several commands share (a deployment with its targets, an event's full log).

Credentials follow the AWS conventions (environment, shared credentials file, AWS_PROFILE);
the endpoint comes from ``--endpoint`` / OPENDEPLOY_ENDPOINT.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import click

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Remote",
    "Snapshot",
    "describe_client_error",
]

TERMINAL_STATUSES: Final = frozenset({"Succeeded", "Failed", "Stopped"})
ACTIVE_STATUSES: Final = ("Created", "Queued", "InProgress", "Baking", "Ready")
_TARGET_BATCH: Final = 25
_DEPLOYMENT_BATCH: Final = 100
_CREDENTIAL_CODES: Final = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
_CREDENTIALS_HINT: Final = (
    "Set AWS_SHARED_CREDENTIALS_FILE (e.g. to the server's <data-dir>/admin-credentials), "
    "AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
)


def describe_client_error(error: BaseException, endpoint: str) -> str:
    """One or two sentences about a failed call: what the server said, and what to do."""
    from botocore.exceptions import (  # type: ignore[import-untyped]
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code") or "Error")
        message = str(details.get("Message") or "").strip()
        text = f"{code}: {message}" if message else code
        if code in _CREDENTIAL_CODES:
            text += f". The server did not accept these credentials. {_CREDENTIALS_HINT}"
        elif code in ("AccessDeniedException", "AccessDenied"):
            text += ". Your user's role does not allow this (roles: reader, deployer, admin)."
        return text
    if isinstance(error, NoCredentialsError):
        return f"No AWS credentials found. {_CREDENTIALS_HINT}"
    if isinstance(error, EndpointConnectionError | ConnectionClosedError):
        return (
            f"Cannot reach the OpenDeploy server at {endpoint}. Is it running? Point --endpoint "
            "or OPENDEPLOY_ENDPOINT at it (start one with `opendeploy server`)."
        )
    if isinstance(error, ReadTimeoutError):
        return f"The OpenDeploy server at {endpoint} did not answer in time."
    return str(error)


@dataclass
class Snapshot:
    """A deployment as the API shows it, with every instance target in dispatch order."""

    info: dict[str, Any]
    targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def deployment_id(self) -> str:
        return str(self.info.get("deploymentId", ""))

    @property
    def status(self) -> str:
        return str(self.info.get("status", "Unknown"))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def event_names(self) -> list[str]:
        names: list[str] = []
        for target in self.targets:
            for event in target.get("lifecycleEvents") or []:
                if event["lifecycleEventName"] not in names:
                    names.append(event["lifecycleEventName"])
        return names

    def target(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.targets if t.get("targetId") == name), None)


class Remote:
    """Clients for one server. ``codedeploy`` retries reads; ``codedeploy_once`` is for calls
    that must not be repeated blindly (CreateDeployment, StopDeployment)."""

    def __init__(self, endpoint: str, region: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.region = region

    def _config(self, attempts: int) -> Any:
        from botocore.config import Config  # type: ignore[import-untyped]

        return Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=10,
            read_timeout=60,
        )

    @cached_property
    def codedeploy(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            "codedeploy",
            endpoint_url=self.endpoint,
            region_name=self.region,
            config=self._config(3),
        )

    @cached_property
    def codedeploy_once(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "codedeploy",
            endpoint_url=self.endpoint,
            region_name=self.region,
            config=self._config(1),
        )

    @cached_property
    def opendeploy(self) -> Any:
        """The client of our public API extensions (GetLifecycleEventLog)."""
        import botocore.session  # type: ignore[import-untyped]

        from opendeploy.wire import DATA_PATH, PUBLIC_EXTENSIONS_SERVICE

        session = botocore.session.get_session()
        loader = session.get_component("data_loader")
        if str(DATA_PATH) not in loader.search_paths:
            loader.search_paths.append(str(DATA_PATH))
        return session.create_client(
            PUBLIC_EXTENSIONS_SERVICE,
            endpoint_url=self.endpoint,
            region_name=self.region,
            config=self._config(3),
        )

    def call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """Run one API call; a failure becomes a ClickException with a useful message."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as error:
            raise click.ClickException(describe_client_error(error, self.endpoint)) from error

    def error_code(self, error: BaseException) -> str | None:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError):
            return str(error.response.get("Error", {}).get("Code"))
        return None

    # -- deployments -------------------------------------------------------------------------

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call(
            self.codedeploy.get_deployment, deploymentId=deployment_id
        )["deploymentInfo"]
        return info

    def deployments(self, ids: list[str]) -> list[dict[str, Any]]:
        """DeploymentInfo of each id, in the order given (unknown ids are left out)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _DEPLOYMENT_BATCH):
            chunk = ids[start : start + _DEPLOYMENT_BATCH]
            page = self.call(self.codedeploy.batch_get_deployments, deploymentIds=chunk)
            for info in page.get("deploymentsInfo") or []:
                found[info["deploymentId"]] = info
        return [found[i] for i in ids if i in found]

    def targets(self, deployment_id: str) -> list[dict[str, Any]]:
        """Every instance target of a deployment (``instanceTarget`` shapes), dispatch order."""
        names: list[str] = []
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"deploymentId": deployment_id}
            if token:
                arguments["nextToken"] = token
            page = self.call(self.codedeploy.list_deployment_targets, **arguments)
            names.extend(page.get("targetIds") or [])
            token = page.get("nextToken")
            if not token:
                break
        targets: list[dict[str, Any]] = []
        for start in range(0, len(names), _TARGET_BATCH):
            page = self.call(
                self.codedeploy.batch_get_deployment_targets,
                deploymentId=deployment_id,
                targetIds=names[start : start + _TARGET_BATCH],
            )
            for entry in page.get("deploymentTargets") or []:
                target = entry.get("instanceTarget")
                if target is not None:
                    targets.append(target)
        return targets

    def snapshot(self, deployment_id: str) -> Snapshot:
        return Snapshot(self.deployment(deployment_id), self.targets(deployment_id))

    def deployment_ids(
        self,
        *,
        application: str | None = None,
        group: str | None = None,
        statuses: list[str] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Deployment ids, newest first (the server's order)."""
        ids: list[str] = []
        token: str | None = None
        while limit is None or len(ids) < limit:
            arguments: dict[str, Any] = {}
            if application and group:
                arguments.update(applicationName=application, deploymentGroupName=group)
            if statuses:
                arguments["includeOnlyStatuses"] = statuses
            if token:
                arguments["nextToken"] = token
            page = self.call(self.codedeploy.list_deployments, **arguments)
            ids.extend(page.get("deployments") or [])
            token = page.get("nextToken")
            if not token:
                break
        return ids if limit is None else ids[:limit]

    def group_names(self, application: str) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"applicationName": application}
            if token:
                arguments["nextToken"] = token
            page = self.call(self.codedeploy.list_deployment_groups, **arguments)
            names.extend(page.get("deploymentGroups") or [])
            token = page.get("nextToken")
            if not token:
                return names

    def group(self, application: str, group: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call(
            self.codedeploy.get_deployment_group,
            applicationName=application,
            deploymentGroupName=group,
        )["deploymentGroupInfo"]
        return info

    def active_deployment(self, application: str, group: str) -> str | None:
        ids = self.deployment_ids(
            application=application, group=group, statuses=list(ACTIVE_STATUSES), limit=1
        )
        return ids[0] if ids else None

    # -- instances ---------------------------------------------------------------------------

    def instances(
        self, *, tag_filters: list[dict[str, str]] | None = None, registered_only: bool = True
    ) -> list[dict[str, Any]]:
        """InstanceInfo of on-premises instances (optionally only those matching the filters)."""
        names: list[str] = []
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {}
            if registered_only:
                arguments["registrationStatus"] = "Registered"
            if tag_filters:
                arguments["tagFilters"] = tag_filters
            if token:
                arguments["nextToken"] = token
            page = self.call(self.codedeploy.list_on_premises_instances, **arguments)
            names.extend(page.get("instanceNames") or [])
            token = page.get("nextToken")
            if not token:
                break
        infos: list[dict[str, Any]] = []
        for start in range(0, len(names), 100):
            page = self.call(
                self.codedeploy.batch_get_on_premises_instances,
                instanceNames=names[start : start + 100],
            )
            infos.extend(page.get("instanceInfos") or [])
        return sorted(infos, key=lambda info: str(info.get("instanceName")))

    # -- logs --------------------------------------------------------------------------------

    def event_log(
        self, deployment_id: str, target: str, event: str, offset: int = 0
    ) -> dict[str, Any]:
        """GetLifecycleEventLog: ``{"log", "offset", "size", "status"}``."""
        result: dict[str, Any] = self.call(
            self.opendeploy.get_lifecycle_event_log,
            deploymentId=deployment_id,
            targetId=target,
            lifecycleEventName=event,
            offset=offset,
        )
        return result

    def full_log(
        self,
        deployment_id: str,
        target: str,
        event: str,
        *,
        settle: float = 0.0,
        expect_end: str | None = None,
    ) -> str | None:
        """The event's whole log, or None when the server cannot give it.

        The agent sends a hook's last chunk just after the event completes, so the log is
        read again (for at most ``settle`` seconds) until it ends with ``expect_end`` (the last
        line of the diagnostics' tail) or, without one, until it stops growing.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + settle
        last_size = -1
        while True:
            try:
                result = self.opendeploy.get_lifecycle_event_log(
                    deploymentId=deployment_id,
                    targetId=target,
                    lifecycleEventName=event,
                    offset=0,
                )
            except (ClientError, BotoCoreError):
                return None
            text = str(result.get("log") or "")
            size = int(result.get("size") or len(text))
            if expect_end:
                complete = text.rstrip("\n").endswith(expect_end)
            else:
                complete = size == last_size and size > 0
            if complete or time.monotonic() >= deadline:
                return text
            last_size = size
            time.sleep(0.2)


def chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tag_filters_of(group: Mapping[str, Any]) -> tuple[list[Any], list[list[Any]]]:
    """A group's on-premises tag filters and tag set groups."""
    filters = list(group.get("onPremisesInstanceTagFilters") or [])
    tag_set = (group.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
    return filters, [list(entry) for entry in tag_set]
