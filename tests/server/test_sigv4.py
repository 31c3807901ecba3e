"""SigV4 verification: the stock agent's captured request, real botocore signatures, failures."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from starlette.datastructures import Headers

from opendeploy.core.errors import AuthError
from opendeploy.server.sigv4 import SignedRequest, verify_request

# --- the stock agent's first PollHostCommand (stock-agent-wire.md §3.1 and §8) ----------------

VECTOR_KEY = "AKIALABLABLABLAB0000"
VECTOR_SECRET = "labSecretKeyNotReal0000000000000000000000"
VECTOR_DATE = datetime(2026, 11, 26, 3, 44, 41, tzinfo=UTC)
VECTOR_BODY = b'{"HostIdentifier":"arn:aws:iam::000000000000:user/lab-host"}'
VECTOR_SIGNED = (
    "content-type;host;x-amz-codedeploy-agent-version;x-amz-content-sha256;x-amz-date;x-amz-target"
)
VECTOR_SIGNATURE = "2d7d9a0851dc333a6f410a1aff82c5320a0b16e17773d21fce1ff9c64f798e99"
VECTOR_AUTHORIZATION = (
    f"AWS4-HMAC-SHA256 Credential={VECTOR_KEY}/20261126/us-east-1/codedeploy-commands/"
    f"aws4_request, SignedHeaders={VECTOR_SIGNED}, Signature={VECTOR_SIGNATURE}"
)
VECTOR_CANONICAL_REQUEST = """POST
/

content-type:application/x-amz-json-1.1
host:127.0.0.1:18080
x-amz-codedeploy-agent-version:COMMIT_800eb2882ae1b0b0bf67ff56df5ae31eb013c782
x-amz-content-sha256:1ba11b0fa486603f5694213120a0889d5adef04d0304d4b213404081b3d45bee
x-amz-date:20261126T034441Z
x-amz-target:CodeDeployCommandService_v20141006.PollHostCommand

content-type;host;x-amz-codedeploy-agent-version;x-amz-content-sha256;x-amz-date;x-amz-target
1ba11b0fa486603f5694213120a0889d5adef04d0304d4b213404081b3d45bee"""
VECTOR_STRING_TO_SIGN = """AWS4-HMAC-SHA256
20261126T034441Z
20261126/us-east-1/codedeploy-commands/aws4_request
0c46aa7f1782fc1bc9f1463b214960acdf03fb8e10da5627cd35f404f166f56c"""


def vector_headers() -> dict[str, str]:
    """The request headers in received order, as the stub logged them."""
    return {
        "Accept-Encoding": "",
        "User-Agent": (
            "aws-sdk-ruby3/3.168.1 ruby/3.1.2 x86_64-linux-gnu aws-sdk-codedeploycommand/1.0.0"
        ),
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "CodeDeployCommandService_v20141006.PollHostCommand",
        "X-Amz-Codedeploy-Agent-Version": "COMMIT_800eb2882ae1b0b0bf67ff56df5ae31eb013c782",
        "Host": "127.0.0.1:18080",
        "X-Amz-Date": "20261126T034441Z",
        "X-Amz-Content-Sha256": (
            "1ba11b0fa486603f5694213120a0889d5adef04d0304d4b213404081b3d45bee"
        ),
        "Authorization": VECTOR_AUTHORIZATION,
        "Content-Length": "60",
        "Accept": "*/*",
    }


def vector_secret(key: str) -> str | None:
    return VECTOR_SECRET if key == VECTOR_KEY else None


def verify_vector(
    headers: Mapping[str, str] | None = None,
    *,
    body: bytes = VECTOR_BODY,
    now: datetime = VECTOR_DATE + timedelta(seconds=3),
    secret_for: Any = vector_secret,
    **kwargs: Any,
) -> SignedRequest:
    return verify_request(
        method="POST",
        path="/",
        query="",
        headers=vector_headers() if headers is None else headers,
        body=body,
        secret_for=secret_for,
        now=now,
        **kwargs,
    )


def auth_error(code: str, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify_vector(**kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


# --- an independent, by-the-spec signer (stdlib only), used to build unusual requests ---------


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def spec_sign(
    headers: list[tuple[str, str]],
    signed: list[str],
    *,
    secret: str,
    key: str,
    payload_hash: str,
    scope: str = "20261126/us-east-1/codedeploy-commands",
    amz_date: str = "20261126T034441Z",
) -> str:
    """Authorization header for POST / with the given headers, per the SigV4 specification."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(signed)
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            "".join(f"{n}:{','.join(values[n])}\n" for n in names),
            ";".join(names),
            payload_hash,
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            f"{scope}/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    signing_key = f"AWS4{secret}".encode()
    for part in [*scope.split("/"), "aws4_request"]:
        signing_key = _hmac(signing_key, part)
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}/aws4_request, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


def test_the_spec_signer_reproduces_the_captured_signature() -> None:
    # Guards the helper above: if it agrees with the stock agent, tests built on it are sound.
    headers = [(k, v) for k, v in vector_headers().items() if k != "Authorization"]
    authorization = spec_sign(
        headers,
        VECTOR_SIGNED.split(";"),
        secret=VECTOR_SECRET,
        key=VECTOR_KEY,
        payload_hash=hashlib.sha256(VECTOR_BODY).hexdigest(),
    )
    assert authorization == VECTOR_AUTHORIZATION


# --- the stock agent's vector -------------------------------------------------------------


def test_stock_agent_vector_verifies() -> None:
    assert hashlib.sha256(VECTOR_BODY).hexdigest() == vector_headers()["X-Amz-Content-Sha256"]
    signed = verify_vector(services={"codedeploy-commands"})
    assert signed == SignedRequest(
        access_key_id=VECTOR_KEY,
        service="codedeploy-commands",
        region="us-east-1",
        amz_date=VECTOR_DATE,
        signed_headers=tuple(VECTOR_SIGNED.split(";")),
    )


def test_header_names_are_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in vector_headers().items()}
    upper = {k.upper(): v for k, v in vector_headers().items()}
    assert verify_vector(lower).access_key_id == VECTOR_KEY
    assert verify_vector(upper).access_key_id == VECTOR_KEY


def test_starlette_headers_are_accepted() -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in vector_headers().items()]
    assert verify_vector(Headers(raw=raw)).region == "us-east-1"


def test_unsigned_extra_and_changed_unsigned_headers_are_fine() -> None:
    headers = vector_headers()
    headers["X-Forwarded-For"] = "10.0.0.9"
    headers["User-Agent"] = "something else entirely"
    headers["Accept"] = "application/json"
    assert verify_vector(headers).service == "codedeploy-commands"


def test_wrong_secret_shows_the_canonical_request_botocore_rebuilt() -> None:
    # The message carries botocore's canonical request and string to sign: they must be the
    # ones the stock agent signed, byte for byte (body hash taken from X-Amz-Content-Sha256).
    error = auth_error("InvalidSignatureException", secret_for=lambda key: "not" + VECTOR_SECRET)
    assert error.status == 400
    assert error.message.startswith(
        "The request signature we calculated does not match the signature you provided."
    )
    assert f"'{VECTOR_CANONICAL_REQUEST}'" in error.message
    assert f"'{VECTOR_STRING_TO_SIGN}'" in error.message
    assert VECTOR_SECRET not in error.message


def test_botocore_takes_a_content_sha256_header_on_trust() -> None:
    # Why verify_request compares the body with X-Amz-Content-Sha256 itself.
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:18080/",
        data=b"a different body",
        headers={"X-Amz-Content-SHA256": "0" * 64, "X-Amz-Date": "20261126T034441Z"},
    )
    request.context["timestamp"] = "20261126T034441Z"
    signer = SigV4Auth(Credentials(VECTOR_KEY, VECTOR_SECRET), "codedeploy-commands", "us-east-1")
    assert signer.canonical_request(request).endswith("\n" + "0" * 64)


def test_tampered_body_is_rejected_even_though_the_signed_hash_header_is_intact() -> None:
    body = VECTOR_BODY.replace(b"lab-host", b"lab-hosu")
    error = auth_error("InvalidSignatureException", body=body)
    assert "X-Amz-Content-Sha256" in error.message
    assert error.status == 400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Amz-Target", "CodeDeployCommandService_v20141006.PutHostCommandComplete"),
        ("Host", "127.0.0.1:18081"),
        ("X-Amz-Codedeploy-Agent-Version", "COMMIT_0000000000000000000000000000000000000000"),
        ("Content-Type", "application/json"),
    ],
)
def test_tampered_signed_header_is_rejected(name: str, value: str) -> None:
    headers = vector_headers()
    headers[name] = value
    error = auth_error("InvalidSignatureException", headers=headers)
    assert "does not match the signature you provided" in error.message


def test_changed_content_sha256_with_matching_body_is_rejected() -> None:
    body = b"{}"
    headers = vector_headers()
    headers["X-Amz-Content-Sha256"] = hashlib.sha256(body).hexdigest()
    auth_error("InvalidSignatureException", headers=headers, body=body)


def test_signature_is_compared_exactly() -> None:
    headers = vector_headers()
    headers["Authorization"] = VECTOR_AUTHORIZATION[:-1] + "f"
    auth_error("InvalidSignatureException", headers=headers)
    headers["Authorization"] = VECTOR_AUTHORIZATION + "00"
    auth_error("InvalidSignatureException", headers=headers)
    headers["Authorization"] = VECTOR_AUTHORIZATION.replace(VECTOR_SIGNATURE, "é" * 64)
    auth_error("InvalidSignatureException", headers=headers)


# --- failure modes, with AWS's codes and wording ---------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_authorization(value: str | None) -> None:
    headers = vector_headers()
    del headers["Authorization"]
    if value is not None:
        headers["Authorization"] = value
    error = auth_error("MissingAuthenticationTokenException", headers=headers)
    assert error.message == "Missing Authentication Token"
    assert error.status == 403


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [
        ("Bearer abc", "Unsupported AWS 'algorithm'"),
        ("AWS4-HMAC-SHA512 " + VECTOR_AUTHORIZATION.split(" ", 1)[1], "algorithm"),
        ("AWS4-HMAC-SHA256", "requires 'Credential' parameter"),
        (
            VECTOR_AUTHORIZATION.replace(f", Signature={VECTOR_SIGNATURE}", ""),
            "requires 'Signature' parameter",
        ),
        (
            VECTOR_AUTHORIZATION.replace(f"SignedHeaders={VECTOR_SIGNED}, ", ""),
            "requires 'SignedHeaders' parameter",
        ),
        (
            VECTOR_AUTHORIZATION.replace("/us-east-1/", "/"),
            "Credential must have exactly 5 slash-delimited elements",
        ),
        (
            VECTOR_AUTHORIZATION.replace("/us-east-1/", "//"),
            "Credential must have exactly 5 slash-delimited elements",
        ),
    ],
)
def test_malformed_authorization(authorization: str, fragment: str) -> None:
    headers = vector_headers()
    headers["Authorization"] = authorization
    error = auth_error("IncompleteSignatureException", headers=headers)
    assert fragment in error.message
    assert error.status == 400


def test_missing_x_amz_date() -> None:
    headers = vector_headers()
    del headers["X-Amz-Date"]
    error = auth_error("IncompleteSignatureException", headers=headers)
    assert "'X-Amz-Date' or a 'Date' header" in error.message


@pytest.mark.parametrize("value", ["2026-11-26T03:44:41Z", "20261126T034441", "20261326T034441Z"])
def test_malformed_x_amz_date(value: str) -> None:
    headers = vector_headers()
    headers["X-Amz-Date"] = value
    error = auth_error("IncompleteSignatureException", headers=headers)
    assert "ISO-8601 'basic format'" in error.message


@pytest.mark.parametrize(("unsigned", "fragment"), [("host", "'Host'"), ("x-amz-date", "Date")])
def test_host_and_date_must_be_signed(unsigned: str, fragment: str) -> None:
    headers = vector_headers()
    signed = ";".join(n for n in VECTOR_SIGNED.split(";") if n != unsigned)
    headers["Authorization"] = VECTOR_AUTHORIZATION.replace(VECTOR_SIGNED, signed)
    error = auth_error("IncompleteSignatureException", headers=headers)
    assert fragment in error.message
    assert "must be a 'SignedHeader'" in error.message


def test_signed_header_absent_from_request() -> None:
    headers = vector_headers()
    del headers["X-Amz-Codedeploy-Agent-Version"]
    error = auth_error("IncompleteSignatureException", headers=headers)
    assert "x-amz-codedeploy-agent-version" in error.message


def test_unknown_access_key() -> None:
    error = auth_error("UnrecognizedClientException", secret_for=lambda key: None)
    assert error.message == "The security token included in the request is invalid."
    assert error.status == 400


def test_secret_for_is_asked_for_the_credential_key() -> None:
    asked: list[str] = []

    def secret_for(key: str) -> str | None:
        asked.append(key)
        return VECTOR_SECRET

    verify_vector(secret_for=secret_for)
    assert asked == [VECTOR_KEY]


@pytest.mark.parametrize("minutes", [-15, -14, 0, 14, 15])
def test_skew_within_limit_is_accepted(minutes: int) -> None:
    verify_vector(now=VECTOR_DATE + timedelta(minutes=minutes))


def test_signature_expired_after_16_minutes() -> None:
    error = auth_error("InvalidSignatureException", now=VECTOR_DATE + timedelta(minutes=16))
    assert error.message == (
        "Signature expired: 20261126T034441Z is now earlier than 20261126T034541Z "
        "(20261126T040041Z - 15 min.)"
    )
    assert error.status == 400


def test_signature_not_yet_current_16_minutes_early() -> None:
    error = auth_error("InvalidSignatureException", now=VECTOR_DATE - timedelta(minutes=16))
    assert error.message == (
        "Signature not yet current: 20261126T034441Z is still later than 20261126T034341Z "
        "(20261126T032841Z + 15 min.)"
    )


def test_max_skew_is_configurable() -> None:
    now = VECTOR_DATE + timedelta(minutes=2)
    verify_vector(now=now)
    error = auth_error("InvalidSignatureException", now=now, max_skew=timedelta(seconds=90))
    assert "Signature expired" in error.message
    assert "90 sec." in error.message


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_vector(now=VECTOR_DATE.replace(tzinfo=None))


def test_wrong_service_names_the_expected_one() -> None:
    error = auth_error("InvalidSignatureException", services={"codedeploy"})
    assert error.message == "Credential should be scoped to correct service: 'codedeploy'."
    verify_vector(services={"codedeploy", "codedeploy-commands"})


def test_scope_date_must_match_x_amz_date() -> None:
    headers = vector_headers()
    headers["Authorization"] = VECTOR_AUTHORIZATION.replace("/20261126/", "/20261125/")
    error = auth_error("InvalidSignatureException", headers=headers)
    assert "Date in Credential scope does not match" in error.message


def test_scope_terminator() -> None:
    headers = vector_headers()
    headers["Authorization"] = VECTOR_AUTHORIZATION.replace("aws4_request", "aws4_requests")
    auth_error("InvalidSignatureException", headers=headers)


@pytest.mark.parametrize("value", ["UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
def test_unsigned_payload_is_refused(value: str) -> None:
    # Correctly signed by the spec, but the body is not covered: we refuse it.
    headers = [(k, v) for k, v in vector_headers().items() if k != "Authorization"]
    headers = [(k, value if k == "X-Amz-Content-Sha256" else v) for k, v in headers]
    authorization = spec_sign(
        headers, VECTOR_SIGNED.split(";"), secret=VECTOR_SECRET, key=VECTOR_KEY, payload_hash=value
    )
    error = auth_error(
        "IncompleteSignatureException", headers={**dict(headers), "Authorization": authorization}
    )
    assert "signed payload" in error.message


def test_malformed_content_sha256() -> None:
    headers = vector_headers()
    headers["X-Amz-Content-Sha256"] = "not-a-hash"
    auth_error("IncompleteSignatureException", headers=headers)


def test_unsigned_content_sha256_must_still_match_the_body() -> None:
    # Not signed: botocore hashes the body itself, and a lying header is refused.
    headers = [(k, v) for k, v in vector_headers().items() if k != "Authorization"]
    signed = [n for n in VECTOR_SIGNED.split(";") if n != "x-amz-content-sha256"]
    payload_hash = hashlib.sha256(VECTOR_BODY).hexdigest()
    authorization = spec_sign(
        headers, signed, secret=VECTOR_SECRET, key=VECTOR_KEY, payload_hash=payload_hash
    )
    good = {**dict(headers), "Authorization": authorization}
    assert verify_vector(good).signed_headers == tuple(signed)
    auth_error("InvalidSignatureException", headers={**good, "X-Amz-Content-Sha256": "ab" * 32})


def test_headers_botocore_would_not_sign_are_honoured_when_the_client_signed_them() -> None:
    # botocore's signer never signs user-agent; another client may, and that must verify.
    headers = [(k, v) for k, v in vector_headers().items() if k != "Authorization"]
    signed = [*VECTOR_SIGNED.split(";"), "user-agent", "accept-encoding"]
    authorization = spec_sign(
        headers,
        signed,
        secret=VECTOR_SECRET,
        key=VECTOR_KEY,
        payload_hash=hashlib.sha256(VECTOR_BODY).hexdigest(),
    )
    good = {**dict(headers), "Authorization": authorization}
    assert "user-agent" in verify_vector(good).signed_headers
    auth_error("InvalidSignatureException", headers={**good, "User-Agent": "curl/8"})


def test_repeated_header_is_signed_as_comma_joined_values() -> None:
    headers = [(k, v) for k, v in vector_headers().items() if k != "Authorization"]
    headers += [("X-Custom", "one"), ("x-custom", "two  words")]
    signed = [*VECTOR_SIGNED.split(";"), "x-custom"]
    authorization = spec_sign(
        headers,
        signed,
        secret=VECTOR_SECRET,
        key=VECTOR_KEY,
        payload_hash=hashlib.sha256(VECTOR_BODY).hexdigest(),
    )
    raw = [
        (k.lower().encode(), v.encode()) for k, v in [*headers, ("authorization", authorization)]
    ]
    assert "x-custom" in verify_vector(Headers(raw=raw)).signed_headers


# --- requests signed by botocore with a real credential ------------------------------------

KEY = "AKIAOPENDEPLOYTEST01"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@dataclass
class Captured:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def capture_boto3_call(
    operation: str, params: dict[str, Any], *, token: str | None = None
) -> Captured:
    """Make a real boto3 CodeDeploy call; capture the signed request instead of sending it."""
    captured: list[Captured] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        url = urlsplit(request.url)
        body = request.body or b""
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        # botocore signs a Host it derives from the URL; urllib3 adds the header when sending.
        assert "host" not in {k.lower() for k in headers}
        headers["Host"] = url.netloc
        captured.append(
            Captured(
                method=request.method,
                path=url.path,
                query=url.query,
                headers=headers,
                body=body.encode() if isinstance(body, str) else body,
            )
        )
        return AWSResponse(request.url, 200, {}, _Raw(b"{}"))

    client = boto3.client(
        "codedeploy",
        region_name="eu-west-3",
        endpoint_url="http://127.0.0.1:8443",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        aws_session_token=token,
    )
    client.meta.events.register("before-send", before_send)
    getattr(client, operation)(**params)
    assert len(captured) == 1
    return captured[0]


def verify_captured(captured: Captured, **overrides: Any) -> SignedRequest:
    arguments: dict[str, Any] = {
        "method": captured.method,
        "path": captured.path,
        "query": captured.query,
        "headers": captured.headers,
        "body": captured.body,
        "secret_for": {KEY: SECRET}.get,
        "now": datetime.now(UTC),
        "services": {"codedeploy"},
    }
    arguments.update(overrides)
    return verify_request(**arguments)


def test_boto3_request_verifies() -> None:
    captured = capture_boto3_call("list_applications", {})
    assert "x-amz-content-sha256" not in {k.lower() for k in captured.headers}
    signed = verify_captured(captured)
    assert (signed.access_key_id, signed.service, signed.region) == (KEY, "codedeploy", "eu-west-3")
    assert {"host", "x-amz-date", "x-amz-target"} <= set(signed.signed_headers)
    assert abs(signed.amz_date - datetime.now(UTC)) < timedelta(minutes=1)


def test_boto3_request_with_a_body_verifies_and_the_body_is_covered() -> None:
    captured = capture_boto3_call(
        "create_application", {"applicationName": "shop-ünïcode", "computePlatform": "Server"}
    )
    assert "shop-" in captured.body.decode()
    verify_captured(captured)
    tampered = captured.body.replace(b"Server", b"Lambda")
    assert tampered != captured.body
    with pytest.raises(AuthError) as caught:
        verify_captured(captured, body=tampered)
    assert caught.value.code == "InvalidSignatureException"


def test_boto3_request_with_wrong_secret_or_unknown_key() -> None:
    captured = capture_boto3_call("list_applications", {})
    with pytest.raises(AuthError) as caught:
        verify_captured(captured, secret_for={KEY: SECRET[:-1] + "X"}.get)
    assert caught.value.code == "InvalidSignatureException"
    with pytest.raises(AuthError) as caught:
        verify_captured(captured, secret_for={}.get)
    assert caught.value.code == "UnrecognizedClientException"


def test_boto3_request_skewed_16_minutes_either_way() -> None:
    captured = capture_boto3_call("list_applications", {})
    for skew, wording in [(16, "Signature expired"), (-16, "Signature not yet current")]:
        with pytest.raises(AuthError) as caught:
            verify_captured(captured, now=datetime.now(UTC) + timedelta(minutes=skew))
        assert caught.value.code == "InvalidSignatureException"
        assert caught.value.message.startswith(wording)


def test_boto3_request_for_the_wrong_service() -> None:
    captured = capture_boto3_call("list_applications", {})
    with pytest.raises(AuthError) as caught:
        verify_captured(captured, services={"codedeploy-commands"})
    assert "'codedeploy-commands'" in caught.value.message


def test_boto3_session_token_is_signed_and_accepted_but_must_be_signed() -> None:
    token = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
    captured = capture_boto3_call("list_applications", {}, token=token)
    signed = verify_captured(captured)
    assert "x-amz-security-token" in signed.signed_headers

    plain = capture_boto3_call("list_applications", {})
    with pytest.raises(AuthError) as caught:
        verify_captured(plain, headers={**plain.headers, "X-Amz-Security-Token": token})
    assert caught.value.code == "IncompleteSignatureException"
    assert "X-Amz-Security-Token" in caught.value.message

    # A mismatch report shows the canonical request but never the token.
    with pytest.raises(AuthError) as caught:
        verify_captured(captured, secret_for={KEY: "wrong"}.get)
    assert "x-amz-security-token:<redacted>" in caught.value.message
    assert token not in caught.value.message


def test_botocore_signed_unsigned_payload_is_refused() -> None:
    request = AWSRequest(
        method="POST",
        url="https://127.0.0.1:8443/",
        data=b"{}",
        headers={"X-Amz-Target": "CodeDeploy_20141006.ListApplications"},
    )
    request.context["payload_signing_enabled"] = False
    SigV4Auth(Credentials(KEY, SECRET), "codedeploy", "eu-west-3").add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    with pytest.raises(AuthError) as caught:
        verify_request(
            method="POST",
            path="/",
            query="",
            headers={**dict(request.headers.items()), "Host": "127.0.0.1:8443"},
            body=b"{}",
            secret_for={KEY: SECRET}.get,
            now=datetime.now(UTC),
        )
    assert caught.value.code == "IncompleteSignatureException"
    assert "UNSIGNED-PAYLOAD" in caught.value.message


def test_botocore_signed_path_and_query_verify() -> None:
    # Not used by the JSON protocols, but the dashboard and our own operations may use them.
    request = AWSRequest(
        method="GET",
        url="http://127.0.0.1:8443/ui/apps/shop%20front/",
        params={"b": "two words", "a": "x/y+z", "empty": ""},
    )
    SigV4Auth(Credentials(KEY, SECRET), "codedeploy", "eu-west-3").add_auth(request)
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    assert "+" in url.query  # urlencode sends a space as '+', the signer encoded it as %20

    def verify(path: str, query: str) -> SignedRequest:
        return verify_request(
            method="GET",
            path=path,
            query=query,
            headers={**dict(prepared.headers.items()), "Host": "127.0.0.1:8443"},
            body=b"",
            secret_for={KEY: SECRET}.get,
            now=datetime.now(UTC),
        )

    assert verify(url.path, url.query).region == "eu-west-3"
    with pytest.raises(AuthError):
        verify(url.path, url.query.replace("two", "three"))
    with pytest.raises(AuthError):
        verify("/ui/apps/other/", url.query)


# --- the fast path for POST / is botocore's canonical request ------------------------------


ROOT_HEADER_SETS = [
    pytest.param(
        {name.lower(): [value] for name, value in vector_headers().items()}, id="stock-agent"
    ),
    pytest.param(
        {
            "host": ["127.0.0.1:8080"],
            "x-amz-date": ["20261126T034441Z"],
            "x-amz-target": ["  Spaced \t  out   value  "],
            "x-custom": ["first", " second  value ", "third"],
            "user-agent": ["latin-1 caf\xe9 \xa0 nbsp"],
        },
        id="repeats-whitespace-latin1",
    ),
    pytest.param(
        {
            "host": ["example.com"],
            "x-amz-date": ["20261126T034441Z"],
            "x-amz-content-sha256": [
                " 1ba11b0fa486603f5694213120a0889d5adef04d0304d4b213404081b3d45bee"
            ],
        },
        id="content-hash-taken-as-given",
    ),
]


@pytest.mark.parametrize("headers", ROOT_HEADER_SETS)
@pytest.mark.parametrize("body", [b"", b'{"a": 1}'])
def test_the_root_canonical_request_is_botocore_s(
    headers: dict[str, list[str]], body: bytes
) -> None:
    from opendeploy.server.sigv4 import _botocore_canonical_request, _canonical_root_request

    signed = tuple(sorted(name for name in headers if name != "authorization"))
    fast = _canonical_root_request("post", signed, headers, body)
    botocore = _botocore_canonical_request(
        method="post",
        path="/",
        query="",
        signed_names=signed,
        headers=headers,
        body=body,
        access_key_id=VECTOR_KEY,
        secret=VECTOR_SECRET,
        service="codedeploy-commands",
        region="us-east-1",
        amz_date_text="20261126T034441Z",
    )
    assert fast == botocore


def test_the_root_fast_path_rebuilds_the_stock_agent_s_canonical_request() -> None:
    from opendeploy.server.sigv4 import _canonical_root_request

    headers = {name.lower(): [value] for name, value in vector_headers().items()}
    assert (
        _canonical_root_request("POST", tuple(VECTOR_SIGNED.split(";")), headers, VECTOR_BODY)
        == VECTOR_CANONICAL_REQUEST
    )


def test_signing_keys_kept_per_secret_never_verify_another_secret() -> None:
    verify_vector()
    auth_error("InvalidSignatureException", secret_for=lambda key: VECTOR_SECRET.replace("0", "1"))
    assert verify_vector().access_key_id == VECTOR_KEY
