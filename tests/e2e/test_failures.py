"""Automatic rollbacks over real agents (codedeploy-spec §8.5, issue 4 "Rollback").

A rollback is a new deployment (creator ``codeDeployRollback``) of the group's last good
revision, with ``rollbackInfo`` on both deployments. It is faster than CodeDeploy's: the hosts
still have the good revision on disk, so they copy it instead of downloading it, and it still
runs the whole lifecycle (the failed revision's ApplicationStop, then the good one's hooks).

Revisions here are labelled: revision A's hooks record themselves as ``stop@A``,
``validate@A``..., and install ``index.html`` = ``"A\\n"``; so the hooks' own record tells whose
script ran where, and the file on disk tells whose files are installed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from crash_support import (
    deployments_of,
    downloaded,
    group_of,
    labelled_bundle,
    lines_of,
    wait_until,
)
from e2e_support import Environment, events_of, unique

from opendeploy.localfleet import LocalAgent

pytestmark = pytest.mark.e2e

ROLLBACK_CREATOR = "codeDeployRollback"
ON_FAILURE = {"enabled": True, "events": ["DEPLOYMENT_FAILURE"]}
ON_STOP = {"enabled": True, "events": ["DEPLOYMENT_STOP_ON_REQUEST"]}
REUSED = "reusing it, nothing downloaded"


def _rollback_lines(good: str, failed: str) -> list[tuple[str, str]]:
    """What a host's hooks record during a rollback to ``good`` from ``failed``."""
    return [
        (f"stop@{failed}", "ApplicationStop"),
        (f"before_install@{good}", "BeforeInstall"),
        (f"after_install@{good}", "AfterInstall"),
        (f"start@{good}", "ApplicationStart"),
        (f"validate@{good}", "ValidateService"),
    ]


def _installed(agent: LocalAgent, destination: str) -> str:
    return (agent.destination_root / destination.lstrip("/") / "index.html").read_text()


def _check_rollback(
    e2e: Environment, rollback_id: str, triggering_id: str, good_id: str
) -> dict[str, Any]:
    """The rollback deployment is what §8.5 says, and it succeeds; its final info."""
    info = e2e.wait(rollback_id)
    assert info["status"] == "Succeeded", e2e.explain(rollback_id)
    assert info["creator"] == ROLLBACK_CREATOR, info
    assert info["rollbackInfo"] == {
        "rollbackTriggeringDeploymentId": triggering_id,
        "rollbackMessage": f"Deployment {rollback_id} is triggered to roll back deployment "
        f"{triggering_id}.",
    }, info
    good = e2e.codedeploy.get_deployment(deploymentId=good_id)["deploymentInfo"]
    assert info["revision"] == good["revision"], (info["revision"], good["revision"])
    return info


def _check_no_download(
    e2e: Environment, agents: Sequence[LocalAgent], application: str, group: str, rollback_id: str
) -> None:
    """Every host copied the good revision it still had: no bundle written, and its log says
    so for the rollback."""
    group_id = e2e.codedeploy.get_deployment_group(
        applicationName=application, deploymentGroupName=group
    )["deploymentGroupInfo"]["deploymentGroupId"]
    for agent in agents:
        assert not downloaded(agent, group_id, rollback_id), agent.name
        log = agent.log_path.read_text()
        reused = [
            line for line in log.splitlines() if f"[{rollback_id}]" in line and REUSED in line
        ]
        assert len(reused) == 1, (agent.name, log[-3000:])
        events = events_of(e2e.targets(rollback_id)[agent.name])
        assert events["DownloadBundle"]["status"] == "Succeeded", events


def test_a_failed_deployment_rolls_back_to_the_last_good_revision(
    e2e: Environment, tmp_path: Path
) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = group_of(e2e, application, agents, rollback=ON_FAILURE)
    destination = f"/srv/{unique('rollback')}"
    good = labelled_bundle(tmp_path / "a", destination=destination, label="A")
    good_id, _ = e2e.run(application, group, e2e.push(application, good))
    bad = labelled_bundle(
        tmp_path / "b", destination=destination, label="B", extra={"validate": "exit 1"}
    )
    bad_id, bad_info = e2e.run(application, group, e2e.push(application, bad), expect="Failed")

    rollback_id = bad_info.get("rollbackInfo", {}).get("rollbackDeploymentId")
    assert rollback_id, bad_info
    assert bad_info["rollbackInfo"] == {
        "rollbackDeploymentId": rollback_id,
        "rollbackMessage": f"Deployment {bad_id} terminated. Automatic rollback is triggered "
        f"with a DeploymentId {rollback_id}.",
    }
    assert bad_info["errorInformation"]["code"] == "HEALTH_CONSTRAINTS", bad_info
    info = _check_rollback(e2e, rollback_id, bad_id, good_id)
    assert info["deploymentOverview"]["Succeeded"] == len(agents), info
    # The failed deployment keeps its own terminal state and gets nothing else.
    assert e2e.codedeploy.get_deployment(deploymentId=bad_id)["deploymentInfo"]["status"] == (
        "Failed"
    )
    assert deployments_of(e2e.codedeploy, application, group) == {good_id, bad_id, rollback_id}

    for agent in agents:
        assert [script for script, _ in lines_of(agent, bad_id)][-1] == "validate@B"
        # The full lifecycle: B's ApplicationStop (B is what was installed), then A's hooks.
        assert lines_of(agent, rollback_id) == _rollback_lines("A", "B"), agent.name
        assert _installed(agent, destination) == "A\n", agent.name
    _check_no_download(e2e, agents, application, group, rollback_id)
    # ...whereas the deployments of A and B did download their bundles.
    group_id = e2e.codedeploy.get_deployment_group(
        applicationName=application, deploymentGroupName=group
    )["deploymentGroupInfo"]["deploymentGroupId"]
    assert all(downloaded(agent, group_id, bad_id) for agent in agents)


def test_without_a_good_revision_no_rollback_is_created(e2e: Environment, tmp_path: Path) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = group_of(e2e, application, agents, rollback=ON_FAILURE)
    bad = labelled_bundle(
        tmp_path / "b",
        destination=f"/srv/{unique('no-good')}",
        label="B",
        extra={"validate": "exit 1"},
    )
    bad_id, info = e2e.run(application, group, e2e.push(application, bad), expect="Failed")

    rollback_info = info.get("rollbackInfo") or {}
    assert "rollbackDeploymentId" not in rollback_info, info
    message = rollback_info.get("rollbackMessage", "")
    assert "rollback was not started" in message, info
    assert "no earlier successful deployment" in message, info
    assert group in message, info
    time.sleep(1)  # a rollback created late would show up by now
    assert deployments_of(e2e.codedeploy, application, group) == {bad_id}


@pytest.mark.parametrize(
    ("rollback", "auto_rollback_enabled", "expect_rollback"),
    [
        pytest.param(None, True, True, id="StopDeployment-autoRollbackEnabled"),
        pytest.param(ON_STOP, None, True, id="group-DEPLOYMENT_STOP_ON_REQUEST"),
        pytest.param(ON_STOP, False, False, id="group-rollback-refused-by-the-stop"),
    ],
)
def test_a_stopped_deployment_rolls_back_when_asked(
    e2e: Environment,
    tmp_path: Path,
    rollback: Mapping[str, Any] | None,
    auto_rollback_enabled: bool | None,
    expect_rollback: bool,
) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = group_of(
        e2e, application, agents, config="CodeDeployDefault.OneAtATime", rollback=rollback
    )
    destination = f"/srv/{unique('stop')}"
    good = labelled_bundle(tmp_path / "a", destination=destination, label="A")
    good_id, _ = e2e.run(
        application,
        group,
        e2e.push(application, good),
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
    )
    slow = {name: "sleep 0.3" for name in ("stop", "before_install", "after_install", "start")}
    bad = labelled_bundle(tmp_path / "b", destination=destination, label="B", extra=slow)
    bad_id = e2e.deploy(application, group, e2e.push(application, bad))

    # Stop once the second host has begun (the first is done): mid-way through the rollout.
    wait_until(
        lambda: sum(1 for agent in agents if lines_of(agent, bad_id)) >= 2,
        timeout=30,
        what="the second host starting",
        explain=lambda: e2e.explain(bad_id),
    )
    stop: dict[str, Any] = {"deploymentId": bad_id}
    if auto_rollback_enabled is not None:
        stop["autoRollbackEnabled"] = auto_rollback_enabled
    e2e.codedeploy.stop_deployment(**stop)
    info = e2e.wait(bad_id)
    assert info["status"] == "Stopped", e2e.explain(bad_id)
    assert info["errorInformation"]["code"] == "MANUAL_STOP", info
    statuses = {name: target["status"] for name, target in e2e.targets(bad_id).items()}
    assert "Succeeded" in statuses.values(), statuses  # the first host finished
    assert "Skipped" in statuses.values(), statuses  # the last one never started

    if not expect_rollback:
        assert "rollbackDeploymentId" not in (info.get("rollbackInfo") or {}), info
        time.sleep(1)
        assert deployments_of(e2e.codedeploy, application, group) == {good_id, bad_id}
        return
    rollback_id = info.get("rollbackInfo", {}).get("rollbackDeploymentId")
    assert rollback_id, info
    assert info["rollbackInfo"]["rollbackMessage"] == (
        f"Deployment {bad_id} terminated. Automatic rollback is triggered with a DeploymentId "
        f"{rollback_id}."
    )
    _check_rollback(e2e, rollback_id, bad_id, good_id)
    for agent in agents:
        assert _installed(agent, destination) == "A\n", agent.name
        # ApplicationStop runs the scripts of what each host last installed: B where B's
        # Install went through before the stop, A elsewhere.
        installed_b = events_of(e2e.targets(bad_id)[agent.name])["Install"]["status"]
        stopped_with = "B" if installed_b == "Succeeded" else "A"
        assert lines_of(agent, rollback_id) == _rollback_lines("A", stopped_with), (
            agent.name,
            installed_b,
        )
    _check_no_download(e2e, agents, application, group, rollback_id)
    assert deployments_of(e2e.codedeploy, application, group) == {good_id, bad_id, rollback_id}


def test_a_failed_rollback_does_not_start_another(e2e: Environment, tmp_path: Path) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = group_of(e2e, application, agents, rollback=ON_FAILURE)
    destination = f"/srv/{unique('twice')}"
    # Every revision's ValidateService fails once the flag is there: A succeeds before it is
    # set, then B fails, and so does the rollback to A.
    flag = tmp_path / "broken"
    check = f'[ ! -e "{flag}" ] || {{ echo "the service is broken"; exit 1; }}'
    for label in ("A", "B"):
        labelled_bundle(
            tmp_path / label, destination=destination, label=label, extra={"validate": check}
        )
    good_id, _ = e2e.run(application, group, e2e.push(application, tmp_path / "A"))
    flag.touch()
    bad_id, bad_info = e2e.run(
        application, group, e2e.push(application, tmp_path / "B"), expect="Failed"
    )
    rollback_id = bad_info["rollbackInfo"]["rollbackDeploymentId"]

    info = e2e.wait(rollback_id)
    assert info["status"] == "Failed", e2e.explain(rollback_id)
    assert info["creator"] == ROLLBACK_CREATOR
    # Its rollbackInfo still only says what it rolled back: no rollback of its own, not even
    # a "not started" note.
    assert info["rollbackInfo"] == {
        "rollbackTriggeringDeploymentId": bad_id,
        "rollbackMessage": f"Deployment {rollback_id} is triggered to roll back deployment "
        f"{bad_id}.",
    }, info
    for agent in agents:
        assert lines_of(agent, rollback_id) == _rollback_lines("A", "B"), agent.name
        event = events_of(e2e.targets(rollback_id)[agent.name])["ValidateService"]
        assert event["status"] == "Failed", event
        assert "the service is broken" in event["diagnostics"]["logTail"], event
    time.sleep(1.5)  # a second rollback would have been created with the failure
    assert deployments_of(e2e.codedeploy, application, group) == {good_id, bad_id, rollback_id}
    assert e2e.codedeploy.get_deployment(deploymentId=bad_id)["deploymentInfo"]["rollbackInfo"][
        "rollbackDeploymentId"
    ] == (rollback_id)


def test_a_rollback_ignores_the_failed_revisions_application_stop_failure(
    e2e: Environment, tmp_path: Path
) -> None:
    """Issue 4: a rollback "still runs the full hooks (ApplicationStop of the failed revision
    with failures ignored, ...)": a revision whose stop script is as broken as the rest of it
    must not keep the hosts from going back to the good one."""
    agents = e2e.agents[:3]
    application = e2e.application()
    group = group_of(e2e, application, agents, rollback=ON_FAILURE)
    destination = f"/srv/{unique('bad-stop')}"
    good = labelled_bundle(tmp_path / "a", destination=destination, label="A")
    good_id, _ = e2e.run(application, group, e2e.push(application, good))
    bad = labelled_bundle(
        tmp_path / "b",
        destination=destination,
        label="B",
        extra={"stop": "exit 1", "validate": "exit 1"},
    )
    bad_id, bad_info = e2e.run(application, group, e2e.push(application, bad), expect="Failed")
    rollback_id = bad_info["rollbackInfo"]["rollbackDeploymentId"]

    info = e2e.wait(rollback_id)
    for agent in agents:
        event = events_of(e2e.targets(rollback_id)[agent.name])["ApplicationStop"]
        assert event["diagnostics"]["scriptName"] == "scripts/stop.sh", event
    assert info["status"] == "Succeeded", e2e.explain(rollback_id)
    assert info["ignoreApplicationStopFailures"] is True, info
    _check_rollback(e2e, rollback_id, bad_id, good_id)
    for agent in agents:
        event = events_of(e2e.targets(rollback_id)[agent.name])["ApplicationStop"]
        assert event["status"] == "Succeeded", event
        assert event["diagnostics"]["message"].startswith("Failure ignored"), event
        assert lines_of(agent, rollback_id) == _rollback_lines("A", "B"), agent.name
        assert _installed(agent, destination) == "A\n", agent.name
