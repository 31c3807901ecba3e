"""The agent API of a real server, spoken by botocore clients built from the wire models
(docs/agent-protocol.md, codedeploy-spec §8.4, §9), and bundle push/download.

Most tests run on SQLite and PostgreSQL (``agentsim.shared_site``: a server per backend with
1 s long polls, shared with test_api_deployments.py).
The timing tests use dedicated SQLite servers: ``quick`` (0.5 s long polls, 1 s heartbeat
timeout, reconciler every 0.2 s) and ``patient`` (30 s long polls).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import agentsim
import httpx
import pytest
import sqlalchemy as sa
from agentsim import EVENTS, Failure, Fleet, Host, Site, event_statuses, targets
from asn1crypto import cms, pem
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from opendeploy.server.service.agent import LOST_MARGIN_SECONDS, LOST_MESSAGE
from opendeploy.store import contacts
from opendeploy.store import deployments as store
from opendeploy.store.database import Database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HEARTBEAT_LOST = "Agent heartbeat lost:"


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest) -> Site:
    """The backend's server with 1 s long polls, shared with the other agentsim modules."""
    return agentsim.shared_site(request, request.param, long_poll_seconds=1.0)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with agentsim.open_site(
        "sqlite",
        tmp_path_factory.mktemp("agent-quick"),
        long_poll_seconds=0.5,
        heartbeat_timeout=1.0,
        reconcile_interval=0.2,
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with agentsim.open_site(
        "sqlite", tmp_path_factory.mktemp("agent-patient"), long_poll_seconds=30.0
    ) as opened:
        yield opened


def _fleet(site: Site) -> Iterator[Fleet]:
    fleet = Fleet(site)
    yield fleet
    fleet.stop()
    assert not fleet.errors(), fleet.errors()


@pytest.fixture
def fleet(site: Site) -> Iterator[Fleet]:
    yield from _fleet(site)


@pytest.fixture
def quick_fleet(quick: Site) -> Iterator[Fleet]:
    yield from _fleet(quick)


@pytest.fixture
def patient_fleet(patient: Site) -> Iterator[Fleet]:
    yield from _fleet(patient)


def _client_error(call: Any, code: str = "ClientException", **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response["Error"]
    assert error["Code"] == code, error
    message: str = error["Message"]
    return message


def _take(client: Any, host: Host) -> dict[str, Any]:
    """PollHostCommand that must hand over a command."""
    command: dict[str, Any] = client.poll_host_command(HostIdentifier=host.arn)["HostCommand"]
    return command


def _ack(client: Any, command: dict[str, Any]) -> str:
    status: str = client.put_host_command_acknowledgement(
        HostCommandIdentifier=command["HostCommandIdentifier"],
        Diagnostics={"Format": "JSON", "Payload": '{"IsCommandNoop":false}'},
    )["CommandStatus"]
    return status


def _complete(client: Any, command: dict[str, Any], failure: Failure | None = None) -> None:
    client.put_host_command_complete(
        HostCommandIdentifier=command["HostCommandIdentifier"],
        CommandStatus="Failed" if failure else "Succeeded",
        Diagnostics={
            "Format": "JSON",
            "Payload": failure.payload() if failure else agentsim.SUCCESS_PAYLOAD,
        },
    )


def _complete_taking_next(
    extensions: Any, host: Host, command: dict[str, Any]
) -> dict[str, Any] | None:
    """PutHostCommandCompleteAndTakeNext, succeeded: the next command it hands over, if any."""
    answer = extensions.put_host_command_complete_and_take_next(
        HostCommandIdentifier=command["HostCommandIdentifier"],
        CommandStatus="Succeeded",
        Diagnostics={"Format": "JSON", "Payload": agentsim.SUCCESS_PAYLOAD},
        HostIdentifier=host.arn,
    )
    taken: dict[str, Any] | None = answer.get("HostCommand")
    return taken


def _spec(client: Any, host: Host, command: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = client.get_deployment_specification(
        DeploymentExecutionId=command["DeploymentExecutionId"], HostIdentifier=host.arn
    )
    return response


def _target(site: Site, deployment_id: str, host: Host) -> dict[str, Any]:
    target: dict[str, Any] = site.codedeploy.get_deployment_target(
        deploymentId=deployment_id, targetId=host.name
    )["deploymentTarget"]["instanceTarget"]
    return target


# -- identity ------------------------------------------------------------------------------------


def test_poll_hands_over_the_command_and_echoes_the_host_identifier_exactly(
    fleet: Fleet, site: Site
) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1, path="/fleet/agents/")
    assert ":user/fleet/agents/" in host.arn
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)

    command = _take(client, host)

    assert command["HostIdentifier"] == host.arn
    assert command["CommandName"] == "ApplicationStop"
    assert command["HostCommandIdentifier"]
    assert isinstance(command["Nonce"], int)
    execution = command["DeploymentExecutionId"]
    assert len(execution.split("/")) >= 4  # the stock agent insists on a/b/c/rest
    assert execution.endswith(f"deployment/{deployment_id}")


def test_a_host_identifier_that_is_not_the_callers_arn_is_refused(fleet: Fleet, site: Site) -> None:
    group = fleet.group()
    mine, other = fleet.hosts(group, 2)
    group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, mine)

    _client_error(client.poll_host_command, HostIdentifier=other.arn)
    _client_error(client.poll_host_command, HostIdentifier=mine.arn.upper())
    command = _take(client, mine)  # its own identifier works
    _client_error(
        client.get_deployment_specification,
        DeploymentExecutionId=command["DeploymentExecutionId"],
        HostIdentifier=other.arn,
    )


def test_an_agent_cannot_act_on_another_hosts_commands(fleet: Fleet, site: Site) -> None:
    group = fleet.group()
    [targeted] = fleet.hosts(group, 1)
    [outsider] = fleet.hosts(None, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    own = agentsim.agent_client(site.server, targeted)
    command = _take(own, targeted)
    command_id = command["HostCommandIdentifier"]
    foreign = agentsim.agent_client(site.server, outsider)

    _client_error(
        foreign.put_host_command_acknowledgement,
        HostCommandIdentifier=command_id,
        Diagnostics={"Format": "JSON", "Payload": '{"IsCommandNoop":false}'},
    )
    _client_error(
        foreign.put_host_command_complete,
        HostCommandIdentifier=command_id,
        CommandStatus="Failed",
        Diagnostics={"Format": "JSON", "Payload": Failure().payload()},
    )
    _client_error(foreign.post_host_command_update, HostCommandIdentifier=command_id)
    _client_error(
        foreign.get_deployment_specification,
        DeploymentExecutionId=command["DeploymentExecutionId"],
        HostIdentifier=outsider.arn,
    )
    _client_error(
        agentsim.extensions_client(site.server, outsider).put_host_command_log,
        HostCommandIdentifier=command_id,
        Offset=0,
        Log="not mine",
    )

    # Nothing of the above touched the command.
    assert event_statuses(_target(site, deployment_id, targeted))["ApplicationStop"] == "Pending"
    assert _ack(own, command) == "InProgress"


def test_agent_keys_and_public_keys_stay_on_their_own_api(fleet: Fleet, site: Site) -> None:
    [host] = fleet.hosts(None, 1)
    as_agent = {"access_key_id": host.access_key_id, "secret_access_key": host.secret_access_key}
    _client_error(site.client(**as_agent).list_applications, "AccessDeniedException")
    _client_error(
        site.client(**as_agent).create_application,
        "AccessDeniedException",
        applicationName="sneaky",
    )
    _client_error(site.client("iam", **as_agent).list_users, "AccessDenied")

    admin = agentsim.agent_client(
        site.server,
        access_key_id=site.server.access_key_id,
        secret_access_key=site.server.secret_access_key,
    )
    _client_error(admin.poll_host_command, "AccessDeniedException", HostIdentifier=host.arn)
    for policy in (agentsim.DEPLOYER_POLICY, agentsim.READER_POLICY):
        arn, key_id, secret = site.user(policy)
        client = agentsim.agent_client(site.server, access_key_id=key_id, secret_access_key=secret)
        _client_error(client.poll_host_command, "AccessDeniedException", HostIdentifier=arn)


# -- the specification ---------------------------------------------------------------------------


def _verify_signature(payload: str, certificate_der: bytes) -> None:
    """The SignedData's signature over its signed attributes, and their digest of the content."""
    _, _, der = pem.unarmor(payload.encode("ascii"))
    signed = cms.ContentInfo.load(der)["content"]
    content = signed["encap_content_info"]["content"].native
    [signer] = signed["signer_infos"]
    attributes = signer["signed_attrs"]
    digest = next(a["values"][0].native for a in attributes if a["type"].native == "message_digest")
    assert digest == hashlib.sha256(content).digest()
    key = x509.load_der_x509_certificate(certificate_der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    # Signed over the attributes as a SET OF (universal tag 0x31), not the [0] they travel in.
    key.verify(
        signer["signature"].native,
        b"\x31" + attributes.dump()[1:],
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_the_specification_is_a_signed_pkcs7_envelope(fleet: Fleet, site: Site) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(
        agentsim.s3_revision("web/v3.tgz", bucket="artifacts"), fileExistsBehavior="OVERWRITE"
    )
    client = agentsim.agent_client(site.server, host)

    response = _spec(client, host, _take(client, host))

    assert response["DeploymentSystem"] == "CodeDeploy"
    envelope = response["DeploymentSpecification"]["GenericEnvelope"]
    assert envelope["Format"] == "PKCS7/JSON"
    assert envelope["Payload"].startswith("-----BEGIN PKCS7-----")
    label, document, certificate = agentsim.open_envelope(envelope["Payload"])
    assert label == "PKCS7"
    assert document["DeploymentId"] == deployment_id
    assert document["DeploymentGroupId"] == group.info()["deploymentGroupId"]
    assert document["DeploymentGroupName"] == group.name
    assert document["ApplicationName"] == group.application
    assert document["DeploymentCreator"] == "user"
    assert document["DeploymentType"] == "IN_PLACE"
    assert document["AgentActionOverrides"] == {
        "AgentOverrides": {"FileExistsBehavior": "OVERWRITE"}
    }
    assert document["Revision"]["RevisionType"] == "S3"
    s3 = document["Revision"]["S3Revision"]
    assert (s3["Bucket"], s3["Key"], s3["BundleType"]) == ("artifacts", "web/v3.tgz", "tgz")
    assert "OpenDeploy" not in document  # not a pushed bundle

    published = httpx.get(site.server.endpoint + "/agent/spec-signer.pem")
    assert published.status_code == 200
    published_label, _, published_der = pem.unarmor(published.content)
    assert published_label == "CERTIFICATE"
    assert certificate == published_der
    _verify_signature(envelope["Payload"], certificate)


# -- acknowledgement and completion --------------------------------------------------------------


def test_acknowledgement_answers_in_progress(fleet: Fleet, site: Site) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    command = _take(client, host)

    assert _ack(client, command) == "InProgress"

    event = _target(site, deployment_id, host)["lifecycleEvents"][0]
    assert (event["lifecycleEventName"], event["status"]) == ("ApplicationStop", "InProgress")
    assert "startTime" in event
    update = client.post_host_command_update(HostCommandIdentifier=command["HostCommandIdentifier"])
    assert update["CommandStatus"] == "InProgress"
    assert _ack(client, command) == "InProgress"  # a repeated ack changes nothing

    _complete(client, command)

    # An ack of a finished command answers its final status: the agent must not run it again.
    assert _ack(client, command) == "Succeeded"


def test_completion_is_idempotent(fleet: Fleet, site: Site) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    command = _take(client, host)
    _ack(client, command)
    _complete(client, command)

    _complete(client, command, Failure(message="a late, contradicting report"))
    _complete(client, command)

    event = _target(site, deployment_id, host)["lifecycleEvents"][0]
    assert event["status"] == "Succeeded"
    assert event["diagnostics"]["errorCode"] == "Success"
    agent = fleet.run(host)
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Succeeded"
    assert agent.events(deployment_id) == list(EVENTS[1:])


def test_a_completion_taking_the_next_command_hands_it_acknowledged(
    fleet: Fleet, site: Site
) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    extensions = agentsim.extensions_client(site.server, host)
    command = _take(client, host)
    _ack(client, command)

    def complete_taking_next(command: dict[str, Any]) -> dict[str, Any] | None:
        return _complete_taking_next(extensions, host, command)

    ran = [command["CommandName"]]
    following = complete_taking_next(command)
    assert following is not None
    assert following["HostIdentifier"] == host.arn
    assert following["DeploymentExecutionId"] == command["DeploymentExecutionId"]
    event = _target(site, deployment_id, host)["lifecycleEvents"][1]
    assert (event["lifecycleEventName"], event["status"]) == (EVENTS[1], "InProgress")
    assert _ack(client, following) == "InProgress", "it is acknowledged already"
    assert client.poll_host_command(HostIdentifier=host.arn).get("HostCommand") is None, (
        "an acknowledged command is not handed over again by a poll"
    )
    assert complete_taking_next(command) == following, "a resent completion gets the same one"
    while following is not None:
        ran.append(following["CommandName"])
        following = complete_taking_next(following)
    assert ran == list(EVENTS)
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Succeeded"


def test_take_hands_the_command_with_its_specification(fleet: Fleet, site: Site) -> None:
    """TakeHostCommand: the command a poll hands over (not acknowledged: the agent still
    acknowledges it), with the specification GetDeploymentSpecification answers."""
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    extensions = agentsim.extensions_client(site.server, host)
    answer = extensions.take_host_command(HostIdentifier=host.arn)
    command = answer["HostCommand"]
    assert (command["HostIdentifier"], command["CommandName"]) == (host.arn, EVENTS[0])
    fetched = _spec(client, host, command)
    assert answer["DeploymentSystem"] == fetched["DeploymentSystem"] == "CodeDeploy"
    assert answer["DeploymentSpecification"] == fetched["DeploymentSpecification"]
    event = _target(site, deployment_id, host)["lifecycleEvents"][0]
    assert (event["lifecycleEventName"], event["status"]) == (EVENTS[0], "Pending")
    assert "HostCommand" not in extensions.take_host_command(HostIdentifier=host.arn), (
        "handed over: not again at once"
    )
    assert _ack(client, command) == "InProgress"

    following = _complete_taking_next(extensions, host, command)
    while following is not None:
        following = _complete_taking_next(extensions, host, following)
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Succeeded"


def test_every_host_of_a_deployment_takes_its_command_with_the_one_specification(
    fleet: Fleet, site: Site
) -> None:
    """The first take builds the specification; the others are answered from memory on the
    event loop (``AgentService.cached_take``), with the same signed document."""
    group = fleet.group()
    hosts = fleet.hosts(group, 3)
    deployment_id = group.deploy(agentsim.s3_revision())
    answers = [
        agentsim.extensions_client(site.server, host).take_host_command(HostIdentifier=host.arn)
        for host in hosts
    ]
    first = agentsim.agent_client(site.server, hosts[0])
    fetched = _spec(first, hosts[0], answers[0]["HostCommand"])
    for host, answer in zip(hosts, answers, strict=True):
        command = answer["HostCommand"]
        assert (command["HostIdentifier"], command["CommandName"]) == (host.arn, EVENTS[0])
        assert command["DeploymentExecutionId"].endswith(deployment_id)
        assert answer["DeploymentSpecification"] == fetched["DeploymentSpecification"]
    assert len({answer["HostCommand"]["HostCommandIdentifier"] for answer in answers}) == 3


def test_a_take_fails_the_command_its_agent_lost_before_beginning_it(
    fleet: Fleet, site: Site
) -> None:
    """Our agent takes work only when it runs none and has reported every event it began, so
    a command of its host still acknowledged then is one it lost (received with a
    completion's answer, then stopped before journaling it). The take fails it with the
    agent-restart code, instead of the deployment waiting for it for ever (the agent keeps
    polling: no heartbeat is lost)."""
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    extensions = agentsim.extensions_client(site.server, host)
    command = extensions.take_host_command(HostIdentifier=host.arn)["HostCommand"]
    _ack(client, command)
    lost = _complete_taking_next(extensions, host, command)
    acknowledged = time.monotonic()
    assert lost is not None and lost["CommandName"] == EVENTS[1]

    # A take arriving within LOST_MARGIN_SECONDS of the acknowledgement may be a late one
    # whose agent runs the command: it is spared, and the host's next take looks again.
    assert "HostCommand" not in extensions.take_host_command(HostIdentifier=host.arn)
    assert _target(site, deployment_id, host)["lifecycleEvents"][1]["status"] == "InProgress"
    time.sleep(max(0.0, acknowledged + LOST_MARGIN_SECONDS + 0.1 - time.monotonic()))
    assert "HostCommand" not in extensions.take_host_command(HostIdentifier=host.arn)
    event = _target(site, deployment_id, host)["lifecycleEvents"][1]
    assert (event["lifecycleEventName"], event["status"]) == (EVENTS[1], "Failed")
    assert event["diagnostics"]["errorCode"] == "UnknownError"
    assert event["diagnostics"]["message"] == LOST_MESSAGE
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Failed"
    # Its late completion changes nothing, and the host's next take finds nothing to fail.
    _complete(client, lost)
    assert _target(site, deployment_id, host)["lifecycleEvents"][1]["status"] == "Failed"
    assert "HostCommand" not in extensions.take_host_command(HostIdentifier=host.arn)


def test_a_completion_of_a_command_the_server_handed_over_reads_no_command(
    fleet: Fleet, site: Site
) -> None:
    """The server remembers the commands it handed over (by poll or with a completion):
    their first completion goes straight to the engine, with no read of the command; a
    resent completion reads it (and changes nothing)."""
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    deployment_id = group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    extensions = agentsim.extensions_client(site.server, host)
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM host_commands WHERE host_commands.id =" in " ".join(statement.split()):
            reads.append(statement)

    def complete_taking_next(command: dict[str, Any]) -> dict[str, Any] | None:
        return _complete_taking_next(extensions, host, command)

    first = _take(client, host)
    _ack(client, first)
    sa.event.listen(sa.Engine, "before_cursor_execute", count)
    try:
        second = complete_taking_next(first)
        assert second is not None
        third = complete_taking_next(second)
        assert reads == [], "a first completion of a handed-over command reads no command"
        assert complete_taking_next(second) == third, "a resend gets the same next command"
        assert len(reads) == 1, "a resend reads the command"
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", count)
    events = _target(site, deployment_id, host)["lifecycleEvents"]
    assert [event["status"] for event in events[:3]] == ["Succeeded", "Succeeded", "InProgress"]


def test_stock_error_codes_become_lifecycle_error_codes(fleet: Fleet, site: Site) -> None:
    """One host per agent error code, each failing ApplicationStop (codedeploy-spec §9): 7 is a
    command that failed because the agent restarted while running it."""
    expected = {
        1: "ScriptMissing",
        2: "ScriptNotExecutable",
        3: "ScriptTimedOut",
        4: "ScriptFailed",
        5: "UnknownError",
        6: "ScriptFailed",
        7: "UnknownError",
    }
    group = fleet.group()
    hosts = fleet.hosts(group, len(expected))
    for host, code in zip(hosts, expected, strict=True):
        failure = Failure(error_code=code, message=f"failed with agent code {code}")
        fleet.run(host, failures={"ApplicationStop": failure})
    deployment_id = group.deploy(agentsim.s3_revision())

    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)

    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "HEALTH_CONSTRAINTS"
    found = targets(site.codedeploy, deployment_id)
    for host, (code, name) in zip(hosts, expected.items(), strict=True):
        event = found[host.name]["lifecycleEvents"][0]
        assert event["status"] == "Failed"
        assert event["diagnostics"]["errorCode"] == name, (code, event)
        assert event["diagnostics"]["message"] == f"failed with agent code {code}"


# -- full logs -----------------------------------------------------------------------------------


def test_put_host_command_log_appends_at_offsets_and_retries_overwrite(
    fleet: Fleet, site: Site
) -> None:
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(site.server, host)
    command_id = _take(client, host)["HostCommandIdentifier"]
    logs = agentsim.extensions_client(site.server, host)
    database = Database(site.database_url)

    def stored() -> str | None:
        with database.read() as connection:
            return store.log_of(connection, command_id)

    try:
        assert stored() is None
        logs.put_host_command_log(HostCommandIdentifier=command_id, Offset=0, Log="one\n")
        logs.put_host_command_log(HostCommandIdentifier=command_id, Offset=4, Log="two\n")
        assert stored() == "one\ntwo\n"
        # A retried upload of the second chunk, longer this time: overwrites, no duplicate.
        logs.put_host_command_log(HostCommandIdentifier=command_id, Offset=4, Log="two\nthree\n")
        assert stored() == "one\ntwo\nthree\n"
        logs.put_host_command_log(HostCommandIdentifier=command_id, Offset=0, Log="ONE\n")
        assert stored() == "ONE\n"
        _client_error(
            logs.put_host_command_log, HostCommandIdentifier=command_id, Offset=99, Log="gap"
        )
        assert stored() == "ONE\n"
        _client_error(
            logs.put_host_command_log, HostCommandIdentifier="hc-no-such", Offset=0, Log="x"
        )
    finally:
        database.dispose()


# -- bundles -------------------------------------------------------------------------------------


def _push(site: Site, body: bytes, key_id: str, secret: str, *, sha256: str | None = None) -> Any:
    request = agentsim.signed_request(
        "PUT",
        site.server.endpoint + "/bundles",
        Credentials(key_id, secret),
        "codedeploy",
        body=body,
        headers={
            "Content-Type": "application/x-gzip",
            "X-Amz-Content-Sha256": sha256 or hashlib.sha256(body).hexdigest(),
        },
    )
    with httpx.Client() as http:
        return http.send(request)


def _fetch(site: Site, host: Host, path: str, **headers: str) -> httpx.Response:
    request = agentsim.signed_request(
        "GET",
        site.server.endpoint + path,
        host.credentials,
        "codedeploy-commands",
        headers={"X-Amz-Content-Sha256": hashlib.sha256(b"").hexdigest(), **headers},
    )
    with httpx.Client() as http:
        return http.send(request)


def test_bundle_push_and_download(fleet: Fleet, site: Site) -> None:
    body = os.urandom(3000)
    sha256 = hashlib.sha256(body).hexdigest()
    admin = (site.server.access_key_id, site.server.secret_access_key)

    wrong = _push(site, body, *admin, sha256=hashlib.sha256(b"other").hexdigest())
    assert wrong.status_code in (400, 403), wrong.text
    assert wrong.json()["__type"] == "InvalidSignatureException"
    _, reader_key, reader_secret = site.user(agentsim.READER_POLICY)
    refused = _push(site, body, reader_key, reader_secret)
    assert refused.status_code in (400, 403), refused.text
    assert refused.json()["__type"] == "AccessDeniedException"

    pushed = _push(site, body, *admin)
    assert pushed.status_code == 200, pushed.text
    answer = pushed.json()
    assert (answer["sha256"], answer["size"]) == (sha256, len(body))
    revision = answer["revision"]
    assert revision["revisionType"] == "S3"
    location = revision["s3Location"]
    assert location["bucket"] == "opendeploy-local"
    assert sha256 in location["key"]
    assert location["bundleType"] == "tgz"

    group = fleet.group()
    [targeted] = fleet.hosts(group, 1)
    [outsider] = fleet.hosts(None, 1)
    never_pushed = {**location, "key": f"bundles/{'0' * 64}.tgz", "eTag": "0" * 64}
    _client_error(
        site.codedeploy.create_deployment,
        "RevisionDoesNotExistException",
        applicationName=group.application,
        deploymentGroupName=group.name,
        revision={"revisionType": "S3", "s3Location": never_pushed},
    )
    group.deploy(revision)
    client = agentsim.agent_client(site.server, targeted)
    _, document, _ = agentsim.open_envelope(
        _spec(client, targeted, _take(client, targeted))["DeploymentSpecification"][
            "GenericEnvelope"
        ]["Payload"]
    )
    bundle = document["OpenDeploy"]["Bundle"]
    assert bundle["Sha256"] == sha256
    assert bundle["Size"] == len(body)
    assert bundle["Path"] == f"/agent/bundles/{sha256}"
    assert document["Revision"]["S3Revision"]["Bucket"] == "opendeploy-local"

    whole = _fetch(site, targeted, bundle["Path"])
    assert whole.status_code == 200, whole.text
    assert whole.content == body
    rest = _fetch(site, targeted, bundle["Path"], Range="bytes=10-")
    assert rest.status_code == 206, rest.text
    assert rest.content == body[10:]
    assert rest.headers["Content-Range"] == f"bytes 10-{len(body) - 1}/{len(body)}"
    denied = _fetch(site, outsider, bundle["Path"])
    assert denied.status_code == 403, denied.text
    assert denied.json()["__type"] == "AccessDeniedException"
    assert httpx.get(site.server.endpoint + bundle["Path"]).status_code in (400, 403)


# -- long polls and heartbeats (dedicated servers) -----------------------------------------------


def test_an_idle_long_poll_answers_empty_after_long_poll_seconds(quick_fleet: Fleet) -> None:
    [host] = quick_fleet.hosts(None, 1)
    client = agentsim.agent_client(quick_fleet.site.server, host)

    started = time.monotonic()
    response = client.poll_host_command(HostIdentifier=host.arn)
    elapsed = time.monotonic() - started

    assert "HostCommand" not in response
    assert 0.4 <= elapsed < 5.0


def test_a_quiet_host_gets_a_command_created_between_its_polls_at_its_next_poll(
    quick_fleet: Fleet,
) -> None:
    """A poll that found nothing lets the next ones skip the look; a deployment created while
    no poll is held must still reach the host's next poll at once."""
    group = quick_fleet.group()
    [host] = quick_fleet.hosts(group, 1)
    client = agentsim.agent_client(quick_fleet.site.server, host)
    for _ in range(2):
        assert "HostCommand" not in client.poll_host_command(HostIdentifier=host.arn)
    group.deploy(agentsim.s3_revision())

    started = time.monotonic()
    command = _take(client, host)

    assert command["CommandName"] == "ApplicationStop"
    assert time.monotonic() - started < 0.4, "answered by a look, not the end of the poll"


def test_a_command_handed_over_but_not_acknowledged_is_not_handed_over_again_at_once(
    quick_fleet: Fleet,
) -> None:
    group = quick_fleet.group()
    [host] = quick_fleet.hosts(group, 1)
    group.deploy(agentsim.s3_revision())
    client = agentsim.agent_client(quick_fleet.site.server, host)
    assert _take(client, host)["CommandName"] == "ApplicationStop"

    again = client.poll_host_command(HostIdentifier=host.arn)

    assert "HostCommand" not in again


def test_waiting_long_polls_are_woken_by_create_deployment_each_with_its_command(
    patient_fleet: Fleet,
) -> None:
    """Polls woken together are looked for together (one claim): each host gets its own
    command, and a host outside the deployment keeps waiting."""
    site = patient_fleet.site
    group = patient_fleet.group()
    hosts = patient_fleet.hosts(group, 3)
    [outsider] = patient_fleet.hosts(patient_fleet.group(), 1)
    answers: dict[str, tuple[float, dict[str, Any]]] = {}

    def poll(host: Host) -> None:
        client = agentsim.agent_client(site.server, host)
        response = client.poll_host_command(HostIdentifier=host.arn)
        answers[host.name] = (time.monotonic(), response)

    pollers = [threading.Thread(target=poll, args=(h,), daemon=True) for h in [*hosts, outsider]]
    for poller in pollers:
        poller.start()
    # The server records the contact once it holds the poll (its waiter is registered first).
    database = Database(site.database_url)
    try:
        for host in [*hosts, outsider]:
            agentsim.wait_for(
                lambda h=host: _last_contact(database, h.name),  # type: ignore[misc]
                what=f"the server to hold {host.name}'s poll",
            )
    finally:
        database.dispose()
    time.sleep(0.2)
    assert not answers, "a poll answered before there was work"

    created = time.monotonic()
    deployment_id = group.deploy(agentsim.s3_revision())
    for poller in pollers[:-1]:
        poller.join(timeout=25)

    assert sorted(answers) == sorted(host.name for host in hosts), "the polls were not answered"
    commands: dict[str, str] = {}
    for host in hosts:
        answered, response = answers[host.name]
        # Well before the 30 s long poll, and before the server's 5 s re-check would answer it.
        assert answered - created < 4.0
        command = response["HostCommand"]
        assert command["HostIdentifier"] == host.arn
        assert command["DeploymentExecutionId"].endswith(deployment_id)
        commands[command["HostCommandIdentifier"]] = host.name
    assert len(commands) == len(hosts)
    database = Database(site.database_url)
    try:
        with database.read() as connection:
            for command_id, name in commands.items():
                stored = store.command_by_id(connection, command_id)
                assert stored is not None and stored.instance_name == name
    finally:
        database.dispose()
    assert pollers[-1].is_alive(), "the host outside the deployment was answered"


def _last_contact(database: Database, name: str) -> float | None:
    with database.read() as connection:
        return contacts.last_contacts(connection, [name]).get(name)


def test_a_silent_agent_fails_its_event_as_heartbeat_lost(quick_fleet: Fleet) -> None:
    site = quick_fleet.site
    group = quick_fleet.group("CodeDeployDefault.AllAtOnce")
    hosts = quick_fleet.hosts(group, 2)
    quiet = quick_fleet.run(hosts[0], silent_on="BeforeInstall")
    never_acked = quick_fleet.run(hosts[1], silent_on="Install", ack_before_silence=False)
    deployment_id = group.deploy(agentsim.s3_revision())

    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id, timeout=15)

    assert quiet.silenced.is_set() and never_acked.silenced.is_set()
    assert info["status"] == "Failed"
    assert info["errorInformation"]["code"] == "AGENT_ISSUE"
    found = targets(site.codedeploy, deployment_id)
    for host, event_name in ((hosts[0], "BeforeInstall"), (hosts[1], "Install")):
        target = found[host.name]
        assert target["status"] == "Failed"
        event = target["lifecycleEvents"][EVENTS.index(event_name)]
        assert event["status"] == "Failed"
        assert event["diagnostics"]["errorCode"] == "UnknownError"
        assert event["diagnostics"]["message"].startswith(HEARTBEAT_LOST), event
        assert host.name in event["diagnostics"]["message"]
        following = EVENTS[EVENTS.index(event_name) + 1 :]
        assert all(event_statuses(target)[e] == "Skipped" for e in following)


def test_a_working_agent_is_not_lost_while_its_events_run_longer_than_the_timeout(
    quick_fleet: Fleet,
) -> None:
    """Contact, not event duration, is what the heartbeat measures: an agent that sends
    PostHostCommandUpdate while a long event runs keeps its host."""
    site = quick_fleet.site
    group = quick_fleet.group()
    [host] = quick_fleet.hosts(group, 1)
    client = agentsim.agent_client(site.server, host)
    deployment_id = group.deploy(agentsim.s3_revision())
    command = _take(client, host)
    _ack(client, command)
    for _ in range(7):  # 1.4 s, beyond the 1 s heartbeat timeout
        time.sleep(0.2)
        update = client.post_host_command_update(
            HostCommandIdentifier=command["HostCommandIdentifier"]
        )
        assert update["CommandStatus"] == "InProgress"
    _complete(client, command)

    quick_fleet.run(host)
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    assert info["status"] == "Succeeded", info


def test_an_agent_fetching_the_specification_for_every_command_deploys(
    fleet: Fleet, site: Site
) -> None:
    """The stock agent asks for the specification with every command; it is the same each time."""
    group = fleet.group()
    [host] = fleet.hosts(group, 1)
    agent = fleet.run(host, spec_every_command=True)
    deployment_id = group.deploy(agentsim.s3_revision())

    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)

    assert info["status"] == "Succeeded"
    assert agent.events(deployment_id) == list(EVENTS)
    assert agent.specs[deployment_id]["DeploymentId"] == deployment_id
