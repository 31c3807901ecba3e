"""Surviving crashes (issue 4): real server and agent processes killed with SIGKILL, frozen
with SIGSTOP, or away for half a minute, in the middle of deployments.

One ``CrashBed`` for the module: a server on a fixed port (so it can be killed and started
again on the same data dir, at the URL its agents know) and three agents that heartbeat every
half second. Each test makes its own application and group over the three hosts; a test that
needs another heartbeat timeout restarts the server with it.

The outage test goes last: the idle agents back off their polls while the server is away.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_support import (
    CrashBed,
    group_of,
    labelled_bundle,
    lines_of,
    wait_until,
)
from e2e_support import events_of, hook_lines, kill_processes_with, processes_with, unique

from opendeploy.core.lifecycle import IN_PLACE_EVENTS
from opendeploy.localfleet import LocalAgent

pytestmark = pytest.mark.e2e

ON_FAILURE = {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
HEARTBEAT_TIMEOUT = 30.0
FROZEN_HEARTBEAT_TIMEOUT = 3.0
#: How long the server stays away in the outage test, and the heartbeat timeout it comes back
#: with: longer than the outage plus the agents' backoff, so only their reports decide.
OUTAGE = 30.0
OUTAGE_HEARTBEAT_TIMEOUT = 120.0
SLOW = {name: "sleep 0.5" for name in ("stop", "before_install", "after_install", "start")}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashBed]:
    environment = CrashBed.launch(
        tmp_path_factory.mktemp("crash"), hosts=3, heartbeat_timeout=HEARTBEAT_TIMEOUT
    )
    yield environment
    environment.stop()


def _later(label: str, previous: str) -> list[tuple[str, str]]:
    """A host's hook record for a deployment of ``label`` over ``previous``."""
    return [
        (f"stop@{previous}", "ApplicationStop"),
        (f"before_install@{label}", "BeforeInstall"),
        (f"after_install@{label}", "AfterInstall"),
        (f"start@{label}", "ApplicationStart"),
        (f"validate@{label}", "ValidateService"),
    ]


def _first(label: str) -> list[tuple[str, str]]:
    return _later(label, "-")[1:]


def _installed(agent: LocalAgent, destination: str) -> str:
    return (agent.destination_root / destination.lstrip("/") / "index.html").read_text()


def _good_revision(
    bed: CrashBed, tmp_path: Path, application: str, group: str, destination: str, **extra: str
) -> str:
    """Deploy revision A to the whole group at once; its deployment id."""
    bundle = labelled_bundle(tmp_path / "A", destination=destination, label="A", extra=extra)
    deployment_id, _ = bed.run(
        application,
        group,
        bed.push(application, bundle),
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
    )
    return deployment_id


def test_the_server_killed_mid_rollout_finishes_it(bed: CrashBed, tmp_path: Path) -> None:
    bed.ensure_heartbeat_timeout(HEARTBEAT_TIMEOUT)
    agents = bed.agents[:3]
    application = bed.application()
    group = group_of(bed, application, agents, config="CodeDeployDefault.OneAtATime")
    destination = f"/srv/{unique('server-kill')}"
    _good_revision(bed, tmp_path, application, group, destination)
    bundle = labelled_bundle(tmp_path / "B", destination=destination, label="B", extra=SLOW)
    deployment_id = bed.deploy(application, group, bed.push(application, bundle))

    # SIGKILL the server while the second host runs its first hook (mid-way through the
    # rollout, with that hook's report still to come), then start it again on the same data
    # dir and port.
    wait_until(
        lambda: sum(1 for agent in agents if lines_of(agent, deployment_id)) >= 2,
        timeout=30,
        what="the second host starting",
        explain=lambda: bed.explain(deployment_id),
    )
    restarts = bed.restarts
    bed.kill_server()
    assert bed.server_is_down()
    bed.start_server()
    assert bed.restarts == restarts + 1
    assert sum(1 for agent in agents if lines_of(agent, deployment_id)) == 2  # still mid-way

    info = bed.wait(deployment_id)
    assert info["status"] == "Succeeded", bed.explain(deployment_id)
    # No host ran an event twice, and they still went one at a time.
    spans = []
    for agent in agents:
        assert lines_of(agent, deployment_id) == _later("B", "A"), agent.name
        assert _installed(agent, destination) == "B\n", agent.name
        stamps = [line.ns for line in hook_lines(agent, deployment_id)]
        spans.append((stamps[0], stamps[-1]))
    spans.sort()
    assert all(end < start for (_, end), (start, _) in itertools.pairwise(spans))
    # Each lifecycle event was recorded once: one host command per host and event, all
    # Succeeded.
    rows = bed.host_commands(deployment_id)
    counts = Counter((row.instance_name, row.event) for row in rows)
    assert counts == Counter(
        {(agent.name, event): 1 for agent in agents for event in IN_PLACE_EVENTS}
    ), counts
    assert {row.status for row in rows} == {"Succeeded"}, rows
    for name, target in bed.targets(deployment_id).items():
        assert [e["status"] for e in target["lifecycleEvents"]] == ["Succeeded"] * len(
            IN_PLACE_EVENTS
        ), (name, target)


def test_an_agent_killed_mid_hook_fails_its_host_and_the_deployment_rolls_back(
    bed: CrashBed, tmp_path: Path
) -> None:
    bed.ensure_heartbeat_timeout(HEARTBEAT_TIMEOUT)
    agents = bed.agents[:3]
    application = bed.application()
    group = group_of(
        bed, application, agents, config="CodeDeployDefault.OneAtATime", rollback=ON_FAILURE
    )
    destination = f"/srv/{unique('agent-kill')}"
    good_id = _good_revision(bed, tmp_path, application, group, destination)
    marker = unique("od-e2e-crash-sleep")
    bundle = labelled_bundle(
        tmp_path / "B",
        destination=destination,
        label="B",
        extra={"start": f"( exec -a {marker} sleep 5 )"},
    )
    deployment_id = bed.deploy(application, group, bed.push(application, bundle))
    try:
        wait_until(
            lambda: processes_with(marker),
            timeout=30,
            what="the long ApplicationStart hook",
            explain=lambda: bed.explain(deployment_id),
        )
        [killed] = [
            a for a in agents if ("start@B", "ApplicationStart") in lines_of(a, deployment_id)
        ]
        bed.restart_agent(killed)
        info = bed.wait(deployment_id)
    finally:
        kill_processes_with(marker)

    # OneAtATime goes by name among equally healthy hosts; its first host failing leaves too
    # few healthy ones: the deployment fails there and the other hosts are skipped.
    assert killed.name == min(agent.name for agent in agents)
    assert info["status"] == "Failed", bed.explain(deployment_id)
    error = info["errorInformation"]
    assert error["code"] == "HEALTH_CONSTRAINTS", error
    assert f"{killed.name} (ApplicationStart)" in error["message"], error
    targets = bed.targets(deployment_id)
    events = events_of(targets[killed.name])
    failed = events["ApplicationStart"]
    assert failed["status"] == "Failed", failed
    assert failed["diagnostics"]["errorCode"] == "UnknownError", failed
    assert "agent restart" in failed["diagnostics"]["message"], failed
    assert events["ValidateService"]["status"] == "Skipped", events
    for agent in agents:
        if agent is killed:
            # ApplicationStart ran once: the restarted agent reported it, it did not rerun it.
            assert lines_of(agent, deployment_id) == _later("B", "A")[:4]
        else:
            assert targets[agent.name]["status"] == "Skipped", targets[agent.name]
            assert lines_of(agent, deployment_id) == [], agent.name
    # The restarted agent clears its journal entry once the server has its report.
    wait_until(
        lambda: not list((killed.root / "ongoing-deployment").iterdir()),
        timeout=10,
        what="the journal entry cleared",
        explain=bed.logs,
    )

    # ...and the group's autoRollbackConfiguration brings A back everywhere.
    rollback_id = info["rollbackInfo"]["rollbackDeploymentId"]
    rollback = bed.wait(rollback_id)
    assert rollback["status"] == "Succeeded", bed.explain(rollback_id)
    assert rollback["creator"] == "codeDeployRollback"
    assert rollback["rollbackInfo"]["rollbackTriggeringDeploymentId"] == deployment_id
    good = bed.info(good_id)
    assert rollback["revision"] == good["revision"]
    for agent in agents:
        assert _installed(agent, destination) == "A\n", agent.name
        previous = "B" if agent is killed else "A"  # what each host last installed
        assert lines_of(agent, rollback_id) == _later("A", previous), agent.name


def test_a_broken_application_stop_is_unblocked_by_ignoring_its_failures(
    bed: CrashBed, tmp_path: Path
) -> None:
    bed.ensure_heartbeat_timeout(HEARTBEAT_TIMEOUT)
    agents = bed.agents[:3]
    application = bed.application()
    group = group_of(bed, application, agents)
    destination = f"/srv/{unique('broken-stop')}"
    broken = 'echo "cannot stop the service" >&2; exit 1'
    _good_revision(bed, tmp_path, application, group, destination, stop=broken)
    revision = bed.push(
        application, labelled_bundle(tmp_path / "B", destination=destination, label="B")
    )

    # A's broken stop script blocks B on every host...
    blocked_id, info = bed.run(application, group, revision, expect="Failed")
    for agent in agents:
        events = events_of(bed.targets(blocked_id)[agent.name])
        stop = events["ApplicationStop"]
        assert stop["status"] == "Failed", stop
        assert stop["diagnostics"]["errorCode"] == "ScriptFailed", stop
        assert stop["diagnostics"]["scriptName"] == "scripts/stop.sh", stop
        assert "cannot stop the service" in stop["diagnostics"]["logTail"], stop
        assert {events[name]["status"] for name in IN_PLACE_EVENTS[1:]} == {"Skipped"}
        assert lines_of(agent, blocked_id) == [("stop@A", "ApplicationStop")], agent.name
        assert _installed(agent, destination) == "A\n", agent.name
    assert "ApplicationStop, scripts/stop.sh" in info["errorInformation"]["message"], info

    # ...until the deployment ignores ApplicationStop failures.
    unblocked_id, info = bed.run(application, group, revision, ignoreApplicationStopFailures=True)
    assert info["ignoreApplicationStopFailures"] is True
    for agent in agents:
        stop = events_of(bed.targets(unblocked_id)[agent.name])["ApplicationStop"]
        assert stop["status"] == "Succeeded", stop
        assert stop["diagnostics"]["message"].startswith("Failure ignored"), stop
        assert lines_of(agent, unblocked_id) == _later("B", "A"), agent.name
        assert _installed(agent, destination) == "B\n", agent.name

    # B's own stop script works: the next deployment needs no option.
    bundle = labelled_bundle(tmp_path / "C", destination=destination, label="C")
    next_id, _ = bed.run(application, group, bed.push(application, bundle))
    for agent in agents:
        assert lines_of(agent, next_id) == _later("C", "B"), agent.name


def test_a_frozen_agent_loses_its_host_and_runs_nothing_stale(
    bed: CrashBed, tmp_path: Path
) -> None:
    bed.ensure_heartbeat_timeout(FROZEN_HEARTBEAT_TIMEOUT)
    agents = bed.agents[:3]
    application = bed.application()
    group = group_of(bed, application, agents, config="CodeDeployDefault.OneAtATime")
    destination = f"/srv/{unique('frozen')}"
    _good_revision(bed, tmp_path, application, group, destination)
    frozen = min(agents, key=lambda agent: agent.name)  # OneAtATime's first host
    bundle = labelled_bundle(tmp_path / "B", destination=destination, label="B")
    revision = bed.push(application, bundle)

    frozen.signal(signal.SIGSTOP)
    try:
        stale_id = bed.deploy(application, group, revision)
        info = bed.wait(stale_id, deadline=30)
    finally:
        frozen.signal(signal.SIGCONT)
    assert info["status"] == "Failed", bed.explain(stale_id)
    error = info["errorInformation"]
    assert error["code"] == "AGENT_ISSUE", error  # the heartbeat loss is the only cause
    assert "Agent heartbeat lost" in error["message"], error
    targets = bed.targets(stale_id)
    events = events_of(targets[frozen.name])
    lost = events["ApplicationStop"]
    assert lost["status"] == "Failed", lost
    assert lost["diagnostics"]["message"].startswith("Agent heartbeat lost"), lost
    assert lost["diagnostics"]["errorCode"] == "UnknownError", lost
    assert "no script was reported failing" in lost["diagnostics"]["message"], lost
    for agent in agents:
        if agent is not frozen:
            assert targets[agent.name]["status"] == "Skipped", targets[agent.name]

    # Thawed, it gets (or already holds) the stale command: the server answers its
    # acknowledgement with Failed, and it runs nothing.
    [command] = [row for row in bed.host_commands(stale_id) if row.instance_name == frozen.name]
    assert (command.event, command.status) == ("ApplicationStop", "Failed"), command
    settle = 1.5  # time enough for a wrongly run hook to show
    if command.dispatched_time is not None:
        settle = 0.5
        refusal = f"[{stale_id}] opendeploy.agent.loop: ApplicationStop: the server says it "
        refusal += "failed already; not running it"
        wait_until(
            lambda: refusal in frozen.log_path.read_text(),
            timeout=15,
            what="the thawed agent refusing the stale command",
            explain=bed.logs,
        )
    time.sleep(settle)
    for agent in agents:
        assert lines_of(agent, stale_id) == [], agent.name
        assert _installed(agent, destination) == "A\n", agent.name

    # A later deployment to it works (it goes first: its last attempt failed).
    later_id, _ = bed.run(application, group, revision)
    for agent in agents:
        assert lines_of(agent, later_id) == _later("B", "A"), agent.name
        assert _installed(agent, destination) == "B\n", agent.name
    first = min(hook_lines(agent, later_id)[0].ns for agent in agents)
    assert hook_lines(frozen, later_id)[0].ns == first


def test_the_agents_report_survives_a_30_second_server_outage(
    bed: CrashBed, tmp_path: Path
) -> None:
    # Whatever heartbeat timeout the server has now (the agents heartbeat during the hook):
    # it comes back from the outage with a long one.
    agents = bed.agents[:3]
    application = bed.application()
    group = group_of(bed, application, agents)
    marker = unique("od-e2e-outage")
    hook_seconds = OUTAGE - 2  # ends while the server is still away
    bundle = labelled_bundle(
        tmp_path / "A",
        destination=f"/srv/{unique('outage')}",
        label="A",
        extra={"after_install": f"( exec -a {marker} sleep {hook_seconds:.0f} )"},
        hooks={"AfterInstall": [{"location": "scripts/after_install.sh", "timeout": 120}]},
    )
    deployment_id = bed.deploy(application, group, bed.push(application, bundle))
    try:
        wait_until(
            lambda: len(processes_with(marker)) == len(agents),
            timeout=30,
            what="AfterInstall running on every host",
            explain=lambda: bed.explain(deployment_id),
        )
        bed.kill_server()
        time.sleep(OUTAGE)
        bed.start_server(heartbeat_timeout=OUTAGE_HEARTBEAT_TIMEOUT)
        info = bed.wait(deployment_id, deadline=60)
    finally:
        kill_processes_with(marker)

    assert info["status"] == "Succeeded", bed.explain(deployment_id)
    for name, target in bed.targets(deployment_id).items():
        event = events_of(target)["AfterInstall"]
        assert event["status"] == "Succeeded", (name, event)
        took = (event["endTime"] - event["startTime"]).total_seconds()
        assert took >= hook_seconds, (name, event)
    rows = bed.host_commands(deployment_id)
    assert Counter((row.instance_name, row.event) for row in rows) == Counter(
        {(agent.name, event): 1 for agent in agents for event in IN_PLACE_EVENTS}
    )
    assert {row.status for row in rows} == {"Succeeded"}, rows
    for agent in agents:
        assert lines_of(agent, deployment_id) == _first("A"), agent.name
        # The report was retried with backoff while the server was away.
        retries = [
            line
            for line in agent.log_path.read_text().splitlines()
            if f"[{deployment_id}]" in line
            and "PutHostCommandComplete" in line
            and "retrying in" in line
        ]
        assert len(retries) >= 2, (agent.name, retries)
