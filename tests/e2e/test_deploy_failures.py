"""Failures over real agents: a failing first batch, failed-first ordering, a hook that outlives
its timeout and ignores TERM, and an agent killed in the middle of a hook."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from e2e_support import (
    Environment,
    events_of,
    hook_lines,
    hook_script,
    kill_processes_with,
    processes_with,
    running,
    unique,
    write_bundle,
)
from sqlalchemy import select

from opendeploy.localfleet import LocalAgent
from opendeploy.store import deployments as stored_deployments
from opendeploy.store.database import Database
from opendeploy.store.tables import host_commands

pytestmark = pytest.mark.e2e

FAILING = hook_script(
    "fail",
    """\
    for i in $(seq 1 300); do echo "output line $i of the failing script"; done
    echo "something went wrong" >&2
    exit 1
    """,
)


def _full_log(e2e: Environment, deployment_id: str, instance: str, event: str) -> str:
    """The event's whole log as the server stored it (PutHostCommandLog), once it is there."""
    database = Database(f"sqlite:///{e2e.server.data_dir / 'opendeploy.db'}")
    try:
        with database.read() as connection:
            command_id = connection.execute(
                select(host_commands.c.id).where(
                    host_commands.c.deployment_id == deployment_id,
                    host_commands.c.instance_name == instance,
                    host_commands.c.event == event,
                )
            ).scalar_one()
        until = time.monotonic() + 10  # the last chunk may follow the completion
        while True:
            with database.read() as connection:
                text = stored_deployments.log_of(connection, command_id) or ""
            if "something went wrong" in text or time.monotonic() > until:
                return text
            time.sleep(0.1)
    finally:
        database.dispose()


def test_a_failure_in_the_first_batch_stops_the_rollout(e2e: Environment, tmp_path: Path) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = e2e.group(application, agents, "CodeDeployDefault.OneAtATime")
    bundle = write_bundle(
        tmp_path / "failing",
        destination=f"/srv/{unique('fail')}",
        scripts={"scripts/fail.sh": FAILING},
        hooks={"AfterInstall": [{"location": "scripts/fail.sh", "timeout": 30}]},
    )
    revision = e2e.push(application, bundle)
    deployment_id, info = e2e.run(application, group, revision, expect="Failed")

    targets = e2e.targets(deployment_id)
    failed = [name for name, target in targets.items() if target["status"] == "Failed"]
    assert len(failed) == 1, {name: t["status"] for name, t in targets.items()}
    [host] = failed
    error = info["errorInformation"]
    assert error["code"] == "HEALTH_CONSTRAINTS", error
    for detail in (host, "AfterInstall", "scripts/fail.sh"):
        assert detail in error["message"], (detail, error)
    assert info["deploymentOverview"]["Failed"] == 1
    assert info["deploymentOverview"]["Skipped"] == 2

    events = events_of(targets[host])
    for name in ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install"):
        assert events[name]["status"] == "Succeeded", events[name]
    failure = events["AfterInstall"]
    assert failure["status"] == "Failed"
    diagnostics = failure["diagnostics"]
    assert diagnostics["errorCode"] == "ScriptFailed", diagnostics
    assert diagnostics["scriptName"] == "scripts/fail.sh"
    assert "exit code 1" in diagnostics["message"]
    assert "something went wrong" in diagnostics["logTail"]
    assert "output line 300 of the failing script" in diagnostics["logTail"]
    assert "output line 1 of" not in diagnostics["logTail"]  # a tail, not the whole output
    for name in ("ApplicationStart", "ValidateService"):
        assert events[name]["status"] == "Skipped", events[name]

    for name, target in targets.items():
        if name == host:
            continue
        assert target["status"] == "Skipped", target
        assert {event["status"] for event in target["lifecycleEvents"]} == {"Skipped"}, target

    for agent in agents:
        ran = [line.script for line in hook_lines(agent, deployment_id)]
        assert ran == (["before_install", "fail"] if agent.name == host else []), (agent.name, ran)

    full = _full_log(e2e, deployment_id, host, "AfterInstall")
    assert "output line 1 of the failing script" in full
    assert "output line 300 of the failing script" in full
    assert "something went wrong" in full


def test_the_next_deployment_starts_with_the_failed_host(e2e: Environment, tmp_path: Path) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = e2e.group(application, agents, "CodeDeployDefault.OneAtATime")
    destination = f"/srv/{unique('order')}"
    # Fails on the third host to run it: the last one, whose failure OneAtATime tolerates.
    counter = tmp_path / "runs"
    third_fails = hook_script(
        "count",
        f"""\
        runs=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))
        echo $runs > {counter}
        [ $runs -lt 3 ] || exit 1
        """,
    )
    bundle = write_bundle(
        tmp_path / "third-fails",
        destination=destination,
        scripts={"scripts/count.sh": third_fails},
        hooks={"ValidateService": [{"location": "scripts/count.sh", "timeout": 30}]},
    )
    first_id, _ = e2e.run(application, group, e2e.push(application, bundle))

    def order(deployment_id: str) -> list[str]:
        starts = {}
        for agent in agents:
            lines = hook_lines(agent, deployment_id)
            assert lines, (agent.name, deployment_id)
            starts[agent.name] = min(line.ns for line in lines)
        return sorted(starts, key=starts.__getitem__)

    first_order = order(first_id)
    statuses = {name: t["status"] for name, t in e2e.targets(first_id).items()}
    last = first_order[-1]
    assert statuses == {name: "Failed" if name == last else "Succeeded" for name in first_order}

    good = write_bundle(tmp_path / "good", destination=destination, content="fixed\n")
    second_id, _ = e2e.run(application, group, e2e.push(application, good))
    second_order = order(second_id)
    assert second_order[0] == last, (
        f"the host that failed ({last}) should go first; first deployment {first_order},"
        f" second {second_order}"
    )


def test_a_hook_that_ignores_term_is_killed_at_its_timeout(
    e2e: Environment, tmp_path: Path
) -> None:
    agent = e2e.agents[0]
    marker = unique("od-e2e-sleeper")
    hang = hook_script(
        "hang",
        f"""\
        trap '' TERM
        echo "ignoring TERM"
        ( exec -a {marker} sleep 60 )
        """,
    )
    application = e2e.application()
    group = e2e.group(application, [agent])
    bundle = write_bundle(
        tmp_path / "hang",
        destination=f"/srv/{unique('hang')}",
        scripts={"scripts/hang.sh": hang},
        hooks={"ApplicationStart": [{"location": "scripts/hang.sh", "timeout": 2}]},
    )
    revision = e2e.push(application, bundle)
    try:
        deployment_id = e2e.deploy(application, group, revision)
        until = time.monotonic() + 30
        while not (sleepers := processes_with(marker)):
            assert time.monotonic() < until, "the hook's sleep never started\n" + e2e.logs()
            time.sleep(0.05)
        [(pid, session, _)] = sleepers
        assert agent.process is not None
        assert session not in (os.getsid(0), agent.process.pid)  # the hook's own session
        info = e2e.wait(deployment_id)
        assert info["status"] == "Failed", e2e.explain(deployment_id)
        event = events_of(e2e.targets(deployment_id)[agent.name])["ApplicationStart"]
        assert event["status"] == "Failed"
        diagnostics = event["diagnostics"]
        assert diagnostics["errorCode"] == "ScriptTimedOut", diagnostics
        assert diagnostics["scriptName"] == "scripts/hang.sh"
        assert "2 seconds" in diagnostics["message"]
        assert "ignoring TERM" in diagnostics["logTail"]
        assert processes_with(marker) == []
        assert not running(pid)  # killed (at most a zombie until init reaps it)
        [scripts_log] = agent.root.glob(f"*/{deployment_id}/logs/scripts.log")
        assert "outlived SIGTERM; sent SIGKILL" in scripts_log.read_text()
    finally:
        kill_processes_with(marker)


@pytest.fixture(scope="module")
def crash_host(e2e: Environment) -> LocalAgent:
    """A host of its own for the tests that kill its agent (which they restart)."""
    [agent] = e2e.add_hosts(1, prefix="crash")
    return agent


def _kill_the_agent_mid_hook(
    e2e: Environment, agent: LocalAgent, tmp_path: Path, marker: str
) -> str:
    """SIGKILL ``agent`` while a hook of a new deployment runs, restart it; the deployment
    (by then terminal)."""
    long_hook = hook_script("long", f"( exec -a {marker} sleep 60 )\n")
    application = e2e.application()
    group = e2e.group(application, [agent])
    bundle = write_bundle(
        tmp_path / "long",
        destination=f"/srv/{unique('long')}",
        scripts={"scripts/long.sh": long_hook},
        hooks={"ApplicationStart": [{"location": "scripts/long.sh", "timeout": 60}]},
    )
    deployment_id = e2e.deploy(application, group, e2e.push(application, bundle))
    until = time.monotonic() + 30
    while not processes_with(marker):
        assert time.monotonic() < until, "the long hook never started\n" + e2e.logs()
        time.sleep(0.05)
    assert agent.process is not None
    agent.process.send_signal(signal.SIGKILL)
    agent.process.wait(timeout=10)
    agent.start()
    info = e2e.wait(deployment_id)
    assert info["status"] == "Failed", e2e.explain(deployment_id)
    return deployment_id


def test_an_agent_killed_mid_hook_fails_the_event_after_restart(
    e2e: Environment, crash_host: LocalAgent, tmp_path: Path
) -> None:
    agent = crash_host
    marker = unique("od-e2e-long")
    try:
        deployment_id = _kill_the_agent_mid_hook(e2e, agent, tmp_path, marker)
        events = events_of(e2e.targets(deployment_id)[agent.name])
        event = events["ApplicationStart"]
        assert event["status"] == "Failed", event
        diagnostics = event["diagnostics"]
        assert diagnostics["errorCode"] == "UnknownError", diagnostics
        assert "agent restart" in diagnostics["message"], diagnostics
        assert events["ValidateService"]["status"] == "Skipped"
        time.sleep(1)  # time enough for a wrongly repeated event to show up
        ran = [line.script for line in hook_lines(agent, deployment_id)]
        assert ran == ["before_install", "after_install", "long"], ran
    finally:
        kill_processes_with(marker)


def test_a_restarted_agent_stops_the_interrupted_hook(
    e2e: Environment, crash_host: LocalAgent, tmp_path: Path
) -> None:
    marker = unique("od-e2e-orphan")
    try:
        _kill_the_agent_mid_hook(e2e, crash_host, tmp_path, marker)
        left = processes_with(marker)
        assert left == [], f"the interrupted hook still runs after the restart: {left}"
    finally:
        kill_processes_with(marker)
