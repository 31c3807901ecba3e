"""Deployment configurations over real agents: order of hooks, batching, files in place, and
ApplicationStop running the previous revision's scripts."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from e2e_support import (
    FIRST_ORDER,
    LATER_ORDER,
    Environment,
    events_of,
    hook_lines,
    hook_script,
    unique,
    write_bundle,
)

from opendeploy.localfleet import LocalAgent

pytestmark = pytest.mark.e2e

E2E_HOSTS = 4
#: The in-place events a target must list, in this order (traffic events may come around them).
SERVER_ORDER = [
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
]
CUSTOM = "custom-host-count-1"


def _most_at_once(intervals: list[tuple[int, int]]) -> int:
    """How many of the closed intervals overlap at one moment, at most."""
    points = sorted([(start, 0) for start, _ in intervals] + [(end, 1) for _, end in intervals])
    running = most = 0
    for _, kind in points:
        running += 1 if kind == 0 else -1
        most = max(most, running)
    return most


def _check_hosts(
    e2e: Environment,
    agents: list[LocalAgent],
    deployment_id: str,
    order: list[str],
    destination: str,
    content: str,
) -> list[tuple[int, int]]:
    """Each host ran ``order`` (as its hooks recorded it) and has the file; the hosts' hook
    intervals (first to last hook, in ns)."""
    intervals = []
    for agent in agents:
        lines = hook_lines(agent, deployment_id)
        assert [line.event for line in lines] == order, (agent.name, lines)
        stamps = [line.ns for line in lines]
        assert stamps == sorted(stamps), (agent.name, lines)
        intervals.append((stamps[0], stamps[-1]))
        installed = agent.destination_root / destination.lstrip("/") / "index.html"
        assert installed.read_text() == content, agent.name
        assert not Path(destination, "index.html").exists()  # never outside the destination root
    return intervals


@pytest.mark.parametrize(
    ("config", "hosts", "batch"),
    [
        ("CodeDeployDefault.OneAtATime", 3, 1),
        ("CodeDeployDefault.HalfAtATime", 4, 2),
        ("CodeDeployDefault.AllAtOnce", 3, 3),
        (CUSTOM, 4, 3),
    ],
)
def test_rollout_order_batches_and_files(
    e2e: Environment, tmp_path: Path, config: str, hosts: int, batch: int
) -> None:
    if config == CUSTOM:
        config = unique("min1")
        e2e.codedeploy.create_deployment_config(
            deploymentConfigName=config,
            minimumHealthyHosts={"type": "HOST_COUNT", "value": 1},
            computePlatform="Server",
        )
    agents = e2e.agents[:hosts]
    application = e2e.application()
    group = e2e.group(application, agents, config)
    destination = f"/srv/{unique('site')}"

    for number, order in ((1, FIRST_ORDER), (2, LATER_ORDER)):
        content = f"revision {number} of {destination}\n"
        bundle = write_bundle(tmp_path / f"v{number}", destination=destination, content=content)
        revision = e2e.push(application, bundle)
        deployment_id, info = e2e.run(application, group, revision)
        assert info["deploymentConfigName"] == config
        assert info["deploymentOverview"]["Succeeded"] == hosts, info["deploymentOverview"]
        targets = e2e.targets(deployment_id)
        assert sorted(targets) == sorted(agent.name for agent in agents)
        for name, target in targets.items():
            assert target["status"] == "Succeeded", (name, target)
            events = [event["lifecycleEventName"] for event in target["lifecycleEvents"]]
            assert [event for event in events if event in SERVER_ORDER] == SERVER_ORDER, events
            assert {event["status"] for event in target["lifecycleEvents"]} == {"Succeeded"}
        intervals = _check_hosts(e2e, agents, deployment_id, order, destination, content)
        most = _most_at_once(intervals)
        assert most <= batch, f"{most} hosts ran hooks at once; {config} allows {batch}"
        if batch == 1:
            ordered = sorted(intervals)
            for earlier, later in itertools.pairwise(ordered):
                assert earlier[1] < later[0], f"hosts overlap in time: {ordered}"


def test_application_stop_runs_the_previous_revisions_scripts(
    e2e: Environment, tmp_path: Path
) -> None:
    agents = e2e.agents[:3]
    application = e2e.application()
    group = e2e.group(application, agents)
    destination = f"/srv/{unique('stop')}"
    deployments = {}
    for label in ("A", "B"):
        stop = hook_script(f"stop-from-{label}", f'echo "stop from {label}"\n')
        bundle = write_bundle(
            tmp_path / label,
            destination=destination,
            content=f"{label}\n",
            scripts={"scripts/stop.sh": stop},
        )
        revision = e2e.push(application, bundle)
        deployments[label], _ = e2e.run(application, group, revision)

    first, second = deployments["A"], deployments["B"]
    for agent in agents:
        # The first deployment has no previous revision: ApplicationStop is a no-op...
        assert [line.event for line in hook_lines(agent, first)] == FIRST_ORDER
        event = events_of(e2e.targets(first)[agent.name])["ApplicationStop"]
        assert event["status"] == "Succeeded", event
        # ... and the second runs A's stop script, not B's.
        stops = [line for line in hook_lines(agent, second) if line.event == "ApplicationStop"]
        assert [line.script for line in stops] == ["stop-from-A"], (agent.name, stops)
        [scripts_log] = agent.root.glob(f"*/{second}/logs/scripts.log")
        text = scripts_log.read_text()
        assert "[stdout]stop from A" in text
        assert "stop from B" not in text
        installed = agent.destination_root / destination.lstrip("/") / "index.html"
        assert installed.read_text() == "B\n"
