"""The stock CodeDeploy agent's own requests, replayed: what it needs back (stock-agent-wire §3-§5).

Each request carries the stock agent's exact header set (Ruby SDK user agent, the signed
``X-Amz-Codedeploy-Agent-Version``, ``X-Amz-Content-Sha256``, an empty ``Accept-Encoding``)
and the bodies of the captures, re-signed with the host's key because the captures' dates are
long past the allowed clock skew. The answers must meet the minimal response contract of §4.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentsim import Fleet, Host, Site, open_envelope, open_site, s3_revision, signed_request

STOCK_HEADERS = {
    "Accept-Encoding": "",
    "User-Agent": (
        "aws-sdk-ruby3/3.168.1 ruby/3.1.2 x86_64-linux-gnu aws-sdk-codedeploycommand/1.0.0"
    ),
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Codedeploy-Agent-Version": "COMMIT_800eb2882ae1b0b0bf67ff56df5ae31eb013c782",
    "Accept": "*/*",
}
PREFIX = "CodeDeployCommandService_v20141006."


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with open_site("sqlite", tmp_path_factory.mktemp("stock"), long_poll_seconds=1.0) as opened:
        yield opened


@pytest.fixture
def fleet(site: Site) -> Iterator[Fleet]:
    fleet = Fleet(site)
    yield fleet
    fleet.stop()


def stock_call(site: Site, host: Host, operation: str, body: dict[str, Any]) -> httpx.Response:
    """One request exactly as the stock agent sends it (§3.1)."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = {
        **STOCK_HEADERS,
        "X-Amz-Target": PREFIX + operation,
        "X-Amz-Content-Sha256": hashlib.sha256(payload).hexdigest(),
    }
    request = signed_request(
        "POST",
        site.server.endpoint + "/",
        host.credentials,
        "codedeploy-commands",
        body=payload,
        headers=headers,
    )
    with httpx.Client(timeout=30) as client:
        return client.send(request)


def diagnostics(payload: dict[str, Any]) -> dict[str, str]:
    return {"Format": "JSON", "Payload": json.dumps(payload, separators=(",", ":"))}


def test_the_stock_agents_command_cycle_gets_what_it_needs(site: Site, fleet: Fleet) -> None:
    group = fleet.group("CodeDeployDefault.OneAtATime")
    (host,) = fleet.hosts(group, 1)

    idle = stock_call(site, host, "PollHostCommand", {"HostIdentifier": host.arn})
    assert idle.status_code == 200
    assert idle.content in (b"", b"{}"), "an empty poll is {} or a zero-length body"

    deployment_id = group.deploy(s3_revision())
    polled = stock_call(site, host, "PollHostCommand", {"HostIdentifier": host.arn})
    assert polled.status_code == 200
    command = polled.json()["HostCommand"]
    assert command["HostIdentifier"] == host.arn, "echoed exactly (the agent substring-checks)"
    assert command["CommandName"] == "ApplicationStop"
    assert command["HostCommandIdentifier"] and command["DeploymentExecutionId"]

    spec = stock_call(
        site,
        host,
        "GetDeploymentSpecification",
        {"DeploymentExecutionId": command["DeploymentExecutionId"], "HostIdentifier": host.arn},
    ).json()
    assert spec["DeploymentSystem"] == "CodeDeploy"
    envelope = spec["DeploymentSpecification"]["GenericEnvelope"]
    assert envelope["Format"] == "PKCS7/JSON"
    label, document, certificate = open_envelope(envelope["Payload"])
    assert label == "PKCS7", "the stock agent only parses a PEM labelled PKCS7 (§10)"
    assert certificate, "the signer certificate must be embedded"
    for member in ("DeploymentId", "DeploymentGroupId", "DeploymentGroupName", "ApplicationName"):
        assert document[member]
    assert document["DeploymentId"] == deployment_id
    assert document["Revision"]["RevisionType"] == "S3"

    ack = stock_call(
        site,
        host,
        "PutHostCommandAcknowledgement",
        {
            "Diagnostics": diagnostics({"IsCommandNoop": True}),
            "HostCommandIdentifier": command["HostCommandIdentifier"],
        },
    )
    assert ack.status_code == 200
    assert ack.json().get("CommandStatus", "InProgress") in ("InProgress", "Pending")

    done = stock_call(
        site,
        host,
        "PutHostCommandComplete",
        {
            "CommandStatus": "Succeeded",
            "Diagnostics": diagnostics(
                {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}
            ),
            "HostCommandIdentifier": command["HostCommandIdentifier"],
        },
    )
    assert done.status_code == 200
    assert done.content in (b"", b"{}")

    following = stock_call(site, host, "PollHostCommand", {"HostIdentifier": host.arn}).json()
    assert following["HostCommand"]["CommandName"] == "DownloadBundle"


def test_the_stock_agents_double_failure_report_keeps_the_first(site: Site, fleet: Fleet) -> None:
    """On a script failure the stock agent completes twice: code 4 with the log, then a
    generic code 5 (§5). The first must win; neither may fail with a 5xx (E15)."""
    group = fleet.group("CodeDeployDefault.OneAtATime")
    (host,) = fleet.hosts(group, 1)
    deployment_id = group.deploy(s3_revision())
    command = stock_call(site, host, "PollHostCommand", {"HostIdentifier": host.arn}).json()[
        "HostCommand"
    ]
    stock_call(
        site,
        host,
        "PutHostCommandAcknowledgement",
        {
            "Diagnostics": diagnostics({"IsCommandNoop": False}),
            "HostCommandIdentifier": command["HostCommandIdentifier"],
        },
    )
    message = "Script at specified location: scripts/hook.sh failed with exit code 1"
    first = {
        "error_code": 4,
        "script_name": "scripts/hook.sh",
        "message": message,
        "log": "LifecycleEvent - ApplicationStop\nScript - scripts/hook.sh\n[stderr]boom\n",
    }
    second = {"error_code": 5, "script_name": "", "message": message, "log": ""}
    for payload in (first, second):
        response = stock_call(
            site,
            host,
            "PutHostCommandComplete",
            {
                "CommandStatus": "Failed",
                "Diagnostics": diagnostics(payload),
                "HostCommandIdentifier": command["HostCommandIdentifier"],
            },
        )
        assert response.status_code == 200
    target = site.codedeploy.get_deployment_target(deploymentId=deployment_id, targetId=host.name)
    event = target["deploymentTarget"]["instanceTarget"]["lifecycleEvents"][0]
    assert event["status"] == "Failed"
    assert event["diagnostics"]["errorCode"] == "ScriptFailed", "the first (code 4) wins"
    assert event["diagnostics"]["scriptName"] == "scripts/hook.sh"
    assert "[stderr]boom" in event["diagnostics"]["logTail"]


def test_a_stock_agent_restart_report_is_the_agent_restart_code(site: Site, fleet: Fleet) -> None:
    group = fleet.group("CodeDeployDefault.OneAtATime")
    (host,) = fleet.hosts(group, 1)
    deployment_id = group.deploy(s3_revision())
    command = stock_call(site, host, "PollHostCommand", {"HostIdentifier": host.arn}).json()[
        "HostCommand"
    ]
    stock_call(
        site,
        host,
        "PutHostCommandComplete",
        {
            "CommandStatus": "Failed",
            "Diagnostics": diagnostics(
                {
                    "error_code": 7,
                    "script_name": "",
                    "message": "Failed: Failing in-progress lifecycle event after an agent "
                    "restart.",
                    "log": "",
                }
            ),
            "HostCommandIdentifier": command["HostCommandIdentifier"],
        },
    )
    target = site.codedeploy.get_deployment_target(deploymentId=deployment_id, targetId=host.name)
    event = target["deploymentTarget"]["instanceTarget"]["lifecycleEvents"][0]
    assert event["diagnostics"]["errorCode"] == "UnknownError"
    assert "agent restart" in event["diagnostics"]["message"]
