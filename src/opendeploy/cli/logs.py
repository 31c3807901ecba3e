"""``opendeploy logs``: the full output of a deployment's hooks, from the server.

The agent streams every line a hook writes to the server (GetLifecycleEventLog serves it), so
this is the whole log, not the 2 KB tail CodeDeploy keeps. ``--follow`` polls with an offset
and prints what is new until the deployment ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import click
from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from opendeploy.cli.common import ENDPOINT, REGION
from opendeploy.cli.remote import Remote, Snapshot
from opendeploy.cli.render import (
    EXIT_CODES,
    OUTPUT,
    STATUS_STYLES,
    emit_json,
    exit_code_for,
    format_duration,
    make_console,
    seconds_between,
)

__all__ = ["logs"]

_NOT_STARTED: Final = frozenset({"Pending", "Skipped"})
_FINISHED: Final = frozenset({"Succeeded", "Failed", "Skipped", "Unknown"})
#: After an event ends, its last chunk can arrive a moment later.
_SETTLE_SECONDS: Final = 1.5


@dataclass
class _Stream:
    instance: str
    event: str
    offset: int = 0
    finished_at: float | None = None
    pending: str = ""
    done: bool = False


def _select(
    snapshot: Snapshot, instance: str | None, event: str | None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(target, event) pairs the filters select; a name that is not there is an error."""
    targets = snapshot.targets
    if instance is not None:
        targets = [t for t in targets if t.get("targetId") == instance]
        if not targets:
            names = ", ".join(str(t.get("targetId")) for t in snapshot.targets) or "none"
            raise click.BadParameter(
                f"{instance} is not a host of {snapshot.deployment_id} (its hosts: {names})",
                param_hint="--instance",
            )
    if event is not None and event not in snapshot.event_names():
        raise click.BadParameter(
            f"{event} is not a lifecycle event of {snapshot.deployment_id} "
            f"(its events: {', '.join(snapshot.event_names())})",
            param_hint="--event",
        )
    pairs = []
    for target in targets:
        for item in target.get("lifecycleEvents") or []:
            if event is None or item["lifecycleEventName"] == event:
                pairs.append((target, item))
    return pairs


@click.command(epilog=EXIT_CODES, short_help="Full output of a deployment's hooks (--follow).")
@click.argument("deployment_id", metavar="ID")
@click.option("--instance", "-i", default=None, help="Only this host's output.")
@click.option("--event", "-e", default=None, help="Only this lifecycle event, e.g. AfterInstall.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print output as hooks write it, until the deployment ends; exits with its outcome.",
)
@ENDPOINT
@REGION
@OUTPUT
def logs(
    deployment_id: str,
    instance: str | None,
    event: str | None,
    follow: bool,
    endpoint: str,
    region: str,
    output: str,
) -> None:
    """Show the full output of deployment ID's lifecycle hooks.

    Each line is as the agent wrote it to scripts.log on the host: a UTC timestamp, then
    [stdout] or [stderr] and what the script printed. With --output json, prints one document
    ({"logs": [...]}), or with --follow one JSON object per chunk.
    """
    remote = Remote(endpoint, region)
    console = make_console()
    snapshot = remote.snapshot(deployment_id)
    pairs = _select(snapshot, instance, event)
    if follow:
        raise SystemExit(_follow(remote, snapshot, instance, event, console, output))
    explicit = instance is not None and event is not None
    entries = []
    for target, item in pairs:
        if item.get("status") in _NOT_STARTED and not explicit:
            continue
        name, event_name = str(target["targetId"]), str(item["lifecycleEventName"])
        text = str(remote.event_log(deployment_id, name, event_name).get("log") or "")
        if not text and not explicit:
            continue
        entries.append((name, item, text))
    if output == "json":
        emit_json(
            {
                "deploymentId": deployment_id,
                "logs": [
                    {
                        "instance": name,
                        "event": item["lifecycleEventName"],
                        "status": item.get("status"),
                        "log": text,
                    }
                    for name, item, text in entries
                ],
            }
        )
        return
    if not entries:
        console.print(
            f"no hook output yet for {deployment_id}"
            + (" (events that run no scripts have none)" if explicit else ""),
            style="dim",
        )
        return
    for name, item, text in entries:
        console.print(_header(name, item))
        if text:
            console.out(text.rstrip("\n"), highlight=False)
        else:
            console.print("(no output)", style="dim")


def _header(name: str, item: dict[str, Any]) -> Rule:
    status = str(item.get("status"))
    seconds = seconds_between(item.get("startTime"), item.get("endTime"))
    title = Text(f"{name} · {item['lifecycleEventName']} · ")
    title.append(status, style=STATUS_STYLES.get(status, ""))
    if seconds is not None:
        title.append(f" · {format_duration(seconds)}", style="dim")
    return Rule(title, align="left", style="dim")


def _follow(
    remote: Remote,
    snapshot: Snapshot,
    instance: str | None,
    event: str | None,
    console: Console,
    output: str,
) -> int:
    streams: dict[tuple[str, str], _Stream] = {}
    single = instance is not None and event is not None
    deployment_id = snapshot.deployment_id
    try:
        while True:
            now = time.monotonic()
            for target, item in _select(snapshot, instance, event):
                key = (str(target["targetId"]), str(item["lifecycleEventName"]))
                status = str(item.get("status"))
                stream = streams.get(key)
                if stream is None:
                    if status in _NOT_STARTED:
                        continue
                    stream = streams[key] = _Stream(*key)
                if stream.done:
                    continue
                ended = status in _FINISHED or snapshot.terminal
                if ended and stream.finished_at is None:
                    stream.finished_at = now
                result = remote.event_log(deployment_id, *key, offset=stream.offset)
                text = str(result.get("log") or "")
                stream.offset += len(text)
                if text:
                    _emit(stream, text, console, output, single)
                elif stream.finished_at is not None and now - stream.finished_at >= _SETTLE_SECONDS:
                    stream.done = True
                    _flush(stream, console, output, single)
            settled = all(s.done for s in streams.values())
            if snapshot.terminal and settled:
                break
            time.sleep(0.5)
            snapshot = remote.snapshot(deployment_id)
    except KeyboardInterrupt:
        return 130
    for stream in streams.values():
        _flush(stream, console, output, single)
    if output != "json":
        console.print(
            Text(f"{deployment_id} ").append(
                snapshot.status, style=STATUS_STYLES.get(snapshot.status, "")
            )
        )
    return exit_code_for(snapshot.status)


def _emit(stream: _Stream, text: str, console: Console, output: str, single: bool) -> None:
    if output == "json":
        click.echo(json.dumps({"instance": stream.instance, "event": stream.event, "text": text}))
        return
    if single:
        console.out(text, end="", highlight=False)
        return
    lines = (stream.pending + text).split("\n")
    stream.pending = lines.pop()
    _print_lines(stream, lines, console)


def _flush(stream: _Stream, console: Console, output: str, single: bool) -> None:
    if stream.pending and output != "json" and not single:
        _print_lines(stream, [stream.pending], console)
    stream.pending = ""


def _print_lines(stream: _Stream, lines: Iterable[str], console: Console) -> None:
    prefix = f"{stream.instance} {stream.event} | "
    for line in lines:
        text = Text(prefix, style="dim")
        text.append(line)
        console.print(text, soft_wrap=True)
