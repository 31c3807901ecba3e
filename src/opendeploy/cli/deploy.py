"""``opendeploy deploy``: push (optionally), create a deployment, and watch it live.

The live view and the failure summary are shared with ``status --watch``, ``rollback --wait``
and ``demo``: ``follow`` watches a deployment to its end, ``finish`` prints the outcome and
returns the exit code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.remote import Remote, Snapshot, describe_client_error
from opendeploy.cli.render import (
    EXIT_CODES,
    EXIT_TIMEOUT,
    OUTPUT,
    STATUS_STYLES,
    SYMBOLS,
    Failure,
    deployment_view,
    emit_json,
    exit_code_for,
    failure_view,
    format_duration,
    jsonable,
    make_console,
    revision_text,
    seconds_between,
    tail_lines,
)

__all__ = [
    "Watch",
    "collect_failures",
    "create_deployment",
    "deploy",
    "finish",
    "follow",
    "parse_revision",
]

Mode = Literal["live", "lines", "quiet"]
POLL_INTERVAL: Final = 0.3
LOG_SETTLE_SECONDS: Final = 3.0
#: What the agent puts at the end of a tail line it shortened (agent.hooks.ScriptLog).
_TRUNCATED: Final = "characters; the whole line is in"


class Watch:
    """Polls a deployment until it ends, drawing it as it goes.

    ``live``: a Rich live grid (on a terminal); ``lines``: one line per finished event (logs,
    CI, pipes); ``quiet``: nothing (JSON output).
    """

    def __init__(
        self,
        remote: Remote,
        console: Console,
        mode: Mode,
        *,
        interval: float = POLL_INTERVAL,
        timeout: float | None = None,
    ) -> None:
        self.remote = remote
        self.console = console
        self.mode = mode
        self.interval = interval
        self.timeout = timeout
        self._seen: dict[tuple[str, str], str] = {}
        self._status = ""
        self._done = -1

    def run(self, deployment_id: str) -> tuple[Snapshot, bool]:
        """The last snapshot, and whether it ended (False: the timeout passed first)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if self.mode == "live":
            snapshot = self.remote.snapshot(deployment_id)
            self.console.soft_wrap = False  # a live region must wrap, never overflow
            try:
                with Live(
                    deployment_view(snapshot, time.time()),
                    console=self.console,
                    refresh_per_second=8,
                    transient=False,
                ) as live:
                    while not snapshot.terminal and not _passed(deadline):
                        time.sleep(self.interval)
                        snapshot = self.remote.snapshot(deployment_id)
                        live.update(deployment_view(snapshot, time.time()))
            finally:
                self.console.soft_wrap = True
            return snapshot, snapshot.terminal
        while True:
            snapshot = self.remote.snapshot(deployment_id)
            if self.mode == "lines":
                self._print_changes(snapshot)
            if snapshot.terminal or _passed(deadline):
                break
            time.sleep(self.interval)
        if self.mode == "lines":
            self.console.print()
            self.console.print(deployment_view(snapshot, time.time()))
        return snapshot, snapshot.terminal

    def _print_changes(self, snapshot: Snapshot) -> None:
        if not self._status:
            self._print_status(snapshot)
        for target in snapshot.targets:
            name = str(target.get("targetId"))
            for event in target.get("lifecycleEvents") or []:
                status = str(event.get("status"))
                key = (name, str(event["lifecycleEventName"]))
                # Finished events, once each; skipped ones are shown by the final grid.
                if status not in ("Succeeded", "Failed") or self._seen.get(key) == status:
                    continue
                self._seen[key] = status
                self.console.print(_event_line(name, event))
        overview = snapshot.info.get("deploymentOverview") or {}
        done = sum(int(overview.get(k) or 0) for k in ("Succeeded", "Failed", "Skipped"))
        total = sum(int(v or 0) for v in overview.values())
        if done != self._done and total:
            self._done = done
            if done:
                self.console.print(Text(f"  {done}/{total} hosts done", style="dim"))
        if snapshot.status != self._status:
            self._print_status(snapshot)

    def _print_status(self, snapshot: Snapshot) -> None:
        self._status = snapshot.status
        line = Text(f"{snapshot.deployment_id} ")
        line.append(snapshot.status, style=STATUS_STYLES.get(snapshot.status, ""))
        self.console.print(line)


def _event_line(host: str, event: Mapping[str, Any]) -> Text:
    status = str(event.get("status"))
    style = STATUS_STYLES.get(status, "")
    line = Text(f"  {host:<14} ")
    line.append(f"{SYMBOLS.get(status, '?')} {event['lifecycleEventName']:<17}", style=style)
    seconds = seconds_between(event.get("startTime"), event.get("endTime"))
    line.append(f" {format_duration(seconds):>6}", style="dim")
    diagnostics = event.get("diagnostics") or {}
    if status == "Failed":
        script = str(diagnostics.get("scriptName") or "")
        lines = str(diagnostics.get("message") or "").strip().splitlines()
        detail = lines[0] if lines else ""
        if script and script not in detail:
            detail = f"{script}: {detail}" if detail else script
        if detail:
            line.append(f"  {detail}", style="red")
    return line


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def watch_mode(console: Console, output: str) -> Mode:
    if output == "json":
        return "quiet"
    return "live" if console.is_terminal else "lines"


def collect_failures(remote: Remote, snapshot: Snapshot, *, log_lines: int = 20) -> list[Failure]:
    """Every failed host with its first failed event, the script and the end of its full log
    (GetLifecycleEventLog; the diagnostics' tail when the server has no full log)."""
    failures = []
    for target in snapshot.targets:
        if target.get("status") != "Failed":
            continue
        event = next(
            (e for e in target.get("lifecycleEvents") or [] if e.get("status") == "Failed"), None
        )
        if event is None:
            continue
        diagnostics = event.get("diagnostics") or {}
        name = str(target.get("targetId"))
        event_name = str(event["lifecycleEventName"])
        script = str(diagnostics.get("scriptName") or "")
        tail = str(diagnostics.get("logTail") or "")
        last = tail.rstrip("\n").rpartition("\n")[2].strip()
        if _TRUNCATED in last:
            last = ""
        full = (
            remote.full_log(
                snapshot.deployment_id,
                name,
                event_name,
                settle=LOG_SETTLE_SECONDS,
                expect_end=last or None,
            )
            if script
            else None
        )
        log = full if full else tail
        failures.append(
            Failure(
                instance=name,
                event=event_name,
                error_code=str(diagnostics.get("errorCode") or "Failed"),
                script=script,
                message=str(diagnostics.get("message") or "").strip(),
                log=tail_lines(log, log_lines),
                full_log=bool(full),
            )
        )
    return failures


def finish(
    remote: Remote,
    snapshot: Snapshot,
    *,
    console: Console,
    output: str,
    ended: bool = True,
    log_lines: int = 20,
    extra: Mapping[str, Any] | None = None,
    show_view: bool = False,
) -> int:
    """Print how the deployment ended (or where it is) and return the exit code."""
    failures = collect_failures(remote, snapshot, log_lines=log_lines) if snapshot.terminal else []
    code = exit_code_for(snapshot.status) if ended else EXIT_TIMEOUT
    if output == "json":
        document: dict[str, Any] = dict(extra or {})
        document.update(
            deploymentId=snapshot.deployment_id,
            status=snapshot.status,
            deployment=jsonable(snapshot.info),
            targets=jsonable(snapshot.targets),
            failures=[failure.to_json() for failure in failures],
            timedOut=not ended,
        )
        emit_json(document)
        return code
    if show_view:
        console.print(deployment_view(snapshot, time.time()))
    if failures:
        console.print()
        console.print(failure_view(snapshot.deployment_id, failures))
    console.print(_summary(snapshot, ended))
    return code


def _summary(snapshot: Snapshot, ended: bool) -> Text:
    info = snapshot.info
    hosts = len(snapshot.targets)
    elapsed = seconds_between(
        info.get("startTime") or info.get("createTime"), info.get("completeTime")
    )
    took = f" in {format_duration(elapsed)}" if elapsed is not None else ""
    deployment_id = snapshot.deployment_id
    if not ended:
        return Text(
            f"{deployment_id} is still {snapshot.status}; the timeout passed. "
            f"Keep watching with: opendeploy status {deployment_id} --watch",
            style="yellow",
        )
    if snapshot.status == "Succeeded":
        return Text(f"✓ {deployment_id} succeeded{took} on {hosts} host(s)", style="bold green")
    if snapshot.status == "Failed":
        error = info.get("errorInformation") or {}
        text = Text(f"✗ {deployment_id} failed{took}", style="bold red")
        code = error.get("code")
        if code:
            text.append(f" ({code})", style="red")
        if code == "NO_INSTANCES":
            text.append(
                "\n  No registered instance matches the group's tag filters: see "
                f"`opendeploy plan --application {info.get('applicationName')} "
                f"--deployment-group {info.get('deploymentGroupName')}`.",
                style="yellow",
            )
        elif code == "HEALTH_CONSTRAINTS_INVALID":
            text.append(
                "\n  The deployment configuration allows no host to be taken out of service "
                "with this many hosts: use a config with a lower minimum of healthy hosts.",
                style="yellow",
            )
        return text
    if snapshot.status == "Stopped":
        return Text(f"■ {deployment_id} was stopped{took}", style="bold magenta")
    return Text(
        f"{deployment_id} is {snapshot.status}. Watch it with: "
        f"opendeploy status {deployment_id} --watch"
    )


def follow(
    remote: Remote,
    deployment_id: str,
    *,
    console: Console,
    output: str,
    timeout: float | None = None,
    log_lines: int = 20,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Watch a deployment to its end (Ctrl-C stops watching, not the deployment)."""
    mode = watch_mode(console, output)
    try:
        snapshot, ended = Watch(remote, console, mode, timeout=timeout).run(deployment_id)
    except KeyboardInterrupt:
        if output != "json":
            console.print(
                f"\nStopped watching; {deployment_id} goes on on the server. "
                f"Stop it with: opendeploy stop {deployment_id}"
            )
        raise SystemExit(130) from None
    return finish(
        remote,
        snapshot,
        console=console,
        output=output,
        ended=ended,
        log_lines=log_lines,
        extra=extra,
    )


def parse_revision(text: str) -> dict[str, Any]:
    """A RevisionLocation from JSON text or ``@file``; also takes ``{"revision": {...}}``
    (what ``opendeploy push`` prints)."""
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise click.BadParameter(f"cannot read {text[1:]}: {error}") from None
    try:
        data = json.loads(source)
    except ValueError as error:
        raise click.BadParameter(
            f"not JSON ({error}); give a RevisionLocation such as "
            '\'{"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k", '
            '"bundleType": "tgz"}}\' or the output of `opendeploy push`',
            param_hint="--revision",
        ) from None
    if isinstance(data, dict) and isinstance(data.get("revision"), dict):
        data = data["revision"]
    if not isinstance(data, dict) or "revisionType" not in data:
        raise click.BadParameter(
            "a RevisionLocation needs revisionType (S3 or GitHub) and its location",
            param_hint="--revision",
        )
    return data


def create_deployment(
    remote: Remote,
    *,
    application: str,
    group: str,
    revision: Mapping[str, Any] | None,
    config: str | None = None,
    description: str | None = None,
    file_exists_behavior: str | None = None,
    ignore_application_stop_failures: bool = False,
) -> str:
    """CreateDeployment; an active deployment in the group is named in the error."""
    from botocore.exceptions import (  # type: ignore[import-untyped]
        BotoCoreError,
        ClientError,
    )

    arguments: dict[str, Any] = {
        "applicationName": application,
        "deploymentGroupName": group,
    }
    if revision is not None:
        arguments["revision"] = dict(revision)
    if config:
        arguments["deploymentConfigName"] = config
    if description:
        arguments["description"] = description
    if file_exists_behavior:
        arguments["fileExistsBehavior"] = file_exists_behavior
    if ignore_application_stop_failures:
        arguments["ignoreApplicationStopFailures"] = True
    try:
        result = remote.codedeploy_once.create_deployment(**arguments)
    except (ClientError, BotoCoreError) as error:
        message = describe_client_error(error, remote.endpoint)
        if remote.error_code(error) == "DeploymentLimitExceededException":
            message += (
                ". Wait for it (opendeploy status <id> --watch) or stop it "
                "(opendeploy stop <id>) first."
            )
        raise click.ClickException(message) from error
    return str(result["deploymentId"])


@click.command(epilog=EXIT_CODES, short_help="Deploy a revision; --wait to watch it live.")
@click.option("--application", "-a", required=True, help="The application.")
@click.option("--deployment-group", "-g", "group", required=True, help="The deployment group.")
@click.option(
    "--source",
    "-s",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A directory with appspec.yml at its root: pushed to the server, then deployed.",
)
@click.option(
    "--revision",
    default=None,
    metavar="JSON|@FILE",
    help="A revision already stored (S3, GitHub, or the output of `opendeploy push`).",
)
@click.option(
    "--config",
    "-c",
    "config_name",
    default=None,
    help="Deployment configuration, e.g. CodeDeployDefault.OneAtATime [default: the group's].",
)
@click.option("--description", "-d", default=None, help="A description of the deployment.")
@click.option(
    "--file-exists-behavior",
    type=click.Choice(["DISALLOW", "OVERWRITE", "RETAIN"], case_sensitive=False),
    metavar="[DISALLOW|OVERWRITE|RETAIN]",
    default=None,
    help="What Install does with files it did not put there [default DISALLOW; the "
    "appspec's file_exists_behavior wins].",
)
@click.option(
    "--ignore-application-stop-failures",
    is_flag=True,
    help="Go on when the previous revision's ApplicationStop scripts fail.",
)
@click.option("--wait", "-w", is_flag=True, help="Watch it live and exit with its outcome.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --wait: give up watching after this long (exit code 5).",
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
def deploy(
    application: str,
    group: str,
    source: Path | None,
    revision: str | None,
    config_name: str | None,
    description: str | None,
    file_exists_behavior: str | None,
    ignore_application_stop_failures: bool,
    wait: bool,
    timeout: float | None,
    log_lines: int,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """Deploy a revision to a deployment group.

    Give --source DIR to push a directory first, --revision for a stored revision, or neither
    to redeploy the group's current target revision. With --wait, shows every host's lifecycle
    events live and, on failure, the failing host, event, script and the end of its log.

    \b
    Example:
      opendeploy deploy -a web -g prod --source ./build --wait
    """
    if source is not None and revision is not None:
        raise click.UsageError("give --source or --revision, not both")
    console = make_console()
    remote = Remote(endpoint, region)
    location: dict[str, Any] | None = None
    if revision is not None:
        location = parse_revision(revision)
    elif source is not None:
        from opendeploy.cli.push import push_directory

        if output != "json":
            console.print(f"pushing {source} ...", style="dim")
        location = push_directory(
            source,
            application=application,
            description=description,
            endpoint=remote.endpoint,
            region=region,
        )
        if output != "json":
            console.print(f"pushed {source} as {revision_text(location)}")
    deployment_id = create_deployment(
        remote,
        application=application,
        group=group,
        revision=location,
        config=config_name,
        description=description,
        file_exists_behavior=file_exists_behavior.upper() if file_exists_behavior else None,
        ignore_application_stop_failures=ignore_application_stop_failures,
    )
    extra: dict[str, Any] = {"revision": location} if location is not None else {}
    if not wait:
        if output == "json":
            emit_json({"deploymentId": deployment_id, **extra})
        else:
            console.print(f"created deployment [bold]{deployment_id}[/bold]")
            console.print(f"watch it with: opendeploy status {deployment_id} --watch", style="dim")
        return
    if output != "json":
        console.print(f"created deployment [bold]{deployment_id}[/bold]")
    code = follow(
        remote,
        deployment_id,
        console=console,
        output=output,
        timeout=timeout,
        log_lines=log_lines,
        extra=extra,
    )
    raise SystemExit(code)
