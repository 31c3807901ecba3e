"""Bundle upload (``opendeploy push``) and download (agents), streamed both ways.

``PUT /bundles``: the body is a revision bundle (tgz); the request is SigV4-signed for
``codedeploy`` with X-Amz-Content-Sha256 set to the body's sha256, checked while streaming. It
answers ``{"revision": <RevisionLocation>, "sha256": ..., "size": ...}``; identical content is
stored once. ``GET /agent/bundles/<sha256>``: an agent's download, signed for
``codedeploy-commands``, resumable with ``Range: bytes=N-``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from opendeploy.bundles.store import BundleStore, revision_location
from opendeploy.core.errors import ServiceError
from opendeploy.core.policies import AGENT, PUBLIC
from opendeploy.server.api import PublicApi, authenticate_request
from opendeploy.server.auth import Authenticator
from opendeploy.server.service.agent import AgentService

__all__ = ["BundlesApi"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d+)-$")
_CHUNK = 1024 * 1024


class BundlesApi:
    def __init__(
        self,
        store: BundleStore,
        agent_service: AgentService,
        authenticator: Authenticator,
        *,
        max_bundle_bytes: int,
    ) -> None:
        self.store = store
        self.agent_service = agent_service
        self.authenticator = authenticator
        self.max_bundle_bytes = max_bundle_bytes

    async def upload(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            caller = await authenticate_request(
                self.authenticator, request, None, PUBLIC, request_id
            )
            Authenticator.authorize(caller, PUBLIC, "PushRevision")
            expected = request.headers.get("x-amz-content-sha256", "").lower()
            with tempfile.TemporaryFile() as spool:
                await self._receive(request, spool, expected)
                spool.seek(0)
                info = await run_in_threadpool(self.store.put, spool, sha256=expected)
            body = {
                "revision": {
                    "revisionType": "S3",
                    "s3Location": revision_location(self.store, info),
                },
                "sha256": info.sha256,
                "size": info.size,
            }
            return Response(
                json.dumps(body),
                media_type="application/json",
                headers={"x-amzn-RequestId": request_id},
            )
        except ServiceError as error:
            return PublicApi._error(error.code, error.message, error.status, request_id, False)

    async def _receive(self, request: Request, spool: IO[bytes], expected: str) -> None:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bundle_bytes:
                raise ServiceError(
                    "RequestEntityTooLargeException",
                    f"The bundle is larger than {self.max_bundle_bytes} bytes.",
                    status=413,
                )
            digest.update(chunk)
            await run_in_threadpool(spool.write, chunk)
        if digest.hexdigest() != expected:
            raise ServiceError(
                "InvalidSignatureException",
                "The uploaded bundle does not match its X-Amz-Content-Sha256 header "
                f"(received {digest.hexdigest()}).",
            )

    async def download(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        sha256 = request.path_params["sha256"]
        try:
            caller = await authenticate_request(self.authenticator, request, b"", AGENT, request_id)
            Authenticator.authorize(caller, AGENT, "GetBundle")
            if not _SHA256.fullmatch(sha256):
                raise ServiceError("ClientException", f"{sha256!r} is not a bundle sha256.")
            host = await run_in_threadpool(self.agent_service.host, caller)
            allowed = await run_in_threadpool(self.agent_service.may_download, host, sha256)
            if not allowed:
                raise ServiceError(
                    "AccessDeniedException",
                    f"No deployment to {host.instance.name} uses bundle {sha256}.",
                    status=403,
                )
            size = await run_in_threadpool(self.store.size, sha256)
            offset = _offset(request.headers.get("range"), size)
        except ServiceError as error:
            return PublicApi._error(error.code, error.message, error.status, request_id, False)
        headers = {
            "x-amzn-RequestId": request_id,
            "Accept-Ranges": "bytes",
            "Content-Length": str(size - offset),
        }
        status = 200
        if offset:
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
        return StreamingResponse(
            self._chunks(sha256, offset),
            status_code=status,
            media_type="application/octet-stream",
            headers=headers,
        )

    def _chunks(self, sha256: str, offset: int) -> Iterator[bytes]:
        with self.store.open(sha256, offset) as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk


def _offset(header: str | None, size: int) -> int:
    if not header:
        return 0
    match = _RANGE.match(header.strip())
    if match is None:
        raise ServiceError(
            "InvalidRangeException", f"Only 'Range: bytes=N-' is supported, not {header!r}."
        )
    offset = int(match.group(1))
    if offset >= size:
        raise ServiceError(
            "InvalidRangeException",
            f"Range starts at {offset}; the bundle has {size} bytes.",
            status=416,
        )
    return offset
