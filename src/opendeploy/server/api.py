"""The public endpoint: ``POST /`` for CodeDeploy (JSON 1.1) and IAM (Query), SigV4-signed.

Parsing, authentication and rendering live here; the use cases are in ``service``. Every
answer carries ``x-amzn-RequestId``; errors carry ``x-amzn-ErrorType`` as well.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from opendeploy.core.errors import AuthError, NotImplementedOperation, ServiceError
from opendeploy.core.policies import IAM, PUBLIC
from opendeploy.server.auth import Authenticator
from opendeploy.server.protocol import JsonProtocol, load_service_model
from opendeploy.server.query_protocol import (
    iam_service_model,
    parse_query_request,
    serialize_query_error,
    serialize_query_response,
)
from opendeploy.server.service.context import Caller, ServiceContext
from opendeploy.server.service.registry import (
    CODEDEPLOY_OPERATIONS,
    IAM_OPERATIONS,
    OPENDEPLOY_OPERATIONS,
    Handler,
)
from opendeploy.store import identities
from opendeploy.wire import PUBLIC_EXTENSIONS_SERVICE, service_model

__all__ = ["PublicApi"]

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
_READ_PREFIXES = ("Get", "BatchGet", "List")


async def authenticate_request(
    authenticator: Authenticator,
    request: Request,
    body: bytes | None,
    service: str,
    request_id: str,
) -> Caller:
    """The verified caller of ``request``; refusals are logged with the code only.

    When the caller's key is in memory the check runs right here on the event loop (no I/O,
    no trip to a thread: most requests, agents' polls above all); otherwise in a thread.
    """
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    fields: dict[str, Any] = {
        "method": request.method,
        "path": raw_path.decode("latin-1"),
        "query": request.scope.get("query_string", b"").decode("latin-1"),
        "headers": request.headers,
        "body": body,
        "services": (service,),
        "now": dt.datetime.now(dt.UTC),
    }
    try:
        verified = authenticator.authenticate_cached(**fields)
        if verified is None:
            verified = await run_in_threadpool(lambda: authenticator.authenticate(**fields))
    except AuthError as error:
        # The code only: messages may quote the request's canonical form.
        client = request.client.host if request.client else "unknown"
        log.info("request %s from %s refused: %s", request_id, client, error.code)
        raise
    return verified[0]


class AgentEndpoint(Protocol):
    """The agent API, served on the same ``POST /`` under its own target prefixes."""

    def handles(self, target: str | None) -> bool: ...

    async def handle(
        self, request: Request, body: bytes, target: str, request_id: str
    ) -> Response: ...


class PublicApi:
    """Handles one request end to end; one instance per application."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        max_request_bytes: int,
        strict_shapes: bool = False,
        agent: AgentEndpoint | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.context = context
        #: Told each request's operation and how long it took (metrics).
        self.observe = observe
        self.max_request_bytes = max_request_bytes
        self.codedeploy = JsonProtocol(load_service_model("codedeploy"), strict=strict_shapes)
        extensions = JsonProtocol(service_model(PUBLIC_EXTENSIONS_SERVICE), strict=strict_shapes)
        self.json_services: dict[str, tuple[JsonProtocol, Mapping[str, Handler]]] = {
            self.codedeploy.target_prefix + ".": (self.codedeploy, CODEDEPLOY_OPERATIONS),
            extensions.target_prefix + ".": (extensions, OPENDEPLOY_OPERATIONS),
        }
        self.iam_model = iam_service_model()
        self.authenticator = Authenticator(context.db, context.secrets)
        self.agent = agent

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        target = request.headers.get("x-amz-target")
        try:
            return await self._handle(request, target)
        finally:
            if self.observe is not None:
                operation = target.rpartition(".")[2] if target else "iam"
                self.observe(operation, time.perf_counter() - started)

    async def _handle(self, request: Request, target: str | None) -> Response:
        request_id = str(uuid.uuid4())
        is_query = target is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        )
        try:
            body = await self._read_body(request)
            if self.agent is not None and target is not None and self.agent.handles(target):
                return await self.agent.handle(request, body, target, request_id)
            if is_query:
                return await self._query(request, body, request_id)
            return await self._json(request, body, target, request_id)
        except ServiceError as error:
            return self._error(error.code, error.message, error.status, request_id, is_query)
        except Exception:
            log.exception("internal error handling request %s", request_id)
            return self._error(
                "InternalFailure",
                f"The server failed to handle the request; request id {request_id}.",
                500,
                request_id,
                is_query,
            )

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> ServiceError:
        return ServiceError(
            "RequestEntityTooLargeException",
            f"The request body is larger than {self.max_request_bytes} bytes.",
            status=413,
        )

    async def _authenticate(
        self, request: Request, body: bytes, service: str, request_id: str
    ) -> Caller:
        return await authenticate_request(self.authenticator, request, body, service, request_id)

    async def _authorize(
        self, caller: Caller, service: str, operation: str, request_id: str
    ) -> None:
        """Refuse what the caller's roles do not allow; refused mutating calls are audited."""
        try:
            Authenticator.authorize(caller, service, operation)
        except AuthError as error:
            if _is_mutating(operation):
                await run_in_threadpool(self._audit, caller, operation, request_id, error.code)
            raise

    async def _json(
        self, request: Request, body: bytes, target: str | None, request_id: str
    ) -> Response:
        found = next(
            (
                (prefix, protocol, operations)
                for prefix, (protocol, operations) in self.json_services.items()
                if target and target.startswith(prefix)
            ),
            None,
        )
        if target is None or found is None:
            expected = " or ".join(f"{prefix}<Operation>" for prefix in self.json_services)
            raise ServiceError(
                "UnknownOperationException",
                f"X-Amz-Target {target!r} is not an operation of this server; expected {expected}.",
            )
        prefix, protocol, operations = found
        operation = protocol.operation(target[len(prefix) :])
        caller = await self._authenticate(request, body, PUBLIC, request_id)
        await self._authorize(caller, PUBLIC, operation.name, request_id)
        params = _json_body(body)
        handler = operations.get(operation.name)
        if handler is None:
            raise NotImplementedOperation(operation.name)
        protocol.validate_input(operation, params)
        result = await self._run(handler, caller, operation.name, params, request_id)
        payload = protocol.serialize_output(operation, result)
        return Response(
            json.dumps(payload, separators=(",", ":")),
            media_type=JSON_CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )

    async def _query(self, request: Request, body: bytes, request_id: str) -> Response:
        operation, params = parse_query_request(body, self.iam_model)
        caller = await self._authenticate(request, body, IAM, request_id)
        await self._authorize(caller, IAM, operation, request_id)
        handler = IAM_OPERATIONS.get(operation)
        if handler is None:
            raise ServiceError(
                "InvalidAction",
                f"The IAM action {operation} is not available in OpenDeploy.",
            )
        result = await self._run(handler, caller, operation, params, request_id)
        return Response(
            serialize_query_response(operation, result, self.iam_model, request_id),
            media_type="text/xml",
            headers={"x-amzn-RequestId": request_id},
        )

    async def _run(
        self,
        handler: Handler,
        caller: Caller,
        operation: str,
        params: dict[str, Any],
        request_id: str,
    ) -> Mapping[str, Any]:
        context = dataclasses.replace(self.context, caller=caller)
        audited = _is_mutating(operation)
        try:
            result = await run_in_threadpool(handler, context, params)
        except ServiceError as error:
            if audited:
                await run_in_threadpool(self._audit, caller, operation, request_id, error.code)
            raise
        except Exception:
            if audited:
                try:
                    await run_in_threadpool(
                        self._audit, caller, operation, request_id, "InternalFailure"
                    )
                except Exception:
                    log.exception("cannot audit request %s", request_id)
            raise
        if audited:
            await run_in_threadpool(self._audit, caller, operation, request_id, "Success")
        return result

    def _audit(self, caller: Caller, operation: str, request_id: str, outcome: str) -> None:
        with self.context.db.write() as connection:
            identities.record_audit(
                connection,
                time=self.context.clock(),
                principal=caller.arn,
                operation=operation,
                request_id=request_id,
                outcome=outcome,
            )

    @staticmethod
    def _error(code: str, message: str, status: int, request_id: str, is_query: bool) -> Response:
        headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code}
        if is_query:
            return Response(
                serialize_query_error(code, message, request_id, sender=status < 500),
                status_code=status,
                media_type="text/xml",
                headers=headers,
            )
        return Response(
            json.dumps({"__type": code, "message": message}),
            status_code=status,
            media_type=JSON_CONTENT_TYPE,
            headers=headers,
        )


def _is_mutating(operation: str) -> bool:
    return not operation.startswith(_READ_PREFIXES)


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except RecursionError as error:
        raise ServiceError(
            "SerializationException", "The request body is nested too deeply."
        ) from error
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError(
            "SerializationException", f"The request body is not valid JSON: {error}"
        ) from error
    if not isinstance(params, dict):
        raise ServiceError("SerializationException", "The request body must be a JSON object.")
    return params
