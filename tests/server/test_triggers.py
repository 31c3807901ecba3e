"""Deployment triggers end to end (codedeploy-spec §8.7): a real server whose deployments are
driven by simulated agents (``agentsim``) delivers trigger events to a real webhook receiver
on loopback (``triggerkit.Receiver``) and to SNS topics of a real SNS-compatible server
(moto's standalone server, read back through an SQS queue subscribed to the topic).

Checked: CodeDeploy's message shapes with every scalar a string, the HMAC signature under the
secret RevealTriggerSecret gives (admins only), that only subscribed events arrive, and the
delivery records of ListTriggerDeliveries.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agentsim
import boto3
import pytest
import triggerkit
from agentsim import EVENTS, Failure, Fleet, Site
from botocore.exceptions import ClientError
from triggerkit import Receiver

from opendeploy.server.triggers import TriggerOptions

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
OPTIONS = TriggerOptions(interval=0.05, retry_base=0.2, timeout=5.0)
DEPLOYMENT_KEYS = {
    "region",
    "accountId",
    "eventTriggerName",
    "applicationName",
    "deploymentId",
    "deploymentGroupName",
    "createTime",
    "deploymentOverview",
    "status",
}
INSTANCE_KEYS = {
    "region",
    "accountId",
    "eventTriggerName",
    "deploymentId",
    "instanceId",
    "lastUpdatedAt",
    "instanceStatus",
    "lifecycleEvents",
}
OVERVIEW_KEYS = {"Failed", "InProgress", "Pending", "Skipped", "Succeeded"}


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with triggerkit.trigger_site(
        request.param, tmp_path_factory.mktemp(f"triggers-{request.param}"), OPTIONS
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    opened = Receiver()
    yield opened
    opened.close()


@pytest.fixture
def fleet(site: Site) -> Iterator[Fleet]:
    fleet = Fleet(site)
    yield fleet
    fleet.stop()
    assert not fleet.errors(), fleet.errors()


def _trigger(name: str, target: str, *events: str) -> dict[str, Any]:
    return {"triggerName": name, "triggerTargetArn": target, "triggerEvents": list(events)}


def _is_time(value: str) -> bool:
    whole, _, millis = value.partition(".")
    return whole.isdigit() and len(millis) == 3 and millis.isdigit()


def test_webhook_gets_subscribed_events_signed_in_codedeploy_shape(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    prefix = f"/{fleet.prefix}"
    group = fleet.group(
        triggerConfigurations=[
            _trigger(
                "progress",
                receiver.url(f"{prefix}/progress"),
                "DeploymentStart",
                "InstanceStart",
                "InstanceSuccess",
                "DeploymentSuccess",
            ),
            _trigger(
                "trouble",
                receiver.url(f"{prefix}/trouble"),
                "DeploymentFailure",
                "DeploymentStop",
                "DeploymentRollback",
                "InstanceFailure",
            ),
        ]
    )
    hosts = fleet.hosts(group, 2)
    fleet.run_all(hosts)
    deployment_id = group.deploy(agentsim.s3_revision())
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Succeeded"

    client = triggerkit.extensions(site.server)
    records = triggerkit.wait_for_deliveries(client, deployment_id, 6)
    assert {r["status"] for r in records} == {"Delivered"}
    assert {r["triggerName"] for r in records} == {"progress"}
    assert all(r["attempts"] == 1 and r["lastHttpStatus"] == 200 for r in records)
    received = receiver.at(f"{prefix}/progress")
    assert len(received) == 6
    assert receiver.at(f"{prefix}/trouble") == []
    assert {r.delivery_id for r in received} == {r["deliveryId"] for r in records}
    by_event: dict[str, list[Any]] = {}
    for request in received:
        by_event.setdefault(request.event, []).append(request.json)
    assert sorted((event, len(bodies)) for event, bodies in by_event.items()) == [
        ("DeploymentStart", 1),
        ("DeploymentSuccess", 1),
        ("InstanceStart", 2),
        ("InstanceSuccess", 2),
    ]

    # Signed with the trigger's own secret, which only an admin can read.
    secret = client.reveal_trigger_secret(
        applicationName=group.application, deploymentGroupName=group.name, triggerName="progress"
    )
    assert secret["signatureHeader"] == "X-OpenDeploy-Signature"
    assert all(triggerkit.signature_ok(r, secret["secret"]) for r in received)
    other = client.reveal_trigger_secret(
        applicationName=group.application, deploymentGroupName=group.name, triggerName="trouble"
    )["secret"]
    assert other != secret["secret"]
    assert not any(triggerkit.signature_ok(r, other) for r in received)

    for body in (b for bodies in by_event.values() for b in bodies):
        assert all(isinstance(leaf, str) for leaf in triggerkit.leaves(body)), body
        assert body["eventTriggerName"] == "progress"
        assert body["deploymentId"] == deployment_id
        assert body["accountId"] == site.server.account_id
        assert body["region"] == "us-east-1"

    (start,) = by_event["DeploymentStart"]
    assert set(start) == DEPLOYMENT_KEYS
    assert start["status"] == "InProgress"
    assert start["applicationName"] == group.application
    assert start["deploymentGroupName"] == group.name
    assert _is_time(start["createTime"])
    assert set(start["deploymentOverview"]) == OVERVIEW_KEYS
    assert sum(int(v) for v in start["deploymentOverview"].values()) == 2

    (success,) = by_event["DeploymentSuccess"]
    assert set(success) == DEPLOYMENT_KEYS | {"completeTime"}
    assert success["status"] == "Succeeded"
    assert float(success["completeTime"]) == pytest.approx(info["completeTime"].timestamp())
    assert success["deploymentOverview"] == {
        "Failed": "0",
        "InProgress": "0",
        "Pending": "0",
        "Skipped": "0",
        "Succeeded": "2",
    }

    arns = {
        site.codedeploy.get_on_premises_instance(instanceName=h.name)["instanceInfo"]["instanceArn"]
        for h in hosts
    }
    assert {b["instanceId"] for b in by_event["InstanceStart"]} == arns
    assert {b["instanceId"] for b in by_event["InstanceSuccess"]} == arns
    for body in by_event["InstanceStart"]:
        assert set(body) == INSTANCE_KEYS
        assert body["instanceStatus"] == "InProgress"
        assert [e["LifecycleEvent"] for e in body["lifecycleEvents"]] == list(EVENTS)
        assert {e["LifecycleEventStatus"] for e in body["lifecycleEvents"]} == {"Pending"}
    for body in by_event["InstanceSuccess"]:
        assert set(body) == INSTANCE_KEYS
        assert body["instanceStatus"] == "Succeeded"
        assert _is_time(body["lastUpdatedAt"])
        for event in body["lifecycleEvents"]:
            assert event["LifecycleEventStatus"] == "Succeeded"
            assert _is_time(event["StartTime"]) and _is_time(event["EndTime"])
            assert float(event["StartTime"]) <= float(event["EndTime"])


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_failure_and_rollback_events_reach_their_trigger(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    prefix = f"/{fleet.prefix}"
    group = fleet.group(
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
        triggerConfigurations=[
            _trigger(
                "trouble",
                receiver.url(f"{prefix}/trouble"),
                "DeploymentFailure",
                "DeploymentRollback",
                "InstanceFailure",
            )
        ],
    )
    (host,) = fleet.hosts(group, 1)
    agent = fleet.run(host)
    good = group.deploy(agentsim.s3_revision("releases/good.tgz"))
    assert agentsim.wait_for_deployment(site.codedeploy, good)["status"] == "Succeeded"
    agent.failures["AfterInstall"] = Failure()
    bad = group.deploy(agentsim.s3_revision("releases/bad.tgz"))
    info = agentsim.wait_for_deployment(site.codedeploy, bad)
    assert info["status"] == "Failed"
    rollback = info["rollbackInfo"]["rollbackDeploymentId"]
    agent.failures.clear()
    agentsim.wait_for_deployment(site.codedeploy, rollback)

    client = triggerkit.extensions(site.server)
    records = triggerkit.wait_for_deliveries(client, bad, 3)
    assert sorted(r["triggerEvent"] for r in records) == [
        "DeploymentFailure",
        "DeploymentRollback",
        "InstanceFailure",
    ]
    assert client.list_trigger_deliveries(deploymentId=good)["deliveries"] == []
    received = {r.event: r.json for r in receiver.at(f"{prefix}/trouble")}
    assert set(received) == {"DeploymentFailure", "DeploymentRollback", "InstanceFailure"}
    failure = received["DeploymentFailure"]
    assert failure["status"] == "Failed"
    assert failure["errorInformation"]["ErrorCode"] == "HEALTH_CONSTRAINTS"
    assert failure["errorInformation"]["ErrorMessage"] == info["errorInformation"]["message"]
    assert failure["deploymentOverview"]["Failed"] == "1"
    assert received["DeploymentRollback"]["deploymentId"] == bad
    instance = received["InstanceFailure"]
    assert instance["instanceStatus"] == "Failed"
    statuses = {e["LifecycleEvent"]: e["LifecycleEventStatus"] for e in instance["lifecycleEvents"]}
    assert statuses["AfterInstall"] == "Failed"
    assert statuses["Install"] == "Succeeded"
    assert statuses["ApplicationStart"] == "Skipped"


def test_reveal_trigger_secret_is_for_admins_and_deliveries_for_readers(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    group = fleet.group(
        triggerConfigurations=[_trigger("hook", receiver.url("/unused"), "DeploymentFailure")]
    )
    admin = triggerkit.extensions(site.server)
    first = admin.reveal_trigger_secret(
        applicationName=group.application, deploymentGroupName=group.name, triggerName="hook"
    )["secret"]
    again = admin.reveal_trigger_secret(
        applicationName=group.application, deploymentGroupName=group.name, triggerName="hook"
    )["secret"]
    assert first == again and len(first) == 64

    with pytest.raises(ClientError) as caught:
        admin.reveal_trigger_secret(
            applicationName=group.application, deploymentGroupName=group.name, triggerName="nope"
        )
    assert caught.value.response["Error"]["Code"] == "TriggerDoesNotExistException"
    with pytest.raises(ClientError) as caught:
        admin.reveal_trigger_secret(
            applicationName=group.application, deploymentGroupName="nope", triggerName="hook"
        )
    assert caught.value.response["Error"]["Code"] == "DeploymentGroupDoesNotExistException"
    with pytest.raises(ClientError) as caught:
        admin.list_trigger_deliveries(deploymentId="d-NOSUCH123")
    assert caught.value.response["Error"]["Code"] == "DeploymentDoesNotExistException"
    with pytest.raises(ClientError) as caught:
        admin.list_trigger_deliveries(deploymentId="d-NOSUCH123", nextToken="bogus")
    assert caught.value.response["Error"]["Code"] == "InvalidNextTokenException"

    (host,) = fleet.hosts(group, 1)
    fleet.run(host)
    deployment_id = group.deploy(agentsim.s3_revision())
    agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    for policy in (agentsim.DEPLOYER_POLICY, agentsim.READER_POLICY):
        _, key_id, secret = site.user(policy)
        client = triggerkit.extensions(site.server, key_id=key_id, secret=secret)
        with pytest.raises(ClientError) as caught:
            client.reveal_trigger_secret(
                applicationName=group.application,
                deploymentGroupName=group.name,
                triggerName="hook",
            )
        assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
        assert client.list_trigger_deliveries(deploymentId=deployment_id)["deliveries"] == []


# -- SNS ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server (SNS, SQS and the rest) on a loopback port."""
    pytest.importorskip("moto.server", reason="needs moto[server]")
    pytest.importorskip("flask", reason="needs moto[server]")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if shutil.which("moto_server"):
        command = ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def sns_site(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    options = TriggerOptions(
        interval=0.05, retry_base=0.2, timeout=5.0, sns_endpoint_url=moto_endpoint
    )
    with triggerkit.trigger_site("sqlite", tmp_path_factory.mktemp("triggers-sns"), options) as s:
        yield s


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials for moto in the environment, where the server's SNS client finds them."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_sns_topic_gets_the_message_published_through_boto3(
    sns_site: Site, moto_endpoint: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    aws = boto3.session.Session(region_name="us-east-1")
    sns = aws.client("sns", endpoint_url=moto_endpoint)
    sqs = aws.client("sqs", endpoint_url=moto_endpoint)
    topic = sns.create_topic(Name=triggerkit.unique("deploys"))["TopicArn"]
    queue = sqs.create_queue(QueueName=triggerkit.unique("deploys"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    missing = topic.rpartition(":")[0] + ":" + triggerkit.unique("no-such-topic")

    fleet = Fleet(sns_site)
    try:
        group = fleet.group(
            triggerConfigurations=[
                _trigger("topic", topic, "DeploymentStart", "DeploymentSuccess"),
                _trigger("gone", missing, "DeploymentSuccess"),
            ]
        )
        (host,) = fleet.hosts(group, 1)
        fleet.run(host)
        deployment_id = group.deploy(agentsim.s3_revision())
        assert agentsim.wait_for_deployment(sns_site.codedeploy, deployment_id)["status"] == (
            "Succeeded"
        )
        client = triggerkit.extensions(sns_site.server)
        records = triggerkit.wait_for_deliveries(client, deployment_id, 3)
    finally:
        fleet.stop()
    by_trigger = {(r["triggerName"], r["triggerEvent"]): r for r in records}
    assert by_trigger[("topic", "DeploymentStart")]["status"] == "Delivered"
    assert by_trigger[("topic", "DeploymentSuccess")]["status"] == "Delivered"
    assert by_trigger[("topic", "DeploymentSuccess")]["lastHttpStatus"] == 200
    gone = by_trigger[("gone", "DeploymentSuccess")]
    assert gone["status"] == "Failed" and gone["attempts"] == 1, gone
    assert "NotFound" in gone["lastError"]

    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(messages) < 2 and time.monotonic() < deadline:
        batch = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages += [json.loads(m["Body"]) for m in batch.get("Messages", [])]
    assert len(messages) == 2
    by_status = {json.loads(m["Message"])["status"]: m for m in messages}
    assert set(by_status) == {"InProgress", "Succeeded"}
    success = by_status["Succeeded"]
    assert success["TopicArn"] == topic
    assert success["Subject"] == (
        f"SUCCEEDED: AWS CodeDeploy {deployment_id} in us-east-1 to {group.application}"
    )
    assert by_status["InProgress"]["Subject"].startswith("IN_PROGRESS: AWS CodeDeploy ")
    body = json.loads(success["Message"])
    assert set(body) == DEPLOYMENT_KEYS | {"completeTime"}
    assert body["eventTriggerName"] == "topic"
    assert body["deploymentOverview"]["Succeeded"] == "1"
    assert all(isinstance(leaf, str) for leaf in triggerkit.leaves(body))
