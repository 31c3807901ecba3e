"""The on-disk record of the in-flight host command, for crash recovery.

``<root>/ongoing-deployment/<deployment_id>`` is written (atomically) before a command runs
and removed once its PutHostCommandComplete has been stored by the server. On start-up, and
after a completion it could not deliver, the agent reports every entry it finds before it
polls again (a poll tells our server that no event the agent began is left unreported):

* an entry without a result means the agent died while the command ran: it is reported as
  ``Failed`` with error code 7, "Failed: Failing in-progress lifecycle event after an agent
  restart.", exactly as the stock agent does; the command is never run again;
* an entry with a result means the command finished but its Complete never reached the server
  (the server was down longer than the agent kept retrying, or the agent was stopped): that
  result is sent, so a success is never turned into a failure.

The stock agent's file holds just the host command id; such a file is read too, so this agent
can take over a stock agent's deployment root. Ours is a small JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from opendeploy.agent import layout

__all__ = [
    "RESTART_DIAGNOSTICS",
    "Journal",
    "JournalEntry",
    "PendingResult",
    "recover",
]

log = logging.getLogger(__name__)

RESTART_MESSAGE: Final = "Failed: Failing in-progress lifecycle event after an agent restart."
RESTART_DIAGNOSTICS: Final[Mapping[str, Any]] = {
    "error_code": 7,
    "script_name": "",
    "message": RESTART_MESSAGE,
    "log": "",
}


@dataclass(frozen=True, slots=True)
class PendingResult:
    """A finished command's outcome whose Complete is not yet stored by the server."""

    status: str
    diagnostics: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    deployment_id: str
    host_command_id: str
    command_name: str | None = None
    started_at: float | None = None
    result: PendingResult | None = field(default=None)
    #: The running hook's process group and the start time of its leader (clock ticks), so
    #: a restarted agent can stop a hook its predecessor left behind, and no other process.
    hook_group: tuple[int, int] | None = None

    def completion(self) -> tuple[str, dict[str, Any]]:
        """What to report for this entry after a restart: its result, else the code-7 failure."""
        if self.result is not None:
            return self.result.status, dict(self.result.diagnostics)
        return "Failed", dict(RESTART_DIAGNOSTICS)


class Journal:
    """The ``ongoing-deployment`` directory of a deployment root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def directory(self) -> Path:
        return layout.ongoing_deployment_dir(self.root)

    def begin(self, deployment_id: str, host_command_id: str, command_name: str) -> JournalEntry:
        """Record that ``host_command_id`` is about to run; call before executing it.

        Flushed to disk: after a crash of the machine it is what makes the restarted agent
        report the event as failed (code 7); the server, hearing from the host again, would
        otherwise wait for that acknowledged event for ever.
        """
        entry = JournalEntry(deployment_id, host_command_id, command_name, time.time())
        self._write(entry)
        return entry

    def note_hook(self, entry: JournalEntry, pid: int) -> JournalEntry:
        """Record the process group of the hook ``entry`` just started (not fsynced: after a
        crash of the machine there is no hook left to stop)."""
        started = process_start_time(pid)
        if started is None:
            return entry
        noted = replace(entry, hook_group=(pid, started))
        self._write(noted, durable=False)
        return noted

    def finish(
        self, entry: JournalEntry, status: str, diagnostics: Mapping[str, Any]
    ) -> JournalEntry:
        """Record the command's outcome, to be resent if its Complete does not get through."""
        done = JournalEntry(
            entry.deployment_id,
            entry.host_command_id,
            entry.command_name,
            entry.started_at,
            PendingResult(status, dict(diagnostics)),
        )
        self._write(done)
        return done

    def clear(self, entry: JournalEntry) -> None:
        """Forget the entry (its Complete is stored)."""
        layout.ongoing_deployment_file(self.root, entry.deployment_id).unlink(missing_ok=True)

    def entries(self) -> list[JournalEntry]:
        """Every recorded command, oldest first; unreadable files are logged and skipped."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found: list[tuple[float, JournalEntry]] = []
        for name in names:
            path = self.directory / name
            if name.startswith("."):
                if name.endswith(".tmp"):
                    path.unlink(missing_ok=True)  # a write interrupted by a crash
                continue
            try:
                layout.check_deployment_id(name)
                text = path.read_text(encoding="utf-8")
                mtime = path.stat().st_mtime
            except (OSError, UnicodeDecodeError, layout.LayoutError) as exc:
                log.warning("ignoring unreadable journal file %s: %s", path, exc)
                continue
            entry = _parse(name, text)
            if entry is None:
                log.warning("ignoring journal file %s: it names no host command", path)
                continue
            found.append((entry.started_at or mtime, entry))
        found.sort(key=lambda item: item[0])
        return [entry for _, entry in found]

    def _write(self, entry: JournalEntry, *, durable: bool = True) -> None:
        document: dict[str, Any] = {
            "HostCommandIdentifier": entry.host_command_id,
            "DeploymentId": entry.deployment_id,
            "CommandName": entry.command_name,
            "StartedAt": entry.started_at,
        }
        if entry.hook_group is not None:
            document["HookProcessGroup"] = list(entry.hook_group)
        if entry.result is not None:
            document["Result"] = {
                "CommandStatus": entry.result.status,
                "Diagnostics": dict(entry.result.diagnostics),
            }
        path = layout.ongoing_deployment_file(self.root, entry.deployment_id)
        layout.write_atomically(path, json.dumps(document).encode(), durable=durable)


def _parse(deployment_id: str, text: str) -> JournalEntry | None:
    stripped = text.strip()
    if not stripped:
        return None
    try:
        document = json.loads(stripped)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        # The stock agent's format: the host command id and nothing else.
        return JournalEntry(deployment_id, stripped)
    command_id = document.get("HostCommandIdentifier")
    if not isinstance(command_id, str) or not command_id:
        return None
    name = document.get("CommandName")
    started = document.get("StartedAt")
    result = None
    raw = document.get("Result")
    if isinstance(raw, dict) and raw.get("CommandStatus") in ("Succeeded", "Failed"):
        diagnostics = raw.get("Diagnostics")
        result = PendingResult(
            str(raw["CommandStatus"]), diagnostics if isinstance(diagnostics, dict) else {}
        )
    group = document.get("HookProcessGroup")
    hook_group = None
    if isinstance(group, list) and len(group) == 2 and all(isinstance(v, int) for v in group):
        hook_group = (group[0], group[1])
    return JournalEntry(
        deployment_id,
        command_id,
        name if isinstance(name, str) else None,
        float(started) if isinstance(started, int | float) else None,
        result,
        hook_group,
    )


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are plain.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def stop_left_behind_hook(entry: JournalEntry) -> bool:
    """Kill the process group of a hook a dead agent left running; True if it did."""
    if entry.hook_group is None:
        return False
    pid, started = entry.hook_group
    if process_start_time(pid) != started:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    log.warning(
        "[%s] killed the hook (process group %d) the previous agent left running",
        entry.deployment_id,
        pid,
    )
    return True


def recover(
    journal: Journal, complete: Callable[[str, str, dict[str, Any]], bool]
) -> list[JournalEntry]:
    """Report every journal entry with ``complete(command_id, status, diagnostics)``.

    ``complete`` returns True when the server has the completion (stored, or refused for good),
    False to keep the entry for a later try. Returns the entries still pending.
    """
    pending = []
    for entry in journal.entries():
        if entry.result is None:
            stop_left_behind_hook(entry)
        status, diagnostics = entry.completion()
        what = "its recorded result" if entry.result is not None else "the agent-restart failure"
        log.warning(
            "[%s] %s (%s) was in flight when the agent stopped; reporting %s (%s)",
            entry.deployment_id,
            entry.command_name or "a lifecycle event",
            entry.host_command_id,
            what,
            status,
        )
        if complete(entry.host_command_id, status, diagnostics):
            journal.clear(entry)
        else:
            pending.append(entry)
    return pending
