"""``opendeploy local``: an appspec run on this machine through the agent's own code."""

from __future__ import annotations

import json
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from opendeploy.cli.local import resolve_events
from opendeploy.cli.main import cli

RECORD = 'echo "$LIFECYCLE_EVENT $APPLICATION_NAME $DEPLOYMENT_GROUP_NAME" >> "$RECORD"'


def _bundle(
    directory: Path,
    *,
    hooks: dict[str, str],
    release: str = "1",
    extra_events: tuple[str, ...] = (),
) -> Path:
    """A bundle installing ``app/`` to /srv/app with one script per event (event -> body)."""
    (directory / "app").mkdir(parents=True)
    (directory / "app" / "release.txt").write_text(release + "\n")
    appspec_hooks = {}
    for event, body in hooks.items():
        script = directory / "scripts" / f"{event}.sh"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/bash\n{RECORD}\n{textwrap.dedent(body)}\n")
        script.chmod(0o755)
        appspec_hooks[event] = [{"location": f"scripts/{event}.sh", "timeout": 30}]
    for event in extra_events:
        appspec_hooks.setdefault(event, appspec_hooks[next(iter(appspec_hooks))])
    appspec = {
        "version": 0.0,
        "os": "linux",
        "files": [{"source": "app", "destination": "/srv/app"}],
        "hooks": appspec_hooks,
    }
    (directory / "appspec.yml").write_text(yaml.safe_dump(appspec, sort_keys=False))
    return directory


STANDARD = {
    "ApplicationStop": "echo stopping",
    "BeforeInstall": "echo before",
    "AfterInstall": 'echo "installed release $(cat "$DEST/srv/app/release.txt")"',
    "ApplicationStart": "echo starting",
    "ValidateService": "echo healthy",
}


def _run(tmp_path: Path, *args: str) -> Result:
    record = tmp_path / "record.log"
    return CliRunner().invoke(
        cli,
        [
            "local",
            "--root",
            str(tmp_path / "root"),
            "--destination-root",
            str(tmp_path / "dest"),
            "--hook-env",
            f"RECORD={record}",
            "--hook-env",
            f"DEST={tmp_path / 'dest'}",
            *args,
        ],
        catch_exceptions=False,
    )


def _recorded(tmp_path: Path) -> list[str]:
    path = tmp_path / "record.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_directory_bundle_runs_the_whole_lifecycle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", hooks=STANDARD)
    result = _run(tmp_path, "--bundle", str(bundle), "-a", "shop", "-d", "staging")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "dest" / "srv" / "app" / "release.txt").read_text() == "1\n"
    # No revision was installed before, so ApplicationStop had nothing to run.
    assert _recorded(tmp_path) == [
        "BeforeInstall",
        "AfterInstall",
        "ApplicationStart",
        "ValidateService",
    ]
    lines = (tmp_path / "record.log").read_text().splitlines()
    assert lines[0] == "BeforeInstall shop staging"
    assert "no revision was installed here before" in result.output
    assert "the local deployment succeeded" in result.output
    log_line = next(line for line in result.output.splitlines() if "scripts log:" in line)
    log = Path(log_line.split("scripts log:")[1].strip())
    assert log.is_file() and "installed release 1" in log.read_text()


def test_a_second_run_stops_the_first_and_replaces_its_files(tmp_path: Path) -> None:
    first = _bundle(tmp_path / "first", hooks=STANDARD, release="1")
    second = _bundle(tmp_path / "second", hooks=STANDARD, release="2")
    assert _run(tmp_path, "--bundle", str(first)).exit_code == 0
    (tmp_path / "record.log").unlink()

    result = _run(tmp_path, "--bundle", str(second), "-o", "json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "Succeeded"
    assert [e["name"] for e in document["events"]] == [
        "ApplicationStop",
        "DownloadBundle",
        "BeforeInstall",
        "Install",
        "AfterInstall",
        "ApplicationStart",
        "ValidateService",
    ]
    assert document["events"][0]["scripts"] == 1  # the first run's ApplicationStop script
    assert _recorded(tmp_path)[0] == "ApplicationStop"
    assert (tmp_path / "dest" / "srv" / "app" / "release.txt").read_text() == "2\n"


def test_a_failing_hook_stops_the_run_with_exit_code_3(tmp_path: Path) -> None:
    hooks = {
        **STANDARD,
        "ApplicationStart": """\
            for i in $(seq 1 5); do echo "warming cache $i"; done
            echo "port 8080 is already in use" >&2
            exit 7
            """,
    }
    bundle = _bundle(tmp_path / "bundle", hooks=hooks)

    result = _run(tmp_path, "--bundle", str(bundle))

    assert result.exit_code == 3, result.output
    assert "scripts/ApplicationStart.sh" in result.output
    assert "exit code 7" in result.output
    assert "port 8080 is already in use" in result.output  # the failing event's output
    assert "not run: ValidateService" in result.output
    assert "ValidateService" not in _recorded(tmp_path)

    failed = _run(tmp_path, "--bundle", str(bundle), "-o", "json")
    document = json.loads(failed.stdout)
    assert failed.exit_code == 3
    assert document["status"] == "Failed"
    assert document["events"][-1]["diagnostics"]["script_name"] == "scripts/ApplicationStart.sh"
    assert document["notRun"] == ["ValidateService"]


def test_custom_events_run_in_the_given_order(tmp_path: Path) -> None:
    hooks = {**STANDARD, "RunTests": 'echo "tests pass"'}
    bundle = _bundle(tmp_path / "bundle", hooks=hooks)

    result = _run(
        tmp_path, "--bundle", str(bundle), "--events", "BeforeInstall,RunTests", "-o", "json"
    )

    assert result.exit_code == 0, result.output
    names = [e["name"] for e in json.loads(result.stdout)["events"]]
    assert names == ["DownloadBundle", "BeforeInstall", "Install", "RunTests"]
    assert _recorded(tmp_path) == ["BeforeInstall", "RunTests"]


def test_a_custom_event_not_named_in_events_is_refused_up_front(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", hooks={**STANDARD, "RunTests": "true"})

    result = _run(tmp_path, "--bundle", str(bundle))

    assert result.exit_code == 1
    assert "unknown lifecycle event 'RunTests'" in result.output
    assert "name it in --events" in result.output
    assert not (tmp_path / "record.log").exists()


def test_an_archive_bundle_is_unpacked(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", hooks=STANDARD, release="7")
    archive = tmp_path / "bundle.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=".")

    result = _run(tmp_path, "--bundle", str(archive))

    assert result.exit_code == 0, result.output
    assert "unpacked (tgz)" in result.output
    assert (tmp_path / "dest" / "srv" / "app" / "release.txt").read_text() == "7\n"


def test_an_unsafe_archive_fails_download_bundle(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tgz"
    escape = tmp_path / "escape.txt"
    escape.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(escape, arcname="../../escape.txt")

    result = _run(tmp_path, "--bundle", str(archive))

    assert result.exit_code == 3
    assert "DownloadBundle" in result.output and "refusing to unpack" in result.output


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ([], None),
        (["AfterInstall"], ["DownloadBundle", "Install", "AfterInstall"]),
        (
            ["ApplicationStop", "BeforeInstall", "ValidateService"],
            ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "ValidateService"],
        ),
        (["Smoke"], ["DownloadBundle", "Install", "Smoke"]),
        (["DownloadBundle", "BeforeInstall"], ["DownloadBundle", "BeforeInstall", "Install"]),
    ],
)
def test_download_bundle_and_install_are_inserted(
    requested: list[str], expected: list[str] | None
) -> None:
    events, _ = resolve_events(requested)
    if expected is None:
        assert events[1] == "DownloadBundle" and len(events) == 7
    else:
        assert events == expected


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ("AfterInstall,DownloadBundle", "cannot run before DownloadBundle"),
        ("DownloadBundle,AfterInstall,Install", "cannot run before Install"),
        ("BlockTraffic", "load-balancer step"),
        ("Smoke,Smoke", "listed twice"),
        ("bad name!", "not an event name"),
    ],
)
def test_bad_event_lists_are_usage_errors(tmp_path: Path, events: str, message: str) -> None:
    bundle = _bundle(tmp_path / "bundle", hooks=STANDARD)

    result = _run(tmp_path, "--bundle", str(bundle), "--events", events)

    assert result.exit_code == 2
    assert message in result.output


def test_a_directory_without_an_appspec_is_explained(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "AppSpec.yml").write_text("version: 0.0\n")

    result = _run(tmp_path, "--bundle", str(tmp_path / "empty"))

    assert result.exit_code == 1
    assert "no appspec.yml" in result.output and "AppSpec.yml" in result.output
