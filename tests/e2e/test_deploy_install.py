"""DownloadBundle and Install over real agents: unsafe bundles refused, file_exists_behavior,
and ``runas``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_support import (
    FIRST_ORDER,
    Environment,
    RawEntry,
    events_of,
    hook_lines,
    hook_script,
    raw_tgz,
    unique,
    write_bundle,
)

pytestmark = pytest.mark.e2e

RUNAS_USER = "od-e2e-runner"


@pytest.fixture(scope="module")
def e2e() -> Iterator[Environment]:
    """As conftest's, but in a directory every user may traverse: a ``runas`` hook runs as
    another user, who must reach the deployment archive (pytest's own tmp dirs are 0700)."""
    workdir = Path(tempfile.mkdtemp(prefix="od-e2e-install-"))
    workdir.chmod(0o755)
    environment = Environment.start(workdir, hosts=3)
    try:
        yield environment
    finally:
        environment.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- unsafe bundles ----------------------------------------------------------------------------


def _bundle_entries(destination: str) -> list[RawEntry]:
    appspec = {
        "version": 0.0,
        "os": "linux",
        "files": [{"source": "app", "destination": destination}],
        "hooks": {"BeforeInstall": [{"location": "scripts/before_install.sh", "timeout": 30}]},
    }
    return [
        RawEntry("appspec.yml", yaml.safe_dump(appspec).encode()),
        RawEntry("scripts/before_install.sh", hook_script("before_install").encode(), mode=0o755),
        RawEntry("app/index.html", b"hello\n"),
    ]


@pytest.mark.parametrize("kind", ["zip-slip", "symlink-escape"])
def test_an_unsafe_bundle_is_refused_at_download(e2e: Environment, kind: str) -> None:
    marker = unique("od-e2e-escaped")
    outside = Path("/tmp") / marker
    if kind == "zip-slip":
        entry = "../evil"
        unsafe = [RawEntry(entry, b"evil\n")]
    else:
        entry = "escape"
        unsafe = [RawEntry(entry, link="/"), RawEntry(f"escape/tmp/{marker}", b"evil\n")]
    destination = f"/srv/{unique('unsafe')}"
    agents = e2e.agents[:3]
    application = e2e.application()
    group = e2e.group(application, agents)
    revision = e2e.upload_raw(application, raw_tgz([*_bundle_entries(destination), *unsafe]))
    deployment_id, _ = e2e.run(application, group, revision, expect="Failed")

    targets = e2e.targets(deployment_id)
    for agent in agents:
        events = events_of(targets[agent.name])
        download = events["DownloadBundle"]
        assert download["status"] == "Failed", (agent.name, download)
        message = download["diagnostics"]["message"]
        assert f"'{entry}'" in message, message
        for name in ("BeforeInstall", "Install", "AfterInstall", "ApplicationStart"):
            assert events[name]["status"] == "Skipped", (agent.name, events[name])
        assert hook_lines(agent, deployment_id) == []
        [directory] = agent.root.glob(f"*/{deployment_id}")
        assert not (directory / "deployment-archive").exists()
        leftovers = sorted(p.name for p in directory.iterdir() if p.name != "bundle.tar")
        assert leftovers == [], leftovers
        assert not (agent.destination_root / destination.lstrip("/")).exists()
    assert not outside.exists()
    assert list(e2e.workdir.rglob("evil")) == []
    assert list(e2e.workdir.rglob(marker)) == []


# -- file_exists_behavior ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "in_appspec", "expected"),
    [
        ("DISALLOW", None, "fail"),
        ("OVERWRITE", None, "bundle"),
        ("RETAIN", None, "unmanaged"),
        ("RETAIN", "OVERWRITE", "bundle"),
        ("OVERWRITE", "RETAIN", "unmanaged"),
    ],
)
def test_file_exists_behavior(
    e2e: Environment, tmp_path: Path, requested: str, in_appspec: str | None, expected: str
) -> None:
    agents = e2e.agents[:3]
    destination = f"/srv/{unique('exists')}"
    for agent in agents:
        target = agent.destination_root / destination.lstrip("/")
        target.mkdir(parents=True)
        (target / "index.html").write_text(f"unmanaged on {agent.name}\n")
        (target / "keep.txt").write_text("not the agent's\n")
    application = e2e.application()
    group = e2e.group(application, agents)
    bundle = write_bundle(
        tmp_path / "bundle",
        destination=destination,
        content="from the bundle\n",
        file_exists_behavior=in_appspec,
    )
    revision = e2e.push(application, bundle)
    deployment_id, info = e2e.run(
        application,
        group,
        revision,
        fileExistsBehavior=requested,
        expect="Failed" if expected == "fail" else "Succeeded",
    )
    assert info["fileExistsBehavior"] == requested

    targets = e2e.targets(deployment_id)
    for agent in agents:
        target = agent.destination_root / destination.lstrip("/")
        installed = (target / "index.html").read_text()
        events = events_of(targets[agent.name])
        if expected == "fail":
            install = events["Install"]
            assert install["status"] == "Failed", (agent.name, install)
            message = install["diagnostics"]["message"]
            assert "index.html" in message, message
            assert "exist" in message, message
            assert events["AfterInstall"]["status"] == "Skipped"
            assert [line.event for line in hook_lines(agent, deployment_id)] == ["BeforeInstall"]
        else:
            assert [line.event for line in hook_lines(agent, deployment_id)] == FIRST_ORDER
        wanted = "from the bundle\n" if expected == "bundle" else f"unmanaged on {agent.name}\n"
        assert installed == wanted, (agent.name, installed)
        assert (target / "keep.txt").read_text() == "not the agent's\n"


# -- runas -------------------------------------------------------------------------------------


@pytest.fixture
def runas_user() -> Iterator[str]:
    """A non-root account for ``runas`` (created for the test when it is missing)."""
    if os.geteuid() != 0:
        pytest.skip("runas needs an agent running as root")
    created = False
    try:
        pwd.getpwnam(RUNAS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", RUNAS_USER],
            check=True,
            capture_output=True,
        )
        created = True
    try:
        yield RUNAS_USER
    finally:
        if created:
            subprocess.run(["userdel", RUNAS_USER], check=False, capture_output=True)


def test_runas_runs_the_hook_as_that_user(
    e2e: Environment, tmp_path: Path, runas_user: str
) -> None:
    agent = e2e.agents[0]
    who = '#!/bin/bash\necho "hook user $(id -un) uid $(id -u) home $HOME for $LIFECYCLE_EVENT"\n'
    bundle = write_bundle(
        tmp_path / "runas",
        destination=f"/srv/{unique('runas')}",
        scripts={"scripts/who.sh": who},
        hooks={
            "AfterInstall": [{"location": "scripts/who.sh", "timeout": 30}],
            "ApplicationStart": [
                {"location": "scripts/who.sh", "timeout": 30, "runas": runas_user}
            ],
        },
    )
    application = e2e.application()
    group = e2e.group(application, [agent])
    deployment_id, _ = e2e.run(application, group, e2e.push(application, bundle))
    [scripts_log] = agent.root.glob(f"*/{deployment_id}/logs/scripts.log")
    text = scripts_log.read_text()
    account = pwd.getpwnam(runas_user)
    assert "[stdout]hook user root uid 0 home " in text, text
    expected = f"[stdout]hook user {runas_user} uid {account.pw_uid} home {account.pw_dir}"
    assert f"{expected} for ApplicationStart" in text, text
