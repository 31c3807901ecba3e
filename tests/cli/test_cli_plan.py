"""``opendeploy plan``, the tables and the client errors, against a real server process (no
agents: nothing here runs a lifecycle event)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from opendeploy.cli.main import cli
from opendeploy.localfleet import LocalServer, free_port, start_server

ROLE = "arn:aws:iam::000000000000:role/opendeploy-cli"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    running = start_server(tmp_path_factory.mktemp("plan") / "server")
    yield running
    running.stop()


@pytest.fixture
def codedeploy(server: LocalServer) -> Any:
    return server.client("codedeploy")


def invoke(server: LocalServer, *args: str) -> Result:
    env = {
        "OPENDEPLOY_ENDPOINT": server.endpoint,
        "AWS_ACCESS_KEY_ID": server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def hosts(codedeploy: Any, count: int, **tags: str) -> list[str]:
    """Register ``count`` instances tagged ``tags`` (no agents: plan needs none)."""
    names = [unique("node") for _ in range(count)]
    for name in names:
        codedeploy.register_on_premises_instance(
            instanceName=name, iamUserArn=f"arn:aws:iam::000000000000:user/{name}"
        )
    codedeploy.add_tags_to_on_premises_instances(
        tags=[{"Key": k, "Value": v} for k, v in tags.items()], instanceNames=names
    )
    return sorted(names)


def group(codedeploy: Any, count: int, config: str, **extra: Any) -> tuple[str, str, list[str]]:
    """An application and a group selecting ``count`` fresh hosts by a tag of their own."""
    key = unique("tier")
    names = hosts(codedeploy, count, **{key: "web"}) if count else []
    application = unique("app")
    codedeploy.create_application(applicationName=application)
    name = unique("group")
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName=name,
        serviceRoleArn=ROLE,
        deploymentConfigName=config,
        onPremisesInstanceTagFilters=[{"Key": key, "Value": "web", "Type": "KEY_AND_VALUE"}],
        **extra,
    )
    return application, name, names


def plan_json(server: LocalServer, *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke(server, "plan", *args, "-o", "json")
    return result.exit_code, json.loads(result.stdout)


def test_one_at_a_time_goes_host_by_host(server: LocalServer, codedeploy: Any) -> None:
    application, name, names = group(codedeploy, 3, "CodeDeployDefault.OneAtATime")

    code, plan = plan_json(server, "-a", application, "-g", name)

    assert code == 0
    assert plan["batches"] == [[n] for n in names]
    assert plan["atOnce"] == 1 and plan["minimumHealthy"] == 2
    assert plan["startCheck"] is None
    assert "first failed host stops the deployment" in plan["explanation"]
    assert [t["standing"] for t in plan["targets"]] == ["unhealthy"] * 3  # never deployed

    text = invoke(server, "plan", "-a", application, "-g", name)
    assert text.exit_code == 0
    assert "start check passed" in text.output
    for event in ("ApplicationStop", "DownloadBundle", "ValidateService"):
        assert event in text.output
    assert "scripts of the revision last installed successfully" in text.output


def test_half_at_a_time_takes_half_of_five(server: LocalServer, codedeploy: Any) -> None:
    application, name, names = group(codedeploy, 5, "CodeDeployDefault.HalfAtATime")

    code, plan = plan_json(server, "-a", application, "-g", name)

    assert code == 0
    assert plan["minimumHealthy"] == 3 and plan["atOnce"] == 2 and plan["failuresToStop"] == 2
    assert plan["batches"] == [names[:2], names[2:4], names[4:]]
    assert "at least 50% of 5 hosts (rounded up: 3) must stay healthy" in plan["explanation"]


def test_all_at_once_takes_every_host(server: LocalServer, codedeploy: Any) -> None:
    application, name, names = group(codedeploy, 4, "CodeDeployDefault.AllAtOnce")

    code, plan = plan_json(server, "-a", application, "-g", name)

    assert code == 0
    assert plan["batches"] == [names]
    assert plan["failuresToStop"] == 4  # only if every host fails
    assert "succeeds if at least one host does" in plan["explanation"]


def test_a_custom_config_and_the_config_override(server: LocalServer, codedeploy: Any) -> None:
    config = unique("TwoHealthy")
    codedeploy.create_deployment_config(
        deploymentConfigName=config, minimumHealthyHosts={"type": "HOST_COUNT", "value": 2}
    )
    application, name, names = group(codedeploy, 5, config)

    code, plan = plan_json(server, "-a", application, "-g", name)
    assert code == 0
    assert [len(batch) for batch in plan["batches"]] == [3, 2]
    assert plan["deploymentConfig"]["minimumHealthyHosts"] == {"type": "HOST_COUNT", "value": 2}

    code, plan = plan_json(
        server, "-a", application, "-g", name, "-c", "CodeDeployDefault.AllAtOnce"
    )
    assert plan["deploymentConfig"]["name"] == "CodeDeployDefault.AllAtOnce"
    assert plan["batches"] == [names]


def test_half_at_a_time_on_one_host_fails_the_start_check(
    server: LocalServer, codedeploy: Any
) -> None:
    application, name, _ = group(codedeploy, 1, "CodeDeployDefault.HalfAtATime")

    code, plan = plan_json(server, "-a", application, "-g", name)
    assert code == 3
    assert plan["startCheck"] == "HEALTH_CONSTRAINTS_INVALID"
    assert plan["batches"] == []

    text = invoke(server, "plan", "-a", application, "-g", name)
    assert text.exit_code == 3
    assert "HEALTH_CONSTRAINTS_INVALID" in text.output
    assert "needs 1 healthy at all times" in text.output


def test_no_matching_hosts_and_deploy_fails_at_once(server: LocalServer, codedeploy: Any) -> None:
    application, name, _ = group(codedeploy, 0, "CodeDeployDefault.AllAtOnce")

    code, plan = plan_json(server, "-a", application, "-g", name)
    assert code == 3 and plan["startCheck"] == "NO_INSTANCES" and plan["targets"] == []

    # A deployment to it ends at once, without agents; the summary says what to check.
    revision = {
        "revisionType": "GitHub",
        "gitHubLocation": {"repository": "acme/web", "commitId": "a" * 40},
    }
    result = invoke(
        server,
        "deploy",
        "-a",
        application,
        "-g",
        name,
        "--revision",
        json.dumps(revision),
        "--wait",
    )
    assert result.exit_code == 3, result.output
    assert "NO_INSTANCES" in result.output and "opendeploy plan" in result.output


def test_a_tag_set_and_a_source_directory(
    server: LocalServer, codedeploy: Any, tmp_path: Path
) -> None:
    key = unique("role")
    web = hosts(codedeploy, 2, **{key: "web", "zone": "a"})
    hosts(codedeploy, 1, **{key: "db", "zone": "a"})
    application = unique("app")
    codedeploy.create_application(applicationName=application)
    name = unique("group")
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName=name,
        serviceRoleArn=ROLE,
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
        onPremisesTagSet={
            "onPremisesTagSetList": [
                [{"Key": key, "Value": "web", "Type": "KEY_AND_VALUE"}],
                [{"Key": "zone", "Type": "KEY_ONLY"}],
            ]
        },
    )
    (tmp_path / "scripts").mkdir()
    (tmp_path / "appspec.yml").write_text(
        yaml.safe_dump(
            {
                "version": 0.0,
                "os": "linux",
                "hooks": {
                    "AfterInstall": [{"location": "scripts/migrate.sh", "timeout": 120}],
                    "ValidateService": [{"location": "scripts/check.sh", "runas": "nobody"}],
                },
            }
        )
    )

    code, plan = plan_json(server, "-a", application, "-g", name, "--source", str(tmp_path))

    assert code == 0
    assert [t["instance"] for t in plan["targets"]] == web
    events = {event["name"]: event for event in plan["events"]}
    assert events["AfterInstall"]["scripts"] == [
        {"location": "scripts/migrate.sh", "timeout": 120, "runas": None}
    ]
    assert events["BeforeInstall"]["scripts"] == []
    assert events["ApplicationStop"]["runs"] == "last successful revision"
    assert events["Install"]["runs"] == "agent"

    text = invoke(server, "plan", "-a", application, "-g", name, "--source", str(tmp_path))
    assert "scripts/check.sh (timeout 3600 s as nobody)" in text.output


def test_tables(server: LocalServer, codedeploy: Any) -> None:
    application, name, names = group(
        codedeploy,
        2,
        "CodeDeployDefault.HalfAtATime",
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
    )

    apps = invoke(server, "applications", "-o", "json")
    found = {a["applicationName"]: a for a in json.loads(apps.stdout)["applications"]}
    assert found[application]["deploymentGroupCount"] == 1
    assert application in invoke(server, "applications").output

    groups = invoke(server, "groups", "-a", application)
    assert groups.exit_code == 0
    assert name in groups.output and "HalfAtATime" in groups.output
    assert "DEPLOYMENT_FAILURE" in groups.output
    document = json.loads(invoke(server, "groups", "-a", application, "-o", "json").stdout)
    [info] = document["deploymentGroups"]
    assert info["matchingInstances"] == names and info["latestDeployment"] is None

    tag_key = info["onPremisesInstanceTagFilters"][0]["Key"]
    listed = invoke(server, "instances", "--tag", f"{tag_key}=web", "-o", "json")
    assert [i["instanceName"] for i in json.loads(listed.stdout)["instances"]] == names
    text = invoke(server, "instances", "--tag", tag_key)
    assert all(n in text.output for n in names) and f"{tag_key}=web" in text.output


def test_errors_say_what_to_do(server: LocalServer, tmp_path: Path) -> None:
    missing = invoke(server, "plan", "-a", "no-such-app", "-g", "nope")
    assert missing.exit_code == 1
    assert "ApplicationDoesNotExistException" in missing.output

    unknown = invoke(server, "status", "d-AAAAAAAAA")
    assert unknown.exit_code == 1 and "DeploymentDoesNotExistException" in unknown.output

    down = CliRunner().invoke(
        cli,
        ["list", "--endpoint", f"http://127.0.0.1:{free_port()}"],
        env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
    )
    assert down.exit_code == 1
    assert (
        "Cannot reach the OpenDeploy server" in down.output and "OPENDEPLOY_ENDPOINT" in down.output
    )

    anonymous = CliRunner().invoke(cli, ["list", "--endpoint", server.endpoint])
    assert anonymous.exit_code == 1 and "No AWS credentials found" in anonymous.output

    wrong = CliRunner().invoke(
        cli,
        ["applications", "--endpoint", server.endpoint],
        env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "nope"},
    )
    assert wrong.exit_code == 1 and "admin-credentials" in wrong.output

    both = invoke(
        server, "deploy", "-a", "x", "-g", "y", "--source", str(tmp_path), "--revision", "{}"
    )
    assert both.exit_code == 2 and "not both" in both.output
    bad = invoke(server, "deploy", "-a", "x", "-g", "y", "--revision", "nope")
    assert bad.exit_code == 2 and "RevisionLocation" in bad.output


def test_help_documents_exit_codes() -> None:
    for command in ("deploy", "status", "logs", "rollback", "local", "plan", "stop", "list"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0
        assert "Exit codes:" in result.output and "3    the deployment" in result.output
