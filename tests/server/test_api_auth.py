"""Authentication at the wire: requests crafted with httpx and botocore's own SigV4 signer."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import boto3
import botocore
import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from opendeploy.core.policies import POLICY_ARNS, Role
from opendeploy.store.database import Database

JSON = "application/x-amz-json-1.1"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
LIST_APPLICATIONS = "CodeDeploy_20141006.ListApplications"


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


def client(server: Any, service: str, key: str, secret: str, **config: Any) -> Any:
    return _boto3_session().client(
        service,
        endpoint_url=server.endpoint,
        region_name=config.pop("region", "us-east-1"),
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, **config),
    )


def signed_headers(
    server: Any,
    body: bytes,
    headers: dict[str, str],
    *,
    key: str | None = None,
    secret: str | None = None,
    service: str = "codedeploy",
    region: str = "us-east-1",
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers=headers)
    credentials = Credentials(key or server.access_key_id, secret or server.secret_access_key)
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())


def post(server: Any, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http().post(server.endpoint + "/", content=body, headers=headers, timeout=10)


def json_call(
    server: Any, target: str = LIST_APPLICATIONS, body: bytes = b"{}", **sign: Any
) -> httpx.Response:
    headers = {"Content-Type": JSON, "X-Amz-Target": target}
    return post(server, body, signed_headers(server, body, headers, **sign))


def query_body(action: str, **params: str) -> bytes:
    return urlencode({"Action": action, "Version": "2010-05-08", **params}).encode()


def query_call(server: Any, action: str, **params: Any) -> httpx.Response:
    sign = {k: params.pop(k) for k in ("key", "secret", "service") if k in params}
    body = query_body(action, **params)
    headers = signed_headers(server, body, {"Content-Type": FORM}, **{"service": "iam", **sign})
    return post(server, body, headers)


def json_error(response: httpx.Response) -> tuple[int, str, str]:
    assert response.headers["content-type"] == JSON
    assert response.headers["x-amzn-RequestId"]
    body = response.json()
    assert set(body) == {"__type", "message"}
    assert response.headers["x-amzn-ErrorType"] == body["__type"]
    return response.status_code, body["__type"], body["message"]


def query_error(response: httpx.Response) -> tuple[int, str, str]:
    root = ET.fromstring(response.content)
    namespace = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    error = root.find(f"{namespace}Error")
    assert error is not None, response.text
    code = error.findtext(f"{namespace}Code") or ""
    message = error.findtext(f"{namespace}Message") or ""
    assert root.findtext(f"{namespace}RequestId") == response.headers["x-amzn-RequestId"]
    return response.status_code, code, message


@pytest.fixture
def reader(server: Any, unique: Callable[[str], str]) -> dict[str, str]:
    iam = client(server, "iam", server.access_key_id, server.secret_access_key)
    name = unique("reader")
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=POLICY_ARNS[Role.READER])
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"name": name, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


# --- a correctly signed request, for contrast ---------------------------------------------


def test_a_signed_request_is_accepted(server: Any) -> None:
    response = json_call(server)
    assert response.status_code == 200, response.text
    assert "applications" in response.json()
    assert response.headers["content-type"] == JSON
    assert response.headers["x-amzn-RequestId"]


def test_revoking_a_key_or_a_policy_takes_effect_at_once(
    server: Any, reader: dict[str, str]
) -> None:
    """The server keeps who a key stands for in memory; IAM changes reach it when they
    commit, not when the memory expires."""
    iam = client(server, "iam", server.access_key_id, server.secret_access_key)
    as_reader = {"key": reader["key"], "secret": reader["secret"]}
    assert json_call(server, **as_reader).status_code == 200

    iam.detach_user_policy(UserName=reader["name"], PolicyArn=POLICY_ARNS[Role.READER])
    status, code, _ = json_error(json_call(server, **as_reader))
    assert (status, code) == (403, "AccessDeniedException")

    iam.attach_user_policy(UserName=reader["name"], PolicyArn=POLICY_ARNS[Role.READER])
    assert json_call(server, **as_reader).status_code == 200

    iam.delete_access_key(UserName=reader["name"], AccessKeyId=reader["key"])
    status, code, _ = json_error(json_call(server, **as_reader))
    assert (status, code) == (400, "UnrecognizedClientException")


def test_any_signing_region_is_accepted(server: Any) -> None:
    assert json_call(server, region="eu-west-3").status_code == 200
    codedeploy = client(
        server, "codedeploy", server.access_key_id, server.secret_access_key, region="ap-south-1"
    )
    assert "applications" in codedeploy.list_applications()


# --- missing, malformed and wrong signatures ----------------------------------------------


def test_unsigned_request_is_missing_authentication_token(server: Any) -> None:
    response = post(server, b"{}", {"Content-Type": JSON, "X-Amz-Target": LIST_APPLICATIONS})
    assert json_error(response) == (
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )

    response = post(server, query_body("ListUsers"), {"Content-Type": FORM})
    assert query_error(response)[:2] == (403, "MissingAuthenticationTokenException")

    unsigned = client(server, "codedeploy", "x", "y", signature_version=botocore.UNSIGNED)
    with pytest.raises(ClientError) as caught:
        unsigned.list_applications()
    assert caught.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"


def test_authorization_that_is_not_sigv4_is_refused(server: Any) -> None:
    headers = {
        "Content-Type": JSON,
        "X-Amz-Target": LIST_APPLICATIONS,
        "Authorization": "Basic YWRtaW46YWRtaW4=",
    }
    status, code, message = json_error(post(server, b"{}", headers))
    assert (status, code) == (400, "IncompleteSignatureException")
    assert "AWS4-HMAC-SHA256" in message


def test_wrong_secret_is_an_invalid_signature(server: Any) -> None:
    response = json_call(server, secret=server.secret_access_key[:-1] + "X")
    status, code, message = json_error(response)
    assert (status, code) == (400, "InvalidSignatureException")
    assert "signature we calculated does not match" in message
    assert server.secret_access_key not in response.text

    status, code, _ = query_error(
        query_call(server, "ListUsers", secret=server.secret_access_key[::-1])
    )
    assert (status, code) == (400, "InvalidSignatureException")


def test_a_body_changed_after_signing_is_refused(server: Any, unique: Callable[[str], str]) -> None:
    body = json.dumps({"applicationName": unique("app")}).encode()
    headers = signed_headers(
        server, body, {"Content-Type": JSON, "X-Amz-Target": "CodeDeploy_20141006.GetApplication"}
    )
    other = json.dumps({"applicationName": unique("app")}).encode()
    assert len(other) == len(body)
    assert json_error(post(server, other, headers))[1] == "InvalidSignatureException"


def test_a_reader_cannot_turn_a_signed_read_into_a_write(
    server: Any, reader: dict[str, str], unique: Callable[[str], str]
) -> None:
    """X-Amz-Target is signed: swapping the operation after signing breaks the signature."""
    body = json.dumps({"applicationName": unique("app")}).encode()
    headers = signed_headers(
        server,
        body,
        {"Content-Type": JSON, "X-Amz-Target": "CodeDeploy_20141006.GetApplication"},
        key=reader["key"],
        secret=reader["secret"],
    )
    headers["X-Amz-Target"] = "CodeDeploy_20141006.CreateApplication"
    assert json_error(post(server, body, headers))[1] == "InvalidSignatureException"


def test_unknown_access_key_is_unrecognized(server: Any) -> None:
    response = json_call(server, key="AKIAUNKNOWNUNKNOWN00")
    assert json_error(response) == (
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
    stranger = client(server, "codedeploy", "AKIAUNKNOWNUNKNOWN00", "s" * 40)
    with pytest.raises(ClientError) as caught:
        stranger.list_applications()
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    iam = client(server, "iam", "AKIAUNKNOWNUNKNOWN00", "s" * 40)
    with pytest.raises(ClientError) as caught:
        iam.get_user()
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"


# --- clock skew ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "code", "wording"),
    [
        (-16, "InvalidSignatureException", "Signature expired"),
        (16, "InvalidSignatureException", "Signature not yet current"),
        (-14, None, None),
        (14, None, None),
    ],
)
def test_clock_skew(
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    minutes: int,
    code: str | None,
    wording: str | None,
) -> None:
    """The signer's clock is moved; the server keeps its own. 15 minutes either way is fine."""
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: skewed)
    codedeploy = client(server, "codedeploy", server.access_key_id, server.secret_access_key)
    if code is None:
        assert "applications" in codedeploy.list_applications()
        return
    with pytest.raises(ClientError) as caught:
        codedeploy.list_applications()
    error = caught.value.response["Error"]
    assert error["Code"] == code
    assert wording is not None and error["Message"].startswith(wording)
    assert skewed.strftime("%Y%m%dT%H%M%SZ") in error["Message"]
    # IAM answers the same way, in its XML.
    iam = client(server, "iam", server.access_key_id, server.secret_access_key)
    with pytest.raises(ClientError) as caught:
        iam.get_user()
    assert caught.value.response["Error"]["Code"] == code


# --- the credential scope's service --------------------------------------------------------


@pytest.mark.parametrize("service", ["iam", "codedeploy-commands", "dynamodb"])
def test_a_request_signed_for_another_service_is_refused_by_codedeploy(
    server: Any, service: str
) -> None:
    status, code, message = json_error(json_call(server, service=service))
    assert (status, code) == (400, "InvalidSignatureException")
    assert "'codedeploy'" in message


@pytest.mark.parametrize("service", ["codedeploy", "codedeploy-commands"])
def test_a_request_signed_for_another_service_is_refused_by_iam(server: Any, service: str) -> None:
    status, code, message = query_error(query_call(server, "ListUsers", service=service))
    assert (status, code) == (400, "InvalidSignatureException")
    assert "'iam'" in message


def test_a_codedeploy_target_sent_as_an_iam_form_is_not_an_iam_call(server: Any) -> None:
    """A body signed for IAM but carrying a CodeDeploy target goes to CodeDeploy, and fails."""
    body = query_body("ListUsers")
    headers = signed_headers(
        server, body, {"Content-Type": FORM, "X-Amz-Target": LIST_APPLICATIONS}, service="iam"
    )
    status, code, _ = json_error(post(server, body, headers))
    assert status == 400
    assert code == "InvalidSignatureException"


# --- secrets stay secret ---------------------------------------------------------------------


def test_secrets_never_appear_in_responses_or_logs(
    server: Any,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    unique: Callable[[str], str],
) -> None:
    name = unique("secretive")
    assert query_call(server, "CreateUser", UserName=name).status_code == 200
    attach = query_call(
        server, "AttachUserPolicy", UserName=name, PolicyArn=POLICY_ARNS[Role.READER]
    )
    assert attach.status_code == 200
    caplog.set_level(logging.DEBUG)
    created = query_call(server, "CreateAccessKey", UserName=name)
    assert created.status_code == 200
    root = ET.fromstring(created.content)
    secret = next(e.text for e in root.iter() if e.tag.endswith("SecretAccessKey"))
    key = next(e.text for e in root.iter() if e.tag.endswith("AccessKeyId"))
    assert secret and key and len(secret) == 40

    responses = [
        json_call(server, key=key, secret=secret),  # fine
        json_call(server, key=key, secret=secret, service="iam"),  # wrong service
        json_call(server, key=key, secret=secret[:-1] + "!"),  # wrong secret
        json_call(server, "CodeDeploy_20141006.CreateApplication", key=key, secret=secret),
        query_call(server, "ListAccessKeys", UserName=name),
        query_call(server, "GetUser", UserName=name),
        query_call(server, "ListUsers"),
        query_call(server, "GetUser", key=key, secret=secret),
        query_call(server, "ListUsers", key=key, secret=secret),  # denied
    ]
    body = json.dumps({"applicationName": unique("app")}).encode()
    headers = signed_headers(
        server,
        body,
        {"Content-Type": JSON, "X-Amz-Target": "CodeDeploy_20141006.GetApplication"},
        key=key,
        secret=secret,
    )
    responses.append(post(server, body.replace(b"app-", b"app_"), headers))  # tampered
    assert [r.status_code for r in responses] == [200, 400, 400, 403, 200, 200, 200, 200, 403, 400]

    for response in responses:
        assert secret not in response.text
        assert server.secret_access_key not in response.text
        assert not any(secret in value for value in response.headers.values())
    # The refusals were logged (by code), the secrets never.
    server_records = [r for r in caplog.records if r.name.startswith("opendeploy")]
    assert any("InvalidSignatureException" in r.getMessage() for r in server_records)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert secret not in text, record.name
        assert server.secret_access_key not in text, record.name

    # Nor are they stored in the clear.
    sqlite = server.data_dir / "opendeploy.db"
    url = f"sqlite:///{sqlite}" if sqlite.exists() else request.getfixturevalue("postgres_url")
    database = Database(url)
    try:
        with database.read() as connection:
            dump = "\n".join(
                repr(tuple(row))
                for table in ("users", "access_keys", "user_policies", "audit_log")
                for row in connection.exec_driver_sql(f"SELECT * FROM {table}")
            )
    finally:
        database.dispose()
    assert key in dump
    assert secret not in dump
    assert server.secret_access_key not in dump
    if sqlite.exists():
        for path in server.data_dir.glob("opendeploy.db*"):
            assert secret.encode() not in path.read_bytes()
