"""How the CLI shows things: Rich for people, JSON for scripts, and the documented exit codes.

Every client command takes ``--output text|json``. Text goes through a Rich console (colours
only on a terminal); JSON is one document on stdout with times as ISO 8601 strings.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import click
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from opendeploy.cli.remote import Snapshot

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_STOPPED",
    "EXIT_TIMEOUT",
    "OUTPUT",
    "Failure",
    "deployment_view",
    "emit_json",
    "exit_code_for",
    "failure_view",
    "format_duration",
    "jsonable",
    "make_console",
    "revision_text",
    "seconds_between",
    "status_text",
]

_HEX = re.compile(r"[0-9a-f]{40,}")

EXIT_FAILED: Final = 3
EXIT_STOPPED: Final = 4
EXIT_TIMEOUT: Final = 5

EXIT_CODES: Final = """\b
Exit codes:
  0    success (the deployment succeeded, or the command did what it says)
  1    an error: the server is unreachable, refused the request, or a name is wrong
  2    the command line is wrong (unknown option, missing argument)
  3    the deployment (or local run) failed
  4    the deployment was stopped
  5    --timeout passed before the deployment finished
  130  interrupted (Ctrl-C); a deployment being watched goes on
"""

OUTPUT = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="OPENDEPLOY_OUTPUT",
    help="text for people; json for scripts (one JSON document on stdout) [env OPENDEPLOY_OUTPUT].",
)

STATUS_STYLES: Final[Mapping[str, str]] = {
    "Succeeded": "green",
    "Failed": "bold red",
    "InProgress": "yellow",
    "Pending": "dim",
    "Skipped": "bright_black",
    "Stopped": "magenta",
    "Ready": "blue",
    "Created": "dim",
    "Queued": "dim",
    "Baking": "cyan",
    "Unknown": "bright_black",
}
SYMBOLS: Final[Mapping[str, str]] = {
    "Succeeded": "✓",
    "Failed": "✗",
    "InProgress": "▶",
    "Pending": "·",
    "Skipped": "-",
    "Unknown": "?",
}


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); wide enough for the event grid when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 120
    return Console(file=stream, highlight=False, width=width, soft_wrap=True)


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonable(data: object) -> Any:
    """``data`` with datetimes as ISO strings, ready for ``json.dumps``."""
    return json.loads(json.dumps(data, default=_json_default))


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _as_seconds(value: object) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def seconds_between(start: object, end: object, *, now: float | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to ``now`` while it runs); None if not started."""
    begin = _as_seconds(start)
    if begin is None:
        return None
    finish = _as_seconds(end)
    if finish is None:
        if now is None:
            return None
        finish = now
    return max(finish - begin, 0.0)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def revision_text(revision: Mapping[str, Any] | None) -> str:
    """A revision location in one line: s3://bucket/key, github repo@commit, ..."""
    if not revision:
        return "(none)"
    kind = revision.get("revisionType")
    if kind == "S3":
        s3 = revision.get("s3Location") or {}
        key = _HEX.sub(lambda match: match.group(0)[:12] + "…", str(s3.get("key")))
        text = f"s3://{s3.get('bucket')}/{key}"
        if s3.get("version"):
            text += f"?versionId={s3['version']}"
        return text
    if kind == "GitHub":
        github = revision.get("gitHubLocation") or {}
        return f"github {github.get('repository')}@{str(github.get('commitId'))[:12]}"
    return str(kind)


def exit_code_for(status: str) -> int:
    if status == "Succeeded":
        return 0
    if status == "Stopped":
        return EXIT_STOPPED
    if status in ("Failed",):
        return EXIT_FAILED
    return 0


def _words(name: str) -> str:
    """``InProgress`` -> ``in progress``."""
    return "".join(" " + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _event_header(name: str) -> str:
    """``ApplicationStop`` -> ``Application\\nStop``: narrow columns for the grid."""
    for index in range(1, len(name)):
        if name[index].isupper():
            return name[:index] + "\n" + name[index:]
    return name


def _cell(event: Mapping[str, Any], now: float) -> Text:
    status = str(event.get("status", "Pending"))
    symbol = SYMBOLS.get(status, "?")
    seconds = seconds_between(
        event.get("startTime"),
        event.get("endTime"),
        now=now if status == "InProgress" else None,
    )
    text = Text(symbol, style=STATUS_STYLES.get(status, ""))
    if seconds is not None and status not in ("Pending", "Skipped"):
        text.append(" " + format_duration(seconds), style=STATUS_STYLES.get(status, ""))
    return text


def deployment_header(info: Mapping[str, Any], now: float) -> RenderableType:
    status = str(info.get("status", "Unknown"))
    title = Text()
    title.append(str(info.get("deploymentId")), style="bold")
    title.append("  ")
    title.append(f"{info.get('applicationName')} / {info.get('deploymentGroupName')}")
    title.append("  ")
    title.append_text(status_text(status))
    elapsed = seconds_between(
        info.get("startTime") or info.get("createTime"),
        info.get("completeTime"),
        now=None if status in ("Succeeded", "Failed", "Stopped") else now,
    )
    if elapsed is not None:
        title.append(f"  {format_duration(elapsed)}", style="dim")
    lines: list[RenderableType] = [title]
    details = Text(style="dim", no_wrap=False)
    details.append(f"config {info.get('deploymentConfigName')}")
    details.append(f" · revision {revision_text(info.get('revision'))}")
    if info.get("description"):
        details.append(f" · {info['description']}")
    lines.append(details)
    return Group(*lines)


def overview_view(info: Mapping[str, Any]) -> RenderableType:
    """Batch progress from ``deploymentOverview``: a bar and the count of each state."""
    overview = info.get("deploymentOverview") or {}
    total = sum(int(overview.get(key) or 0) for key in overview)
    done = sum(int(overview.get(key) or 0) for key in ("Succeeded", "Failed", "Skipped"))
    line = Table.grid(padding=(0, 1))
    line.add_column(width=30)
    line.add_column()
    counts = Text()
    for key in ("Succeeded", "InProgress", "Pending", "Failed", "Skipped", "Ready"):
        value = int(overview.get(key) or 0)
        if value or key in ("Succeeded", "InProgress", "Pending", "Failed"):
            if counts:
                counts.append(" · ", style="dim")
            counts.append(
                f"{value} {_words(key)}", style=STATUS_STYLES.get(key, "") if value else "dim"
            )
    failed = int(overview.get("Failed") or 0)
    bar = ProgressBar(
        total=max(total, 1),
        completed=done,
        width=30,
        complete_style="red" if failed else "green",
        finished_style="red" if failed else "green",
    )
    line.add_row(bar, Text(f"{done}/{total} hosts done  ").append_text(counts))
    return line


def deployment_grid(snapshot: Snapshot, now: float) -> Table:
    """Hosts x lifecycle events: status symbol and duration per cell, colour by status."""
    events = snapshot.event_names()
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    table.add_column("Host", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    for event in events:
        table.add_column(_event_header(event), no_wrap=True)
    for target in snapshot.targets:
        by_name = {e["lifecycleEventName"]: e for e in target.get("lifecycleEvents") or []}
        row: list[RenderableType] = [
            Text(str(target.get("targetId"))),
            status_text(str(target.get("status", "Unknown"))),
        ]
        for event in events:
            found = by_name.get(event)
            row.append(_cell(found, now) if found else Text(""))
        table.add_row(*row)
    return table


def deployment_view(snapshot: Snapshot, now: float) -> RenderableType:
    parts: list[RenderableType] = [deployment_header(snapshot.info, now)]
    if snapshot.targets:
        parts.append(overview_view(snapshot.info))
        parts.append(Text(""))
        parts.append(deployment_grid(snapshot, now))
    elif snapshot.status not in ("Created", "Queued"):
        parts.append(Text("no instances", style="dim"))
    error = snapshot.info.get("errorInformation")
    if error and snapshot.terminal:
        parts.append(Text(""))
        parts.append(
            Text(f"{error.get('code')}: {error.get('message')}", style="red", no_wrap=False)
        )
    return Group(*parts)


@dataclass(frozen=True)
class Failure:
    """Where a host failed: its first failed event, the script, the message and the log."""

    instance: str
    event: str
    error_code: str
    script: str
    message: str
    log: str
    full_log: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "event": self.event,
            "errorCode": self.error_code,
            "script": self.script,
            "message": self.message,
            "logTail": self.log,
            "fullLog": self.full_log,
        }


def tail_lines(text: str, lines: int) -> str:
    kept = text.rstrip("\n").splitlines()
    return "\n".join(kept[-lines:]) if lines > 0 else ""


def failure_view(
    deployment_id: str, failures: Sequence[Failure], *, shown: int = 3
) -> RenderableType:
    parts: list[RenderableType] = []
    for failure in failures[:shown]:
        title = Text()
        title.append(failure.instance, style="bold")
        title.append(" failed at ")
        title.append(failure.event, style="bold")
        if failure.script:
            title.append(" running ")
            title.append(failure.script, style="bold")
        body: list[RenderableType] = []
        message = failure.message or failure.error_code
        if message:
            body.append(Text(f"{failure.error_code}: {message}", style="red", no_wrap=False))
        if failure.log:
            source = "end of the log" if failure.full_log else "end of the log (diagnostics tail)"
            body.append(Text(source + ":", style="dim"))
            body.append(Text(failure.log, no_wrap=False, overflow="fold"))
        hint = (
            f"full log: opendeploy logs {deployment_id} --instance {failure.instance} "
            f"--event {failure.event}"
        )
        body.append(Text(hint, style="dim"))
        parts.append(Panel(Group(*body), title=title, title_align="left", border_style="red"))
    if len(failures) > shown:
        others = ", ".join(f"{f.instance} ({f.event})" for f in failures[shown:])
        parts.append(Text(f"also failed: {others}", style="red"))
    return Group(*parts)
