"""``deploy --wait``, ``status``, ``list``, ``logs``, ``stop`` and ``rollback`` against a real
server and real agents (``opendeploy.localfleet``), driven through the click command."""

from __future__ import annotations

import json
import signal
import textwrap
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from opendeploy.cli.main import cli
from opendeploy.localfleet import LocalFleet, LocalServer, start_server

pytestmark = pytest.mark.e2e

ROLE = "arn:aws:iam::000000000000:role/opendeploy-cli"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Fleet:
    server: LocalServer
    fleet: LocalFleet
    codedeploy: Any

    @property
    def hosts(self) -> list[str]:
        return [agent.name for agent in self.fleet.agents]

    def invoke(self, *args: str) -> Result:
        env = {
            "OPENDEPLOY_ENDPOINT": self.server.endpoint,
            "AWS_ACCESS_KEY_ID": self.server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    def group(
        self, hosts: Sequence[str], config: str = "CodeDeployDefault.AllAtOnce"
    ) -> tuple[str, str]:
        """A new application and a group that targets exactly ``hosts``."""
        key = unique("cli")
        self.codedeploy.add_tags_to_on_premises_instances(
            tags=[{"Key": key, "Value": "on"}], instanceNames=list(hosts)
        )
        application = unique("app")
        self.codedeploy.create_application(applicationName=application)
        name = unique("group")
        self.codedeploy.create_deployment_group(
            applicationName=application,
            deploymentGroupName=name,
            serviceRoleArn=ROLE,
            deploymentConfigName=config,
            onPremisesInstanceTagFilters=[{"Key": key, "Value": "on", "Type": "KEY_AND_VALUE"}],
        )
        return application, name

    def wait_for(self, deployment_id: str, statuses: Sequence[str], deadline: float = 30) -> None:
        until = time.monotonic() + deadline
        while True:
            info = self.codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
            if info["status"] in statuses:
                return
            assert time.monotonic() < until, f"{deployment_id} still {info['status']}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("cli-e2e")
    server = start_server(
        workdir / "server", args=["--long-poll-seconds", "10", "--heartbeat-timeout", "30"]
    )
    local = LocalFleet(server, workdir / "fleet")
    try:
        local.add_hosts(3, hook_environment={"E2E_HOST": "{host}"})
        yield Fleet(server, local, server.client("codedeploy"))
    finally:
        for agent in local.agents:
            agent.signal(signal.SIGTERM)
        server.process.send_signal(signal.SIGINT)
        local.stop()
        server.stop()


def bundle(
    directory: Path, hooks: Mapping[str, str], *, release: str = "1", timeout: int = 30
) -> Path:
    """A bundle installing one file to a path of its own, with a script per event."""
    (directory / "app").mkdir(parents=True)
    (directory / "app" / "release.txt").write_text(release)
    entries = {}
    for event, body in hooks.items():
        script = directory / "scripts" / f"{event}.sh"
        script.parent.mkdir(exist_ok=True)
        script.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        script.chmod(0o755)
        entries[event] = [{"location": f"scripts/{event}.sh", "timeout": timeout}]
    appspec = {
        "version": 0.0,
        "os": "linux",
        "files": [{"source": "app", "destination": f"/srv/{directory.name}"}],
        "hooks": entries,
        "file_exists_behavior": "OVERWRITE",
    }
    (directory / "appspec.yml").write_text(yaml.safe_dump(appspec, sort_keys=False))
    return directory


GOOD = {"AfterInstall": 'echo "installed on $E2E_HOST"', "ValidateService": "echo healthy"}


def failing_on(host: str) -> dict[str, str]:
    return {
        "AfterInstall": 'echo "installed on $E2E_HOST"',
        "ValidateService": f"""\
            if [ "$E2E_HOST" = "{host}" ]; then
                for i in $(seq 1 300); do echo "output line $i of the health check"; done
                echo "something went wrong on $E2E_HOST" >&2
                exit 1
            fi
            echo healthy
            """,
    }


def test_deploy_wait_succeeds_and_status_and_list_report_it(fleet: Fleet, tmp_path: Path) -> None:
    application, group = fleet.group(fleet.hosts)
    source = bundle(tmp_path / unique("web"), GOOD)

    result = fleet.invoke("deploy", "-a", application, "-g", group, "--source", str(source), "-w")

    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and "on 3 host(s)" in result.output
    for host in fleet.hosts:
        assert host in result.output
    assert "ValidateService" in result.output
    deployment_id = result.output.split("created deployment ")[1].split()[0]

    status = fleet.invoke("status", deployment_id, "-o", "json")
    assert status.exit_code == 0
    document = json.loads(status.stdout)
    assert document["status"] == "Succeeded" and document["failures"] == []
    assert {t["targetId"] for t in document["targets"]} == set(fleet.hosts)
    assert document["deployment"]["deploymentOverview"]["Succeeded"] == 3

    listed = fleet.invoke("list", "-a", application, "-g", group, "-o", "json")
    assert [d["deploymentId"] for d in json.loads(listed.stdout)["deployments"]] == [deployment_id]
    assert deployment_id in fleet.invoke("list", "-a", application).output

    again = fleet.invoke("deploy", "-a", application, "-g", group, "-w", "-o", "json")
    assert again.exit_code == 0, again.output
    redeployed = json.loads(again.stdout)
    assert redeployed["status"] == "Succeeded"  # the group's target revision, once more
    assert redeployed["deployment"]["revision"] == document["deployment"]["revision"]


def test_a_failure_names_the_host_event_script_and_log_then_rollback(
    fleet: Fleet, tmp_path: Path
) -> None:
    # One at a time, and the broken host goes first (hosts deploy in name order): it fails
    # the deployment at once and the other hosts are skipped.
    application, group = fleet.group(fleet.hosts, "CodeDeployDefault.OneAtATime")
    broken_host = fleet.hosts[0]
    good = fleet.invoke(
        "deploy",
        "-a",
        application,
        "-g",
        group,
        "-c",
        "CodeDeployDefault.AllAtOnce",
        "-s",
        str(bundle(tmp_path / "good", GOOD)),
        "-w",
        "-o",
        "json",
    )
    assert good.exit_code == 0, good.output
    good_id = json.loads(good.stdout)["deploymentId"]

    bad = fleet.invoke(
        "deploy",
        "-a",
        application,
        "-g",
        group,
        "-s",
        str(bundle(tmp_path / "bad", failing_on(broken_host), release="2")),
        "-w",
        "--log-lines",
        "5",
    )

    assert bad.exit_code == 3, bad.output
    output = bad.output
    assert f"{broken_host} failed at ValidateService running scripts/ValidateService.sh" in output
    assert "ScriptFailed" in output
    assert "something went wrong" in output
    assert "output line 300 of the health check" in output
    assert "output line 290 of" not in output  # --log-lines 5
    assert "end of the log:" in output  # from GetLifecycleEventLog, not the diagnostics tail
    assert "HEALTH_CONSTRAINTS" in output
    bad_id = output.split("created deployment ")[1].split()[0]

    status = fleet.invoke("status", bad_id, "-o", "json")
    assert status.exit_code == 3
    [failure] = json.loads(status.stdout)["failures"]
    assert failure["instance"] == broken_host
    assert failure["event"] == "ValidateService"
    assert failure["script"] == "scripts/ValidateService.sh"
    assert failure["fullLog"] is True

    logs = fleet.invoke("logs", bad_id, "--instance", broken_host, "--event", "ValidateService")
    assert logs.exit_code == 0
    assert "output line 1 of the health check" in logs.output  # the whole log, not a tail
    assert "[stderr]something went wrong" in logs.output
    every = json.loads(fleet.invoke("logs", bad_id, "-o", "json").stdout)["logs"]
    assert {(e["instance"], e["event"]) for e in every} == {
        (broken_host, "AfterInstall"),
        (broken_host, "ValidateService"),
    }
    wrong = fleet.invoke("logs", bad_id, "--instance", "nope")
    assert wrong.exit_code == 2 and broken_host in wrong.output

    rolled = fleet.invoke(
        "rollback", bad_id, "-c", "CodeDeployDefault.AllAtOnce", "--wait", "-o", "json"
    )

    assert rolled.exit_code == 0, rolled.output
    document = json.loads(rolled.stdout)
    assert document["status"] == "Succeeded"
    assert document["rollbackOf"] == bad_id and document["revisionOf"] == good_id
    good_revision = fleet.codedeploy.get_deployment(deploymentId=good_id)["deploymentInfo"][
        "revision"
    ]
    assert document["deployment"]["revision"] == json.loads(json.dumps(good_revision))
    release = fleet.fleet.agents[0].destination_root / "srv" / "good" / "release.txt"
    assert release.read_text() == "1"


def test_logs_follow_prints_output_as_it_comes(fleet: Fleet, tmp_path: Path) -> None:
    application, group = fleet.group(fleet.hosts[:2])
    hooks = {
        "AfterInstall": """\
            for i in 1 2 3; do echo "tick $i on $E2E_HOST"; sleep 0.2; done
            """
    }
    created = fleet.invoke(
        "deploy",
        "-a",
        application,
        "-g",
        group,
        "-s",
        str(bundle(tmp_path / "ticks", hooks)),
        "-o",
        "json",
    )
    deployment_id = json.loads(created.stdout)["deploymentId"]

    result = fleet.invoke("logs", deployment_id, "--follow", "--event", "AfterInstall")

    assert result.exit_code == 0, result.output
    for host in fleet.hosts[:2]:
        assert f"{host} AfterInstall | " in result.output
        assert f"tick 3 on {host}" in result.output
    assert "Succeeded" in result.output.splitlines()[-1]


def test_stop_then_rollback_the_group(fleet: Fleet, tmp_path: Path) -> None:
    application, group = fleet.group(fleet.hosts[:2])
    first = fleet.invoke(
        "deploy", "-a", application, "-g", group, "-s", str(bundle(tmp_path / "v1", GOOD)), "-w"
    )
    assert first.exit_code == 0, first.output
    slow = {"BeforeInstall": "sleep 1", **GOOD}
    created = fleet.invoke(
        "deploy",
        "-a",
        application,
        "-g",
        group,
        "-c",
        "CodeDeployDefault.OneAtATime",
        "-s",
        str(bundle(tmp_path / "v2", slow, release="2")),
        "-o",
        "json",
    )
    slow_id = json.loads(created.stdout)["deploymentId"]
    fleet.wait_for(slow_id, ["InProgress"])

    running = fleet.invoke("rollback", slow_id)
    assert running.exit_code == 1 and "--stop" in running.output

    stopped = fleet.invoke("stop", slow_id, "--wait", "-o", "json")
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(stopped.stdout)["status"] == "Stopped"
    status = fleet.invoke("status", slow_id)
    assert status.exit_code == 4 and "was stopped" in status.output
    again = fleet.invoke("stop", slow_id)
    assert again.exit_code == 0 and "already ended: Stopped" in again.output

    rolled = fleet.invoke("rollback", "-a", application, "-g", group, "--wait")
    assert rolled.exit_code == 0, rolled.output
    assert f"rolling back {group}" in rolled.output and "succeeded" in rolled.output


def test_rollback_needs_an_earlier_success(fleet: Fleet) -> None:
    application, group = fleet.group(fleet.hosts[:1])

    result = fleet.invoke("rollback", "-a", application, "-g", group)

    assert result.exit_code == 1
    assert f"The deployment group {group} of {application} has no successful deployment" in (
        result.output
    )
