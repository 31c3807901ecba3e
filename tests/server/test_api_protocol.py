"""The JSON 1.1 wire edges: bodies, targets, limits, model validation, faults, request ids."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from opendeploy.server.app import create_app
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.registry import CODEDEPLOY_OPERATIONS, IAM_OPERATIONS
from opendeploy.store import identities
from opendeploy.store.database import Database

JSON = "application/x-amz-json-1.1"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
PREFIX = "CodeDeploy_20141006."
MAX_REQUEST_BYTES = 1024 * 1024  # the default, which the shared server uses
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def server(running_server: Any) -> Any:
    """The shared server, with Nagle's algorithm off on its listening socket (conftest binds it
    with protocol 0, so asyncio leaves TCP_NODELAY off and each response waits ~40 ms)."""
    for listener in getattr(getattr(running_server, "_server", None), "servers", None) or []:
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return running_server


@functools.cache
def http() -> httpx.Client:
    """One HTTP client for the module: a new one per request costs ~40 ms of TLS set-up."""
    return httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http().close()
    http.cache_clear()


@functools.cache
def _boto3_session() -> boto3.session.Session:
    return boto3.session.Session()


def client(server: Any, service: str = "codedeploy", **config: Any) -> Any:
    return _boto3_session().client(
        service,
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
    )


def sign(server: Any, body: bytes, headers: dict[str, str], service: str) -> dict[str, str]:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers=headers)
    credentials = Credentials(server.access_key_id, server.secret_access_key)
    SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    return dict(request.headers.items())


def call(server: Any, target: str | None, body: bytes | Any = b"{}") -> httpx.Response:
    """POST a signed JSON 1.1 request; ``body`` may be bytes or anything JSON can encode."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": JSON}
    if target is not None:
        headers["X-Amz-Target"] = target if "." in target else PREFIX + target
    return http().post(
        server.endpoint + "/", content=raw, headers=sign(server, raw, headers, "codedeploy")
    )


def iam_call(server: Any, action: str, **params: str) -> httpx.Response:
    body = urlencode({"Action": action, "Version": "2010-05-08", **params}).encode()
    headers = sign(server, body, {"Content-Type": FORM}, "iam")
    return http().post(server.endpoint + "/", content=body, headers=headers)


def json_error(response: httpx.Response) -> tuple[int, str, str]:
    """(status, __type, message) of a well-formed JSON 1.1 error."""
    assert response.headers["content-type"] == JSON, response.text
    assert UUID.fullmatch(response.headers["x-amzn-RequestId"])
    body = response.json()
    assert set(body) == {"__type", "message"}, body
    assert response.headers["x-amzn-ErrorType"] == body["__type"]
    return response.status_code, body["__type"], body["message"]


# --- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"{'applicationName': 'x'}", b'{"a": 1,}', b"\xff\xfe\x00garbage", b"nul"],
    ids=["truncated", "single-quotes", "trailing-comma", "not-utf8", "bare-word"],
)
def test_malformed_json_is_a_serialization_error(server: Any, body: bytes) -> None:
    status, code, message = json_error(call(server, "ListApplications", body))
    assert (status, code) == (400, "SerializationException")
    assert "not valid JSON" in message


def test_json_nested_beyond_reason_is_a_serialization_error_not_a_fault(server: Any) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    assert len(body) < MAX_REQUEST_BYTES
    status, code, _ = json_error(call(server, "ListApplications", body))
    assert (status, code) == (400, "SerializationException")


@pytest.mark.parametrize("body", [b"[]", b'"applications"', b"42", b"null", b"true", b"[{}]"])
def test_json_that_is_not_an_object_is_a_serialization_error(server: Any, body: bytes) -> None:
    assert json_error(call(server, "ListApplications", body)) == (
        400,
        "SerializationException",
        "The request body must be a JSON object.",
    )


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}"])
def test_an_empty_body_means_no_parameters(server: Any, body: bytes) -> None:
    response = call(server, "ListApplications", body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON
    assert isinstance(response.json()["applications"], list)


def test_members_outside_the_model_are_ignored(server: Any) -> None:
    response = call(server, "ListApplications", {"someday": "maybe", "nextToken": None})
    assert response.status_code == 200, response.text


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "CodeDeploy_20141006.NoSuchOperation",
        "CodeDeploy_20141006.",
        "CodeDeploy_20141006.listApplications",
        "CodeDeploy_20990101.ListApplications",
        "DynamoDB_20120810.ListTables",
        "CodeDeployCommandService_v20141006.NotAnOperation",
        "ListApplications.",
    ],
)
def test_unknown_target_is_unknown_operation(server: Any, target: str) -> None:
    status, code, message = json_error(call(server, target))
    assert (status, code) == (400, "UnknownOperationException")
    assert target in message


def test_missing_target_is_unknown_operation(server: Any) -> None:
    status, code, _ = json_error(call(server, None))
    assert (status, code) == (400, "UnknownOperationException")


# --- size limit ----------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = b'{"pad":"' + b"x" * (size - 10) + b'"}'
    assert len(body) == size
    return body


def test_a_body_at_the_limit_is_accepted(server: Any) -> None:
    response = call(server, "ListApplications", _padded(MAX_REQUEST_BYTES))
    assert response.status_code == 200, response.text[:200]


def test_a_body_over_the_limit_is_413_with_a_json_error(server: Any) -> None:
    response = call(server, "ListApplications", _padded(MAX_REQUEST_BYTES + 1))
    status, code, message = json_error(response)
    assert (status, code) == (413, "RequestEntityTooLargeException")
    assert str(MAX_REQUEST_BYTES) in message


def test_a_streamed_body_over_the_limit_is_413(server: Any) -> None:
    """No Content-Length (chunked): the server counts as it reads."""

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_REQUEST_BYTES // 2)

    response = http().post(
        server.endpoint + "/",
        content=chunks(),
        headers={"Content-Type": JSON, "X-Amz-Target": PREFIX + "ListApplications"},
    )
    assert "content-length" not in response.request.headers
    assert json_error(response)[:2] == (413, "RequestEntityTooLargeException")


def test_an_iam_body_over_the_limit_is_413_in_xml(server: Any) -> None:
    body = urlencode({"Action": "ListUsers", "Version": "2010-05-08", "x": "y" * MAX_REQUEST_BYTES})
    response = http().post(server.endpoint + "/", content=body, headers={"Content-Type": FORM})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Code>RequestEntityTooLargeException</Code>" in response.text


# --- modelled operations this server does not serve yet -------------------------------------

UNSERVED: list[tuple[str, str, dict[str, Any]]] = [
    ("CreateDeployment", "create_deployment", {"applicationName": "app"}),
    ("GetDeployment", "get_deployment", {"deploymentId": "d-ABCDEFGHI"}),
    ("ListDeployments", "list_deployments", {}),
    ("StopDeployment", "stop_deployment", {"deploymentId": "d-ABCDEFGHI"}),
]


@pytest.mark.parametrize(("operation", "method", "params"), UNSERVED, ids=[u[0] for u in UNSERVED])
def test_a_modelled_but_unserved_operation_is_a_fast_clear_error(
    server: Any, monkeypatch: pytest.MonkeyPatch, operation: str, method: str, params: Any
) -> None:
    # Taken out of the registry so the test holds once the operation is served.
    monkeypatch.delitem(CODEDEPLOY_OPERATIONS, operation, raising=False)  # type: ignore[arg-type]
    codedeploy = client(server, connect_timeout=5, read_timeout=5)
    started = time.monotonic()
    with pytest.raises(ClientError) as caught:
        getattr(codedeploy, method)(**params)
    assert time.monotonic() - started < 3
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "OperationNotSupportedException"
    assert operation in response["Error"]["Message"]

    status, code, message = json_error(call(server, operation, {}))
    assert (status, code) == (400, "OperationNotSupportedException")
    assert operation in message


# --- validation against botocore's model ----------------------------------------------------

GROUP = {
    "applicationName": "app",
    "deploymentGroupName": "group",
    "serviceRoleArn": "arn:aws:iam::123456789012:role/CodeDeploy",
}
VALIDATION_CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    (
        "CreateApplication",
        {"applicationName": 5},
        "InvalidApplicationNameException",
        ["'applicationName'", "must be a string"],
    ),
    (
        "CreateApplication",
        {"applicationName": "a" * 101},
        "InvalidApplicationNameException",
        ["'applicationName'", "length less than or equal to 100"],
    ),
    (
        "UpdateApplication",
        {"applicationName": "app", "newApplicationName": "n" * 101},
        "InvalidApplicationNameException",
        ["'newApplicationName'", "100"],
    ),
    (
        "CreateApplication",
        {"applicationName": "app", "computePlatform": "Windows"},
        "InvalidComputePlatformException",
        ["'computePlatform'", "'Windows'", "[Server, Lambda, ECS]"],
    ),
    ("CreateApplication", {}, "ApplicationNameRequiredException", ["applicationName"]),
    ("CreateApplication", {"applicationName": ""}, "ApplicationNameRequiredException", []),
    (
        "ListApplicationRevisions",
        {"applicationName": "app", "sortBy": "size"},
        "InvalidSortByException",
        ["'sortBy'", "registerTime"],
    ),
    (
        "ListApplicationRevisions",
        {"applicationName": "app", "sortOrder": 1},
        "InvalidSortOrderException",
        ["'sortOrder'", "must be a string"],
    ),
    (
        "BatchGetApplications",
        {"applicationNames": "app"},
        "InvalidApplicationNameException",
        ["'applicationNames'", "must be a list"],
    ),
    (
        "BatchGetApplications",
        {"applicationNames": ["fine", "b" * 101]},
        "InvalidApplicationNameException",
        ["'applicationNames[1]'"],
    ),
    (
        "CreateDeploymentGroup",
        {**GROUP, "ec2TagFilters": [{"Key": "k", "Type": "SOMETIMES"}]},
        "InvalidEC2TagException",
        ["'ec2TagFilters[0].Type'", "KEY_AND_VALUE"],
    ),
    (
        "CreateDeploymentGroup",
        {**GROUP, "autoRollbackConfiguration": {"enabled": "yes"}},
        "InvalidAutoRollbackConfigException",
        ["'autoRollbackConfiguration.enabled'", "true or false"],
    ),
    (
        "CreateDeploymentGroup",
        {**GROUP, "deploymentStyle": "IN_PLACE"},
        "InvalidDeploymentStyleException",
        ["'deploymentStyle'", "object"],
    ),
    (
        "CreateDeploymentConfig",
        {
            "deploymentConfigName": "cfg",
            "minimumHealthyHosts": {"type": "HOST_COUNT", "value": "2"},
        },
        "InvalidMinimumHealthyHostValueException",
        ["'minimumHealthyHosts.value'", "whole number"],
    ),
    (
        "CreateDeploymentConfig",
        {"deploymentConfigName": "cfg", "minimumHealthyHosts": {"type": "MOST", "value": 2}},
        "InvalidMinimumHealthyHostValueException",
        ["'minimumHealthyHosts.type'", "HOST_COUNT"],
    ),
    ("ListApplications", {"nextToken": 7}, "InvalidNextTokenException", ["'nextToken'"]),
]


@pytest.mark.parametrize(
    ("operation", "params", "code", "fragments"),
    VALIDATION_CASES,
    ids=[f"{case[0]}-{case[2]}-{index}" for index, case in enumerate(VALIDATION_CASES)],
)
def test_model_validation_names_the_member(
    server: Any, operation: str, params: dict[str, Any], code: str, fragments: list[str]
) -> None:
    status, got, message = json_error(call(server, operation, params))
    assert (status, got) == (400, code), message
    for fragment in fragments:
        assert fragment in message


def test_validation_comes_before_existence(server: Any, unique: Callable[[str], str]) -> None:
    """The application does not exist, but the malformed member is reported first."""
    params = {**GROUP, "applicationName": unique("missing"), "ec2TagFilters": [{"Type": "NO"}]}
    assert json_error(call(server, "CreateDeploymentGroup", params))[1] == "InvalidEC2TagException"


def test_a_name_of_exactly_100_characters_is_fine(
    server: Any, unique: Callable[[str], str]
) -> None:
    name = unique("app").ljust(100, "x")
    response = call(server, "CreateApplication", {"applicationName": name})
    assert response.status_code == 200, response.text
    assert call(server, "DeleteApplication", {"applicationName": name}).status_code == 200


def test_boto3_without_client_validation_gets_the_modelled_exception(server: Any) -> None:
    codedeploy = client(server, parameter_validation=False)
    with pytest.raises(codedeploy.exceptions.InvalidApplicationNameException) as caught:
        codedeploy.create_application(applicationName="z" * 101)
    assert "'applicationName'" in caught.value.response["Error"]["Message"]
    with pytest.raises(codedeploy.exceptions.InvalidComputePlatformException):
        codedeploy.create_application(applicationName="fine", computePlatform="Mainframe")


# --- internal faults -----------------------------------------------------------------------


def _explode(*_: Any) -> Any:
    raise RuntimeError("kaboom: /srv/secret/path and internal detail")


def test_an_internal_fault_is_a_500_without_a_stack_trace(
    server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(CODEDEPLOY_OPERATIONS, "ListApplications", _explode)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, logger="opendeploy")
    response = call(server, "ListApplications")
    status, code, message = json_error(response)
    assert (status, code) == (500, "InternalFailure")
    request_id = response.headers["x-amzn-RequestId"]
    assert request_id in message
    for leak in ("Traceback", "kaboom", "/srv/secret", "RuntimeError", 'File "', ".py"):
        assert leak not in response.text
    # The operator's log has what the client does not.
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and "kaboom" in str(record.exc_info[1])

    with pytest.raises(ClientError) as caught:
        client(server).list_applications()
    error = caught.value.response
    assert error["Error"]["Code"] == "InternalFailure"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert error["ResponseMetadata"]["RequestId"] in error["Error"]["Message"]


def test_an_internal_fault_in_iam_is_a_500_receiver_error(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(IAM_OPERATIONS, "ListUsers", _explode)  # type: ignore[arg-type]
    response = iam_call(server, "ListUsers")
    assert response.status_code == 500
    root = ET.fromstring(response.content)
    texts = {element.tag.rpartition("}")[2]: element.text for element in root.iter()}
    assert (texts["Type"], texts["Code"]) == ("Receiver", "InternalFailure")
    assert texts["RequestId"] == response.headers["x-amzn-RequestId"]
    assert "kaboom" not in response.text and "Traceback" not in response.text


def test_an_internal_fault_in_a_mutating_call_is_audited(
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    unique: Callable[[str], str],
) -> None:
    monkeypatch.setitem(CODEDEPLOY_OPERATIONS, "CreateApplication", _explode)  # type: ignore[arg-type]
    response = call(server, "CreateApplication", {"applicationName": unique("app")})
    assert response.status_code == 500
    request_id = response.headers["x-amzn-RequestId"]
    sqlite = server.data_dir / "opendeploy.db"
    url = f"sqlite:///{sqlite}" if sqlite.exists() else request.getfixturevalue("postgres_url")
    database = Database(url)
    try:
        with database.read() as connection:
            rows = identities.audit_entries(connection, limit=50)
    finally:
        database.dispose()
    [entry] = [row for row in rows if row.request_id == request_id]
    assert (entry.operation, entry.outcome) == ("CreateApplication", "InternalFailure")


# --- request ids and probes ----------------------------------------------------------------


def test_every_response_carries_a_request_id(server: Any) -> None:
    responses = {
        "success": call(server, "ListApplications"),
        "client error": call(server, "GetApplication", {"applicationName": "no-such-app-x"}),
        "bad json": call(server, "ListApplications", b"{"),
        "unknown target": call(server, "Nope"),
        "unsigned": http().post(
            server.endpoint + "/",
            content=b"{}",
            headers={"Content-Type": JSON, "X-Amz-Target": PREFIX + "ListApplications"},
        ),
        "too large": call(server, "ListApplications", _padded(MAX_REQUEST_BYTES + 1)),
        "iam success": iam_call(server, "GetUser"),
        "iam error": iam_call(server, "GetUser", UserName="no-such-user-x"),
        "healthz": http().get(server.endpoint + "/healthz"),
        "readyz": http().get(server.endpoint + "/readyz"),
        "not found": http().get(server.endpoint + "/no/such/path"),
        "wrong method": http().get(server.endpoint + "/"),
    }
    ids = {}
    for label, response in responses.items():
        ids[label] = response.headers.get("x-amzn-RequestId", "")
        assert UUID.fullmatch(ids[label]), (label, response.status_code, response.headers)
    assert len(set(ids.values())) == len(ids)
    assert [responses[k].status_code for k in ("not found", "wrong method")] == [404, 405]

    reply = client(server).list_applications()
    assert UUID.fullmatch(reply["ResponseMetadata"]["RequestId"])
    assert (
        reply["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
        == (reply["ResponseMetadata"]["RequestId"])
    )


def test_health_and_readiness_probes_need_no_signature(server: Any) -> None:
    health = http().get(server.endpoint + "/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = http().get(server.endpoint + "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert http().post(server.endpoint + "/healthz").status_code == 405


def test_readiness_fails_while_the_database_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = Database(f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing?connect_timeout=2")
    context = ServiceContext(
        db=database,
        secrets=SecretBox.from_key(SecretBox.generate_key()),
        account_id="123456789012",
        region="us-east-1",
        clock=time.time,
    )

    async def probe(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(context))
        async with httpx.AsyncClient(transport=transport, base_url="http://od") as probes:
            return await probes.get(path)

    try:
        assert asyncio.run(probe("/healthz")).status_code == 200
        ready = asyncio.run(probe("/readyz"))
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert "nobody" not in ready.text  # a class name, not the connection string
        assert UUID.fullmatch(ready.headers["x-amzn-RequestId"])
    finally:
        database.dispose()


def test_request_ids_are_fresh_per_request(server: Any) -> None:
    ids = {call(server, "ListApplications").headers["x-amzn-RequestId"] for _ in range(5)}
    assert len(ids) == 5
    assert all(uuid.UUID(value).version == 4 for value in ids)
