"""The watch loop and the failure summary on canned API answers (no server): line mode, the
live grid on a terminal, and the fallback to the diagnostics tail when the full log is
unavailable."""

from __future__ import annotations

import datetime as dt
import io
import re
from typing import Any

from rich.console import Console

from opendeploy.cli.deploy import Watch, collect_failures, finish
from opendeploy.cli.remote import Snapshot
from opendeploy.cli.render import format_duration, revision_text

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EVENTS = ("BeforeInstall", "Install", "ValidateService")


def _event(name: str, status: str, seconds: float = 1.0, **diagnostics: str) -> dict[str, Any]:
    event: dict[str, Any] = {"lifecycleEventName": name, "status": status}
    if status not in ("Pending", "Skipped"):
        event["startTime"] = T0
    if status in ("Succeeded", "Failed"):
        event["endTime"] = T0 + dt.timedelta(seconds=seconds)
    if diagnostics:
        event["diagnostics"] = diagnostics
    return event


def _snapshot(status: str, hosts: dict[str, list[dict[str, Any]]]) -> Snapshot:
    overview = {"Pending": 0, "InProgress": 0, "Succeeded": 0, "Failed": 0, "Skipped": 0}
    targets = []
    for name, events in hosts.items():
        statuses = {e["status"] for e in events}
        if "Failed" in statuses:
            state = "Failed"
        elif statuses == {"Succeeded"}:
            state = "Succeeded"
        elif statuses == {"Pending"}:
            state = "Pending"
        else:
            state = "InProgress"
        overview[state] += 1
        targets.append({"targetId": name, "status": state, "lifecycleEvents": events})
    info = {
        "deploymentId": "d-TEST00001",
        "applicationName": "web",
        "deploymentGroupName": "prod",
        "deploymentConfigName": "CodeDeployDefault.AllAtOnce",
        "status": status,
        "createTime": T0,
        "deploymentOverview": overview,
        "revision": {
            "revisionType": "S3",
            "s3Location": {"bucket": "b", "key": "bundles/" + "ab" * 32 + ".tgz"},
        },
    }
    if status == "Failed":
        info["completeTime"] = T0 + dt.timedelta(seconds=5)
        info["errorInformation"] = {"code": "HEALTH_CONSTRAINTS", "message": "too many failed"}
    return Snapshot(info, targets)


FAILED_DIAGNOSTICS = {
    "errorCode": "ScriptFailed",
    "scriptName": "scripts/check.sh",
    "message": "Script at specified location: scripts/check.sh failed with exit code 1",
    "logTail": "[stdout]checking\n[stderr]boom\n",
}


class FakeRemote:
    """Answers ``snapshot`` from a list (the last one repeats) and has no full logs."""

    endpoint = "http://127.0.0.1:1"

    def __init__(self, snapshots: list[Snapshot], log: str | None = None) -> None:
        self.snapshots = snapshots
        self.log = log
        self.log_requests: list[tuple[str, str, str]] = []

    def snapshot(self, deployment_id: str) -> Snapshot:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    def full_log(
        self, deployment_id: str, target: str, event: str, *, settle: float, expect_end: str | None
    ) -> str | None:
        self.log_requests.append((deployment_id, target, event))
        assert expect_end == "[stderr]boom"  # the tail's last line: the log is complete then
        return self.log


def _progress() -> list[Snapshot]:
    pending = [_event(name, "Pending") for name in EVENTS]
    return [
        _snapshot("InProgress", {"host-01": pending, "host-02": pending}),
        _snapshot(
            "InProgress",
            {
                "host-01": [_event("BeforeInstall", "Succeeded", 0.4), *pending[1:]],
                "host-02": [_event("BeforeInstall", "InProgress"), *pending[1:]],
            },
        ),
        _snapshot(
            "Failed",
            {
                "host-01": [_event(name, "Succeeded", 0.4) for name in EVENTS],
                "host-02": [
                    _event("BeforeInstall", "Succeeded", 0.4),
                    _event("Install", "Succeeded", 0.1),
                    _event("ValidateService", "Failed", 2.0, **FAILED_DIAGNOSTICS),
                ],
            },
        ),
    ]


def test_line_mode_prints_each_finished_event_once() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, soft_wrap=True)
    remote: Any = FakeRemote(_progress())

    snapshot, ended = Watch(remote, console, "lines", interval=0).run("d-TEST00001")

    text = out.getvalue()
    assert ended and snapshot.status == "Failed"
    assert text.count("host-01        ✓ BeforeInstall") == 1
    assert "host-02        ✗ ValidateService     2.0s  Script at specified location" in text
    assert text.index("✗ ValidateService") < text.index("d-TEST00001 Failed")
    assert "2/2 hosts done" in text
    # The final grid: hosts x events, with durations.
    assert "host-02  Failed" in text and "✗ 2.0s" in text
    assert "s3://b/bundles/abababababab….tgz" in text


def test_the_live_grid_renders_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, soft_wrap=True)
    remote: Any = FakeRemote(_progress())

    snapshot, ended = Watch(remote, console, "live", interval=0).run("d-TEST00001")

    assert ended and snapshot.terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "host-02  Failed" in plain and "HEALTH_CONSTRAINTS: too many failed" in plain
    assert console.soft_wrap  # restored after the live region


def test_failures_fall_back_to_the_diagnostics_tail() -> None:
    snapshot = _progress()[-1]
    remote: Any = FakeRemote([snapshot], log=None)

    [failure] = collect_failures(remote, snapshot, log_lines=1)

    assert remote.log_requests == [("d-TEST00001", "host-02", "ValidateService")]
    assert failure.instance == "host-02" and failure.script == "scripts/check.sh"
    assert failure.full_log is False
    assert failure.log == "[stderr]boom"  # the last line of the tail


def test_the_full_log_wins_and_finish_returns_exit_code_3() -> None:
    snapshot = _progress()[-1]
    remote: Any = FakeRemote([snapshot], log="line 1\nline 2\nline 3\n")
    out = io.StringIO()

    code = finish(remote, snapshot, console=Console(file=out, width=120), output="text")

    assert code == 3
    text = out.getvalue()
    assert "host-02 failed at ValidateService running scripts/check.sh" in text
    assert "line 3" in text and "diagnostics tail" not in text
    assert "opendeploy logs d-TEST00001 --instance host-02 --event ValidateService" in text


def test_formatting() -> None:
    assert [format_duration(s) for s in (0.25, 12.4, 75, 3725)] == ["0.2s", "12s", "1m15s", "1h02m"]
    assert format_duration(None) == ""
    github = {
        "revisionType": "GitHub",
        "gitHubLocation": {"repository": "a/b", "commitId": "c" * 40},
    }
    assert revision_text(github) == "github a/b@cccccccccccc"
    assert revision_text(None) == "(none)"
