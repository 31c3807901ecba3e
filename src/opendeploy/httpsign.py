"""SigV4 headers for plain HTTP requests (bundle upload and download), signed by botocore.

The AWS JSON calls go through botocore clients; the two streamed bundle transfers are plain
HTTP, so they are signed here with the body's sha256 given up front (never ``UNSIGNED``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

__all__ = ["EMPTY_SHA256", "signed_headers"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def signed_headers(
    *,
    method: str,
    url: str,
    payload_sha256: str,
    access_key_id: str,
    secret_access_key: str,
    service: str,
    region: str,
    session_token: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The request's headers plus X-Amz-Date, X-Amz-Content-Sha256 and Authorization."""
    request = AWSRequest(method=method, url=url, data=b"", headers=dict(headers or {}))
    request.headers["X-Amz-Content-Sha256"] = payload_sha256
    credentials = Credentials(access_key_id, secret_access_key, session_token)
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())
