"""Server-side AWS Signature Version 4 verification.

``verify_request`` takes a request as it arrived (method, raw path, raw query string, headers,
body), finds the caller's secret with ``secret_for`` and recomputes the signature with
botocore's own signer (``botocore.auth.SigV4Auth``), so that what we accept is exactly what the
AWS SDKs produce. Failures raise :class:`~opendeploy.core.errors.AuthError` carrying the error
code and wording that AWS JSON services use, so SDKs and the AWS CLI report them the way their
users already know.

Notes on botocore's signer, which this module relies on:

* ``canonical_request`` uses the ``X-Amz-Content-SHA256`` header *as given* when the request
  holds one and hashes the body only when it does not. The signer therefore never checks that a
  signed content hash matches the body; :func:`verify_request` does that itself.
* ``headers_to_sign`` silently drops a fixed list of headers (``user-agent``, ``expect``,
  ``connection``...) and invents ``host`` from the URL when it is missing. A client is free to
  sign any header, so the verifier uses a subclass whose ``headers_to_sign`` returns exactly the
  headers the client listed in ``SignedHeaders``; everything else is botocore's code.
* The signing time comes from ``request.context["timestamp"]``, which we set to the request's
  own ``X-Amz-Date``.

Every JSON API and agent call is ``POST /`` without a query string, and building botocore's
request objects costs more than the rest of the check together. For that shape the canonical
request is built here, the way botocore's ``canonical_request`` builds it (a test holds the
two to the same output); any other path or query goes through botocore. The string to sign
and the signature follow the specification, with the derived signing key kept per secret,
date, region and service.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest, HTTPHeaders  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from opendeploy.core.errors import AuthError

__all__ = ["SignedRequest", "verify_request"]

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"

MISSING_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE = "IncompleteSignatureException"
INVALID = "InvalidSignatureException"
UNRECOGNIZED = "UnrecognizedClientException"

_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class SignedRequest:
    """Who signed a request that verified, and for what scope."""

    access_key_id: str
    service: str
    region: str
    amz_date: datetime
    signed_headers: tuple[str, ...]


class _ReceivedRequestSigner(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 signer, told to sign exactly the headers the request carries.

    Stock ``headers_to_sign`` drops headers such as ``user-agent`` even when a client signed
    them, and would add a ``host`` of its own. The verifier builds an ``AWSRequest`` holding only
    the headers named in ``SignedHeaders``, so every one of them must be used as is.
    """

    def headers_to_sign(self, request: Any) -> Any:
        header_map = HTTPHeaders()
        for name, value in request.headers.items():
            header_map[name.lower()] = value
        return header_map


#: Derived signing keys kept (one per key, day, region and service in use).
_SIGNING_KEYS_LIMIT = 10_000
_signing_keys: dict[tuple[str, str, str, str], bytes] = {}


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """``kSigning`` of the specification (four HMACs), computed once per scope and secret."""
    cache_key = (secret, date, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, TERMINATOR):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_signing_keys) >= _SIGNING_KEYS_LIMIT:
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    return key


def _canonical_root_request(
    method: str, signed_names: tuple[str, ...], headers: dict[str, list[str]], body: bytes
) -> str:
    """botocore's ``canonical_request`` of a request to ``/`` without a query string, whose
    headers are exactly ``signed_names`` (sorted, lower-case)."""
    lines = [method.upper(), "/", ""]
    lines += [
        f"{name}:{','.join(' '.join(value.split()) for value in headers[name])}"
        for name in signed_names
    ]
    if "x-amz-content-sha256" in headers and "x-amz-content-sha256" in signed_names:
        # As botocore: a signed content hash is taken as given (verify_request checks it).
        payload_hash = headers["x-amz-content-sha256"][0]
    else:
        payload_hash = hashlib.sha256(body).hexdigest()
    lines += ["", ";".join(signed_names), payload_hash]
    return "\n".join(lines)


def _botocore_canonical_request(
    *,
    method: str,
    path: str,
    query: str,
    signed_names: tuple[str, ...],
    headers: dict[str, list[str]],
    body: bytes,
    access_key_id: str,
    secret: str,
    service: str,
    region: str,
    amz_date_text: str,
) -> str:
    """The canonical request botocore's signer builds, over exactly the signed headers."""
    signed_only = HTTPHeaders()
    for name in signed_names:
        # HTTPHeaders appends on assignment; canonical_headers joins repeats with ','.
        for value in headers[name]:
            signed_only[name] = value
    url = "http://opendeploy.invalid" + (path if path.startswith("/") else "/" + path)
    request = AWSRequest(
        method=method.upper(),
        url=url,
        data=body,
        params=parse_qsl(query, keep_blank_values=True),
    )
    request.headers = signed_only
    request.context["timestamp"] = amz_date_text
    request.context["payload_signing_enabled"] = True
    signer = _ReceivedRequestSigner(Credentials(access_key_id, secret), service, region)
    canonical: str = signer.canonical_request(request)
    return canonical


def _parse_amz_date(text: str) -> datetime:
    """``YYYYMMDDTHHMMSSZ`` (already matched by ``_AMZ_DATE``) as an aware datetime."""
    return datetime(
        int(text[0:4]),
        int(text[4:6]),
        int(text[6:8]),
        int(text[9:11]),
        int(text[11:13]),
        int(text[13:15]),
        tzinfo=UTC,
    )


def _incomplete(message: str) -> AuthError:
    return AuthError(INCOMPLETE, message, status=400)


def _invalid(message: str) -> AuthError:
    return AuthError(INVALID, message, status=400)


def _normalise_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lower-case names; keep every value (``items()`` of a multi-dict may repeat a name).

    An ASGI request's headers (Starlette's ``Headers``) are read from their raw byte pairs:
    decoding them all into a list first cost a tenth of an idle long poll."""
    normalised: dict[str, list[str]] = {}
    raw: list[tuple[bytes, bytes]] | None = getattr(headers, "raw", None)
    if raw is not None:
        for name_bytes, value_bytes in raw:
            name = name_bytes.decode("latin-1").strip().lower()
            value = value_bytes.decode("latin-1")
            if name in normalised:
                normalised[name].append(value)
            else:
                normalised[name] = [value]
        return normalised
    for name, value in headers.items():
        normalised.setdefault(name.strip().lower(), []).append(value)
    return normalised


def _single(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise _incomplete(f"Request has {len(values)} '{name}' headers; exactly one is allowed.")
    return values[0]


def _parse_authorization(value: str) -> tuple[str, str, str]:
    """Split ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Unsupported AWS 'algorithm': '{algorithm}'; only '{ALGORITHM}' is accepted. "
            f"Authorization={value}"
        )
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep and key:
            parts[key.strip()] = val.strip()
    missing = [
        f"Authorization header requires '{key}' parameter."
        for key in ("Credential", "Signature", "SignedHeaders")
        if not parts.get(key)
    ]
    if missing:
        raise _incomplete(" ".join([*missing, f"Authorization={value}"]))
    return parts["Credential"], parts["SignedHeaders"], parts["Signature"]


def _redact(canonical_request: str) -> str:
    """Hide a session token's value: error messages end up in logs."""
    return "\n".join(
        "x-amz-security-token:<redacted>" if line.startswith("x-amz-security-token:") else line
        for line in canonical_request.split("\n")
    )


def _format_skew(skew: timedelta) -> str:
    seconds = int(skew.total_seconds())
    if seconds % 60 == 0:
        return f"{seconds // 60} min."
    return f"{seconds} sec."


def _expected_services(services: Collection[str]) -> str:
    return " or ".join(f"'{name}'" for name in sorted(services))


def verify_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes | None,
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta = timedelta(minutes=15),
    services: Collection[str] | None = None,
) -> SignedRequest:
    """Check a received request's SigV4 ``Authorization`` header and return who signed it.

    ``path`` and ``query`` are as sent on the wire: the percent-encoded path (ASGI
    ``raw_path``, not the decoded ``path``) and the raw query string without ``?``. ``headers``
    may be any mapping; names are compared case-insensitively, and a name that ``items()``
    yields more than once is signed as its values joined by commas, as SigV4 specifies.
    ``secret_for`` maps an access key id to its secret, or ``None`` when the key is unknown or
    disabled. ``now`` must be timezone-aware. ``services``, when given, lists the credential
    scope services accepted (``{"codedeploy"}`` for the public API). ``body=None`` is for a
    streamed body not read yet: the request must then carry a signed X-Amz-Content-Sha256,
    and the caller must check the body against it as it reads it.

    Raises ``AuthError`` (status 403 for a missing ``Authorization``, 400 for everything else).
    """
    if now.tzinfo is None:
        raise ValueError("verify_request needs a timezone-aware 'now'")
    hdrs = _normalise_headers(headers)

    authorization_values = hdrs.get("authorization")
    if not authorization_values or not any(v.strip() for v in authorization_values):
        raise AuthError(MISSING_TOKEN, "Missing Authentication Token", status=403)
    authorization = _single(hdrs, "authorization") or ""
    credential, signed_headers_field, signature = _parse_authorization(authorization)

    # Credential scope: keyid/date/region/service/aws4_request
    scope = credential.split("/")
    if len(scope) != 5 or not all(scope):
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'"
        )
    access_key_id, scope_date, region, service, terminator = scope

    # Signed headers: host, x-amz-date and (if sent) x-amz-security-token must be among them.
    signed_names = tuple(sorted({n.strip().lower() for n in signed_headers_field.split(";")}))
    if "" in signed_names:
        raise _incomplete(f"SignedHeaders has an empty header name. Authorization={authorization}")
    if "host" not in signed_names:
        raise _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )

    amz_date_text = _single(hdrs, "x-amz-date")
    if amz_date_text is None:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
            f"header. Authorization={authorization}"
        )
    amz_date_text = amz_date_text.strip()
    if not _AMZ_DATE.fullmatch(amz_date_text):
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date_text}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
    try:
        amz_date = _parse_amz_date(amz_date_text)
    except ValueError:
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date_text}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        ) from None
    if "x-amz-date" not in signed_names:
        raise _incomplete("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    if "x-amz-security-token" in hdrs and "x-amz-security-token" not in signed_names:
        raise _incomplete(
            "'X-Amz-Security-Token' must be a 'SignedHeader' in the AWS Authorization."
        )
    absent = [name for name in signed_names if name not in hdrs]
    if absent:
        raise _incomplete(
            f"Signed header(s) {', '.join(absent)} not present in the request. "
            f"Authorization={authorization}"
        )

    if scope_date != amz_date_text[:8]:
        raise _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{amz_date_text[:8]}', from 'X-Amz-Date'."
        )
    if terminator != TERMINATOR:
        raise _invalid(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{terminator}'."
        )
    if services is not None and service not in services:
        raise _invalid(
            f"Credential should be scoped to correct service: {_expected_services(services)}."
        )

    # Clock skew, in AWS's own words.
    if amz_date < now - max_skew:
        now_text = now.astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        limit = (now - max_skew).astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        raise _invalid(
            f"Signature expired: {amz_date_text} is now earlier than {limit} "
            f"({now_text} - {_format_skew(max_skew)})"
        )
    if amz_date > now + max_skew:
        now_text = now.astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        limit = (now + max_skew).astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        raise _invalid(
            f"Signature not yet current: {amz_date_text} is still later than {limit} "
            f"({now_text} + {_format_skew(max_skew)})"
        )

    # Payload hash: we only accept requests whose signature covers the body.
    content_sha256 = _single(hdrs, "x-amz-content-sha256")
    if content_sha256 is not None:
        content_sha256 = content_sha256.strip()
        if content_sha256 == "UNSIGNED-PAYLOAD" or content_sha256.startswith("STREAMING-"):
            raise _incomplete(
                "This server requires a signed payload: X-Amz-Content-Sha256 must be the "
                f"hex SHA-256 of the request body, not '{content_sha256}'."
            )
        if not _SHA256_HEX.fullmatch(content_sha256):
            raise _incomplete(
                "X-Amz-Content-Sha256 must be the hex SHA-256 of the request body, "
                f"got '{content_sha256}'."
            )

    if body is None and content_sha256 is None:
        raise _incomplete(
            "This request must carry X-Amz-Content-Sha256, the hex SHA-256 of its body."
        )

    secret = secret_for(access_key_id)
    if secret is None:
        raise AuthError(
            UNRECOGNIZED, "The security token included in the request is invalid.", status=400
        )

    if path == "/" and not query:
        canonical_request = _canonical_root_request(method, signed_names, hdrs, body or b"")
    else:
        canonical_request = _botocore_canonical_request(
            method=method,
            path=path,
            query=query,
            signed_names=signed_names,
            headers=hdrs,
            body=body or b"",
            access_key_id=access_key_id,
            secret=secret,
            service=service,
            region=region,
            amz_date_text=amz_date_text,
        )
    string_to_sign = "\n".join(
        (
            ALGORITHM,
            amz_date_text,
            f"{scope_date}/{region}/{service}/{TERMINATOR}",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        )
    )
    expected = hmac.new(
        _signing_key(secret, scope_date, region, service),
        string_to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise _invalid(
            f"{_SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{_redact(canonical_request)}'\n\n"
            f"The String-to-Sign should have been\n'{string_to_sign}'\n"
        )

    # botocore took a signed X-Amz-Content-Sha256 on trust; the body must match it.
    if (
        body is not None
        and content_sha256 is not None
        and not hmac.compare_digest(hashlib.sha256(body).hexdigest(), content_sha256.lower())
    ):
        raise _invalid(
            "The request body does not match its X-Amz-Content-Sha256 header. "
            f"{_SIGNATURE_MISMATCH}"
        )

    return SignedRequest(
        access_key_id=access_key_id,
        service=service,
        region=region,
        amz_date=amz_date,
        signed_headers=signed_names,
    )
