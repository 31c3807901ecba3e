"""Deployments through the public API of a real server, with simulated agents doing the work
(codedeploy-spec §3.5-§3.9, §6.2, §7.2, §8.1-§8.4).

Every test runs on SQLite and PostgreSQL, each on a server of its own (``agentsim.shared_site``,
shared with test_agent_protocol.py) with 1 s long polls, so the agents (daemon threads,
``agentsim``) leave quickly once a test is over. Names are unique per test, so tests can share
the server.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import agentsim
import pytest
from agentsim import EVENTS, Concurrency, Failure, Fleet, Site, event_statuses, targets
from botocore.exceptions import ClientError, WaiterError

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ZERO_OVERVIEW = {
    "Pending": 0,
    "InProgress": 0,
    "Succeeded": 0,
    "Failed": 0,
    "Skipped": 0,
    "Ready": 0,
}


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest) -> Site:
    """The backend's server with 1 s long polls, shared with the other agentsim modules."""
    return agentsim.shared_site(request, request.param, long_poll_seconds=1.0)


@pytest.fixture
def codedeploy(site: Site) -> Any:
    """The admin's CodeDeploy client of the module's server."""
    return site.codedeploy


@pytest.fixture
def fleet(site: Site) -> Iterator[Fleet]:
    fleet = Fleet(site)
    yield fleet
    fleet.stop()
    assert not fleet.errors(), fleet.errors()


def _error(call: Any, code: str, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response["Error"]
    assert error["Code"] == code, error
    message: str = error["Message"]
    return message


def _overview(**counts: int) -> dict[str, int]:
    return {**ZERO_OVERVIEW, **counts}


def _wait(codedeploy: Any, deployment_id: str, **kwargs: Any) -> dict[str, Any]:
    return agentsim.wait_for_deployment(codedeploy, deployment_id, **kwargs)


# -- rollouts ------------------------------------------------------------------------------------


def test_all_at_once_with_one_failed_host_succeeds_and_reports_its_diagnostics(
    fleet: Fleet, codedeploy: Any
) -> None:
    group = fleet.group("CodeDeployDefault.AllAtOnce")
    hosts = fleet.hosts(group, 3)
    failure = Failure(
        error_code=4,
        script_name="scripts/after_install.sh",
        message="Script at specified location: scripts/after_install.sh failed with exit code 3",
        log="[stdout]" + "x" * 5000 + "\n[stderr]the end\n",
    )
    agents = [fleet.run(hosts[0]), fleet.run(hosts[1])]
    agents.append(fleet.run(hosts[2], failures={"AfterInstall": failure}))

    deployment_id = group.deploy(agentsim.s3_revision("web/v1.tgz"), description="first")
    info = _wait(codedeploy, deployment_id)

    assert info["status"] == "Succeeded", info
    assert "errorInformation" not in info
    assert info["deploymentOverview"] == _overview(Succeeded=2, Failed=1)
    assert info["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert info["creator"] == "user"
    assert info["description"] == "first"
    assert info["createTime"] <= info["startTime"] <= info["completeTime"]
    found = targets(codedeploy, deployment_id)
    assert set(found) == {h.name for h in hosts}
    for host in hosts[:2]:
        target = found[host.name]
        assert target["status"] == "Succeeded"
        assert [e["lifecycleEventName"] for e in target["lifecycleEvents"]] == list(EVENTS)
        for event in target["lifecycleEvents"]:
            assert event["status"] == "Succeeded"
            assert event["diagnostics"]["errorCode"] == "Success"
            assert event["startTime"] <= event["endTime"]
    failed = found[hosts[2].name]
    assert failed["status"] == "Failed"
    assert event_statuses(failed) == {
        "ApplicationStop": "Succeeded",
        "DownloadBundle": "Succeeded",
        "BeforeInstall": "Succeeded",
        "Install": "Succeeded",
        "AfterInstall": "Failed",
        "ApplicationStart": "Skipped",
        "ValidateService": "Skipped",
    }
    after_install = failed["lifecycleEvents"][EVENTS.index("AfterInstall")]
    diagnostics = after_install["diagnostics"]
    assert diagnostics["errorCode"] == "ScriptFailed"
    assert diagnostics["scriptName"] == "scripts/after_install.sh"
    assert diagnostics["message"] == failure.message
    assert diagnostics["logTail"].endswith("[stderr]the end\n")
    assert len(diagnostics["logTail"]) <= 4096
    assert after_install["startTime"] <= after_install["endTime"]
    # The failed host got no command after its failure.
    assert agents[2].events(deployment_id) == list(EVENTS[:5])
    assert agents[0].events(deployment_id) == list(EVENTS)


def test_one_at_a_time_failure_on_the_first_host_fails_and_skips_the_others(
    fleet: Fleet, codedeploy: Any
) -> None:
    group = fleet.group("CodeDeployDefault.OneAtATime")
    hosts = fleet.hosts(group, 3)
    failure = Failure(script_name="scripts/check.sh", message="check.sh exited with 2")
    first = fleet.run(hosts[0], failures={"AfterInstall": failure})
    others = fleet.run_all(hosts[1:])

    deployment_id = group.deploy(agentsim.s3_revision())
    info = _wait(codedeploy, deployment_id)

    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "HEALTH_CONSTRAINTS"
    message = info["errorInformation"]["message"]
    for fragment in (hosts[0].name, "AfterInstall", "scripts/check.sh", "check.sh exited with 2"):
        assert fragment in message, message
    assert info["deploymentOverview"] == _overview(Failed=1, Skipped=2)
    found = targets(codedeploy, deployment_id)
    assert found[hosts[0].name]["status"] == "Failed"
    for host in hosts[1:]:
        assert found[host.name]["status"] == "Skipped"
        assert set(event_statuses(found[host.name]).values()) == {"Skipped"}
    assert first.events(deployment_id) == list(EVENTS[:5])
    assert all(not agent.handled for agent in others)


def test_half_at_a_time_never_has_more_than_half_in_flight(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group("CodeDeployDefault.HalfAtATime")
    hosts = fleet.hosts(group, 4)
    concurrency = Concurrency()
    fleet.run_all(hosts, delay=0.01, concurrency=concurrency)
    seen: list[int] = []

    deployment_id = group.deploy(agentsim.s3_revision())
    info = _wait(
        codedeploy,
        deployment_id,
        check=lambda i: seen.append(i["deploymentOverview"]["InProgress"]),
    )

    assert info["status"] == "Succeeded"
    assert info["deploymentOverview"] == _overview(Succeeded=4)
    assert concurrency.maximum == 2
    assert max(seen) <= 2


def test_custom_host_count_config(fleet: Fleet, codedeploy: Any, site: Site) -> None:
    name = f"Custom.HostCount1-{fleet.prefix}"
    codedeploy.create_deployment_config(
        deploymentConfigName=name, minimumHealthyHosts={"type": "HOST_COUNT", "value": 1}
    )
    group = fleet.group("CodeDeployDefault.OneAtATime")
    hosts = fleet.hosts(group, 3)
    concurrency = Concurrency()
    fleet.run(hosts[0], failures={"Install": Failure()}, delay=0.01, concurrency=concurrency)
    fleet.run_all(hosts[1:], delay=0.01, concurrency=concurrency)

    # N=3, M=1: two at a time (B = N - M), and one failure still leaves N - F >= M.
    deployment_id = group.deploy(agentsim.s3_revision(), deploymentConfigName=name)
    info = _wait(codedeploy, deployment_id)

    assert info["deploymentConfigName"] == name
    assert info["status"] == "Succeeded", info
    assert info["deploymentOverview"] == _overview(Succeeded=2, Failed=1)
    assert concurrency.maximum == 2


def test_hosts_that_failed_last_time_go_first(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group("CodeDeployDefault.AllAtOnce")
    hosts = fleet.hosts(group, 2)
    agents = [fleet.run(hosts[0]), fleet.run(hosts[1], failures={"ValidateService": Failure()})]
    first = group.deploy(agentsim.s3_revision("web/v1.tgz"))
    assert _wait(codedeploy, first)["deploymentOverview"] == _overview(Succeeded=1, Failed=1)

    agents[1].failures.clear()
    second = group.deploy(
        agentsim.s3_revision("web/v2.tgz"), deploymentConfigName="CodeDeployDefault.OneAtATime"
    )
    assert _wait(codedeploy, second)["status"] == "Succeeded"

    # By name hosts[0] would go first; the host that failed last time goes before it (§6.2).
    order = sorted(agents, key=lambda agent: agent.first_received(second) or 0.0)
    assert [agent.host.name for agent in order] == [hosts[1].name, hosts[0].name]
    assert agents[0].first_received(second) > agents[1].handled[-1].received


# -- creating deployments -----------------------------------------------------------------------


def test_a_second_deployment_while_one_is_active_names_the_active_one(
    fleet: Fleet, codedeploy: Any
) -> None:
    group = fleet.group()
    fleet.hosts(group, 1)  # no agent: the deployment stays InProgress
    active = group.deploy(agentsim.s3_revision())
    assert codedeploy.get_deployment(deploymentId=active)["deploymentInfo"]["status"] == (
        "InProgress"
    )

    message = _error(
        codedeploy.create_deployment,
        "DeploymentLimitExceededException",
        applicationName=group.application,
        deploymentGroupName=group.name,
        revision=agentsim.s3_revision("other.tgz"),
    )

    assert f"'{active}'" in message
    assert re.search(r"'(d-\w+)'", message).group(1) == active  # type: ignore[union-attr]
    assert group.name in message


def test_create_deployment_without_revision_uses_the_group_target_revision(
    fleet: Fleet, codedeploy: Any
) -> None:
    group = fleet.group()
    hosts = fleet.hosts(group, 1)
    agent = fleet.run(hosts[0])
    message = _error(
        codedeploy.create_deployment,
        "RevisionRequiredException",
        applicationName=group.application,
        deploymentGroupName=group.name,
    )
    assert group.name in message
    assert "targetRevision" not in group.info()

    revision = agentsim.s3_revision("web/v7.tgz", bucket="artifacts")
    first = group.deploy(revision)
    assert _wait(codedeploy, first)["status"] == "Succeeded"
    target_revision = group.info()["targetRevision"]
    assert target_revision["revisionType"] == "S3"
    assert revision["s3Location"].items() <= target_revision["s3Location"].items()

    again = group.deploy()
    info = _wait(codedeploy, again)
    assert info["status"] == "Succeeded"
    assert info["revision"] == target_revision
    assert info["previousRevision"]["s3Location"]["key"] == "web/v7.tgz"
    s3 = agent.specs[again]["Revision"]["S3Revision"]
    assert (s3["Bucket"], s3["Key"], s3["BundleType"]) == ("artifacts", "web/v7.tgz", "tgz")


def test_a_group_matching_no_hosts_fails_with_no_instances(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    deployment_id = group.deploy(agentsim.s3_revision())

    info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]

    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "NO_INSTANCES"
    assert info["errorInformation"]["message"]
    assert info["deploymentOverview"] == ZERO_OVERVIEW
    assert "completeTime" in info
    listed = codedeploy.list_deployment_targets(deploymentId=deployment_id)
    assert listed["targetIds"] == []


# -- stopping ------------------------------------------------------------------------------------


def test_stop_with_nothing_in_flight_stops_at_once(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group("CodeDeployDefault.OneAtATime")
    fleet.hosts(group, 2)  # no agents: no command is ever handed over
    deployment_id = group.deploy(agentsim.s3_revision())

    stopped = codedeploy.stop_deployment(deploymentId=deployment_id)

    assert stopped["status"] == "Succeeded"
    assert stopped["statusMessage"]
    info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    assert info["status"] == "Stopped"
    assert info["errorInformation"]["code"] == "MANUAL_STOP"
    assert info["deploymentOverview"]["Skipped"] == 2


def test_stop_with_a_command_in_flight_is_pending_until_the_agent_completes_it(
    fleet: Fleet, codedeploy: Any
) -> None:
    group = fleet.group("CodeDeployDefault.OneAtATime")
    hosts = fleet.hosts(group, 2)
    busy = fleet.run(hosts[0], pause_on={"BeforeInstall"})
    idle = fleet.run(hosts[1])
    deployment_id = group.deploy(agentsim.s3_revision())
    agentsim.wait_for(busy.paused.is_set, what="the agent to start BeforeInstall")

    stopped = codedeploy.stop_deployment(deploymentId=deployment_id)

    assert stopped["status"] == "Pending"
    assert stopped["statusMessage"]
    info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    assert info["status"] == "InProgress"
    assert "errorInformation" not in info
    assert targets(codedeploy, deployment_id)[hosts[1].name]["status"] == "Skipped"

    busy.release()
    info = _wait(codedeploy, deployment_id)

    assert info["status"] == "Stopped"
    assert info["errorInformation"]["code"] == "MANUAL_STOP"
    found = targets(codedeploy, deployment_id)
    assert found[hosts[0].name]["status"] == "Failed"
    statuses = event_statuses(found[hosts[0].name])
    assert [statuses[e] for e in EVENTS] == ["Succeeded"] * 3 + ["Skipped"] * 4
    assert set(event_statuses(found[hosts[1].name]).values()) == {"Skipped"}
    assert busy.events(deployment_id) == list(EVENTS[:3])
    assert not idle.handled
    _error(
        codedeploy.stop_deployment,
        "DeploymentAlreadyCompletedException",
        deploymentId=deployment_id,
    )


def test_stopping_a_finished_deployment_is_already_completed(fleet: Fleet, codedeploy: Any) -> None:
    deployment_id = fleet.group().deploy(agentsim.s3_revision())  # NO_INSTANCES: Failed at once

    message = _error(
        codedeploy.stop_deployment,
        "DeploymentAlreadyCompletedException",
        deploymentId=deployment_id,
    )

    assert deployment_id in message
    assert codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]["status"] == (
        "Failed"
    )


# -- per-deployment options ----------------------------------------------------------------------


def test_ignore_application_stop_failures(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    hosts = fleet.hosts(group, 1)
    failure = Failure(script_name="scripts/stop.sh", message="stop.sh failed with exit code 1")
    agent = fleet.run(hosts[0], failures={"ApplicationStop": failure})

    ignored = group.deploy(agentsim.s3_revision(), ignoreApplicationStopFailures=True)
    info = _wait(codedeploy, ignored)

    assert info["status"] == "Succeeded", info
    assert info["ignoreApplicationStopFailures"] is True
    target = targets(codedeploy, ignored)[hosts[0].name]
    assert target["status"] == "Succeeded"
    assert set(event_statuses(target).values()) == {"Succeeded"}
    stop_event = target["lifecycleEvents"][0]
    assert "stop.sh failed with exit code 1" in stop_event["diagnostics"]["message"]
    assert agent.events(ignored) == list(EVENTS)

    counted = group.deploy(agentsim.s3_revision())
    info = _wait(codedeploy, counted)

    assert info["status"] == "Failed"
    assert info["ignoreApplicationStopFailures"] is False
    target = targets(codedeploy, counted)[hosts[0].name]
    assert target["status"] == "Failed"
    assert event_statuses(target)["ApplicationStop"] == "Failed"
    assert target["lifecycleEvents"][0]["diagnostics"]["scriptName"] == "scripts/stop.sh"
    assert agent.events(counted) == ["ApplicationStop"]


def test_update_outdated_instances_only(fleet: Fleet, codedeploy: Any, site: Site) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    agents = [fleet.run(host)]
    revision = agentsim.s3_revision("web/v1.tgz")
    assert _wait(codedeploy, group.deploy(revision))["status"] == "Succeeded"
    newcomer = site.register_host(f"{host.name}-new", {group.tag["Key"]: group.tag["Value"]})
    agents.append(fleet.run(newcomer))

    deployment_id = group.deploy(revision, updateOutdatedInstancesOnly=True)
    info = _wait(codedeploy, deployment_id)

    assert info["status"] == "Succeeded", info
    assert info["updateOutdatedInstancesOnly"] is True
    assert info["deploymentOverview"] == _overview(Succeeded=1, Skipped=1)
    found = targets(codedeploy, deployment_id)
    assert found[host.name]["status"] == "Skipped"
    assert set(event_statuses(found[host.name]).values()) == {"Skipped"}
    assert found[newcomer.name]["status"] == "Succeeded"
    assert [agent.events(deployment_id) for agent in agents] == [[], list(EVENTS)]

    # Every host is outdated for a new revision.
    newer = group.deploy(agentsim.s3_revision("web/v2.tgz"), updateOutdatedInstancesOnly=True)
    assert _wait(codedeploy, newer)["deploymentOverview"] == _overview(Succeeded=2)


# -- reading deployments -------------------------------------------------------------------------


def test_get_and_batch_get_deployments(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    first = group.deploy(agentsim.s3_revision("a.tgz"))
    second = group.deploy(agentsim.s3_revision("b.tgz"), description="second one")

    info = codedeploy.get_deployment(deploymentId=second)["deploymentInfo"]
    assert info["deploymentId"] == second
    assert info["applicationName"] == group.application
    assert info["deploymentGroupName"] == group.name
    assert info["revision"]["s3Location"]["key"] == "b.tgz"
    assert info["description"] == "second one"
    assert info["computePlatform"] == "Server"
    assert info["deploymentStyle"]["deploymentType"] == "IN_PLACE"

    batch = codedeploy.batch_get_deployments(deploymentIds=[second, "d-NOSUCHONE", first])
    assert [d["deploymentId"] for d in batch["deploymentsInfo"]] == [second, first]
    assert codedeploy.batch_get_deployments(deploymentIds=["d-NOSUCHONE"])["deploymentsInfo"] == []

    _error(codedeploy.get_deployment, "DeploymentDoesNotExistException", deploymentId="d-NOSUCHONE")
    _error(codedeploy.get_deployment, "InvalidDeploymentIdException", deploymentId="nonsense")


def test_list_deployments_filters(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    other = fleet.group()
    mine = [group.deploy(agentsim.s3_revision(f"{i}.tgz")) for i in range(3)]
    theirs = other.deploy(agentsim.s3_revision())
    where = {"applicationName": group.application, "deploymentGroupName": group.name}

    listed = codedeploy.list_deployments(**where)["deployments"]
    assert listed == mine[::-1]  # newest first
    everything = [
        d
        for page in codedeploy.get_paginator("list_deployments").paginate()
        for d in page["deployments"]
    ]
    assert set(mine) | {theirs} <= set(everything)

    failed = codedeploy.list_deployments(**where, includeOnlyStatuses=["Failed"])["deployments"]
    assert sorted(failed) == sorted(mine)
    assert (
        codedeploy.list_deployments(**where, includeOnlyStatuses=["Succeeded", "InProgress"])[
            "deployments"
        ]
        == []
    )

    now = dt.datetime.now(dt.UTC)
    hour = dt.timedelta(hours=1)
    in_range = codedeploy.list_deployments(
        **where, createTimeRange={"start": now - hour, "end": now + hour}
    )
    assert sorted(in_range["deployments"]) == sorted(mine)
    since = codedeploy.list_deployments(**where, createTimeRange={"start": now - hour})
    assert sorted(since["deployments"]) == sorted(mine)
    assert (
        codedeploy.list_deployments(**where, createTimeRange={"start": now + hour})["deployments"]
        == []
    )
    assert (
        codedeploy.list_deployments(**where, createTimeRange={"end": now - hour})["deployments"]
        == []
    )
    _error(
        codedeploy.list_deployments,
        "InvalidTimeRangeException",
        **where,
        createTimeRange={"start": now + hour, "end": now - hour},
    )
    _error(
        codedeploy.list_deployments,
        "InvalidDeploymentStatusException",
        **where,
        includeOnlyStatuses=["Sideways"],
    )
    _error(
        codedeploy.list_deployments,
        "ApplicationNameRequiredException",
        deploymentGroupName=group.name,
    )
    _error(
        codedeploy.list_deployments,
        "DeploymentGroupNameRequiredException",
        applicationName=group.application,
    )


def test_list_deployments_pages(fleet: Fleet, codedeploy: Any) -> None:
    """The server's page size is 100 (not settable through start_server): 101 deployments of a
    group that matches no hosts (each fails at once) make two pages."""
    group = fleet.group()
    created = [group.deploy(agentsim.s3_revision()) for _ in range(101)]
    where = {"applicationName": group.application, "deploymentGroupName": group.name}

    first = codedeploy.list_deployments(**where)
    assert len(first["deployments"]) == 100
    second = codedeploy.list_deployments(**where, nextToken=first["nextToken"])
    assert "nextToken" not in second
    assert first["deployments"] + second["deployments"] == created[::-1]
    paged = [
        d
        for page in codedeploy.get_paginator("list_deployments").paginate(**where)
        for d in page["deployments"]
    ]
    assert paged == created[::-1]
    _error(codedeploy.list_deployments, "InvalidNextTokenException", **where, nextToken="bogus")
    other = fleet.group()
    _error(
        codedeploy.list_deployments,
        "InvalidNextTokenException",
        applicationName=other.application,
        deploymentGroupName=other.name,
        nextToken=first["nextToken"],
    )


def test_deployment_targets(fleet: Fleet, codedeploy: Any, site: Site) -> None:
    group = fleet.group()
    hosts = fleet.hosts(group, 3)
    fleet.run(hosts[0])
    fleet.run(hosts[2], failures={"BeforeInstall": Failure()})  # hosts[1] has no agent
    deployment_id = group.deploy(agentsim.s3_revision())
    agentsim.wait_for(
        lambda: (
            codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"][
                "deploymentOverview"
            ]
            == _overview(Succeeded=1, Failed=1, InProgress=1)
        ),
        interval=0.1,
    )

    target = codedeploy.get_deployment_target(deploymentId=deployment_id, targetId=hosts[2].name)[
        "deploymentTarget"
    ]
    assert target["deploymentTargetType"] == "InstanceTarget"
    instance = target["instanceTarget"]
    assert instance["deploymentId"] == deployment_id
    assert instance["targetId"] == hosts[2].name
    assert instance["status"] == "Failed"
    assert "lastUpdatedAt" in instance
    registered = codedeploy.get_on_premises_instance(instanceName=hosts[2].name)["instanceInfo"]
    assert instance["targetArn"] == registered["instanceArn"]

    batch = codedeploy.batch_get_deployment_targets(
        deploymentId=deployment_id, targetIds=[hosts[1].name, hosts[0].name]
    )["deploymentTargets"]
    assert [t["instanceTarget"]["targetId"] for t in batch] == [hosts[1].name, hosts[0].name]
    assert [t["instanceTarget"]["status"] for t in batch] == ["InProgress", "Succeeded"]
    assert event_statuses(batch[0]["instanceTarget"])["ApplicationStop"] == "Pending"
    _error(
        codedeploy.batch_get_deployment_targets,
        "DeploymentTargetDoesNotExistException",
        deploymentId=deployment_id,
        targetIds=[hosts[0].name, "not-a-target"],
    )
    _error(
        codedeploy.get_deployment_target,
        "DeploymentTargetDoesNotExistException",
        deploymentId=deployment_id,
        targetId="not-a-target",
    )

    listed = codedeploy.list_deployment_targets(deploymentId=deployment_id)["targetIds"]
    assert sorted(listed) == sorted(h.name for h in hosts)
    succeeded = codedeploy.list_deployment_targets(
        deploymentId=deployment_id, targetFilters={"TargetStatus": ["Succeeded"]}
    )["targetIds"]
    assert succeeded == [hosts[0].name]
    unfinished_or_failed = codedeploy.list_deployment_targets(
        deploymentId=deployment_id, targetFilters={"TargetStatus": ["Failed", "InProgress"]}
    )["targetIds"]
    assert sorted(unfinished_or_failed) == [hosts[1].name, hosts[2].name]
    skipped = codedeploy.list_deployment_targets(
        deploymentId=deployment_id, targetFilters={"TargetStatus": ["Skipped"]}
    )["targetIds"]
    assert skipped == []
    _error(
        codedeploy.list_deployment_targets,
        "InvalidTargetFilterNameException",
        deploymentId=deployment_id,
        targetFilters={"Colour": ["Blue"]},
    )
    _error(
        codedeploy.list_deployment_targets,
        "DeploymentDoesNotExistException",
        deploymentId="d-NOSUCHONE",
    )


def test_deployment_instances(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    hosts = fleet.hosts(group, 2)
    fleet.run(hosts[0])
    fleet.run(hosts[1], failures={"ApplicationStart": Failure(error_code=3)})
    deployment_id = group.deploy(agentsim.s3_revision())
    _wait(codedeploy, deployment_id)

    summary = codedeploy.get_deployment_instance(
        deploymentId=deployment_id, instanceId=hosts[1].name
    )["instanceSummary"]
    assert summary["deploymentId"] == deployment_id
    assert summary["instanceId"] == hosts[1].name
    assert summary["status"] == "Failed"
    failed = summary["lifecycleEvents"][EVENTS.index("ApplicationStart")]
    assert failed["status"] == "Failed"
    assert failed["diagnostics"]["errorCode"] == "ScriptTimedOut"
    _error(
        codedeploy.get_deployment_instance,
        "InstanceDoesNotExistException",
        deploymentId=deployment_id,
        instanceId="not-an-instance",
    )

    batch = codedeploy.batch_get_deployment_instances(
        deploymentId=deployment_id, instanceIds=[hosts[0].name, "not-an-instance"]
    )
    assert [s["instanceId"] for s in batch["instancesSummary"]] == [hosts[0].name]
    assert batch["instancesSummary"][0]["status"] == "Succeeded"
    assert "not-an-instance" in batch["errorMessage"]

    listed = codedeploy.list_deployment_instances(deploymentId=deployment_id)["instancesList"]
    assert sorted(listed) == sorted(h.name for h in hosts)
    only_failed = codedeploy.list_deployment_instances(
        deploymentId=deployment_id, instanceStatusFilter=["Failed"]
    )["instancesList"]
    assert only_failed == [hosts[1].name]
    _error(
        codedeploy.list_deployment_instances,
        "InvalidDeploymentInstanceTypeException",
        deploymentId=deployment_id,
        instanceTypeFilter=["Blue"],
    )


# -- the waiter ----------------------------------------------------------------------------------


def test_deployment_successful_waiter_succeeds(fleet: Fleet, codedeploy: Any) -> None:
    group = fleet.group()
    fleet.run_all(fleet.hosts(group, 2))
    deployment_id = group.deploy(agentsim.s3_revision())

    codedeploy.get_waiter("deployment_successful").wait(
        deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 20}
    )

    info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    assert info["status"] == "Succeeded"


def test_deployment_successful_waiter_fails_on_a_failed_deployment(
    fleet: Fleet, codedeploy: Any
) -> None:
    deployment_id = fleet.group().deploy(agentsim.s3_revision())  # NO_INSTANCES

    with pytest.raises(WaiterError) as caught:
        codedeploy.get_waiter("deployment_successful").wait(
            deploymentId=deployment_id, WaiterConfig={"Delay": 1, "MaxAttempts": 20}
        )

    assert caught.value.last_response["deploymentInfo"]["status"] == "Failed"
    assert "terminal failure state" in str(caught.value)
