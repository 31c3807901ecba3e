"""The agent endpoint: CodeDeploy's host command service (and our extensions) on ``POST /``.

Signed for SigV4 service ``codedeploy-commands`` by an agent user. PollHostCommand is a long
poll: held until a command for the host exists or ``long_poll_seconds`` pass. Use cases that
create commands wake the held polls through ``notify`` (from any thread), and other replicas'
through PostgreSQL NOTIFY. With other replicas a held poll also re-checks the database every
``recheck_seconds`` (30 s by default; one read, no contact write), a safety net for a
notification lost while the LISTEN connection was down; a lone server (SQLite) needs none:
every command is created in-process. Idle polls are most of a fleet's traffic: 2,000 idle
agents re-checking every 5 s, each time with a contact write, cost 400 write transactions a
second; a poll whose time ran out answers without one more look.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from opendeploy.core.errors import ServiceError
from opendeploy.core.policies import AGENT
from opendeploy.server.api import authenticate_request
from opendeploy.server.auth import Authenticator
from opendeploy.server.protocol import JsonProtocol
from opendeploy.server.service.agent import AgentService, Host
from opendeploy.server.service.context import Caller
from opendeploy.wire import COMMANDS_SERVICE, EXTENSIONS_SERVICE, service_model

__all__ = ["AgentApi", "PollHub"]

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
#: How often a held poll re-checks the database when other replicas may create its commands.
REPLICA_RECHECK_SECONDS = 30.0


class PollHub:
    """Held long polls by host, and the thread-safe way to wake them (a CommandNotifier)."""

    def __init__(self, publish: Callable[[Iterable[str]], None] | None = None) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Tells the other replicas (PostgreSQL NOTIFY); None with one server.
        self.publish = publish
        self.closing = False

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    def notify(self, instance_names: Iterable[str]) -> None:
        """Wake the long polls of these hosts, here and on every other replica."""
        names = tuple(instance_names)
        self.wake_local(names)
        if self.publish is not None:
            self.publish(names)

    def wake_local(self, instance_names: Iterable[str]) -> None:
        """Wake this replica's long polls of these hosts; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake, tuple(instance_names))

    def _wake(self, names: tuple[str, ...]) -> None:
        for name in names:
            for event in self._waiters.get(name, ()):
                event.set()

    def release_all(self) -> None:
        """Shutting down: every held poll answers now (empty), so the server stops at once."""
        self.closing = True
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def waiter(self, name: str) -> Iterator[asyncio.Event]:
        """An event set when ``name`` gets work, registered while the context is open."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._waiters.setdefault(name, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[name]


class AgentApi:
    def __init__(
        self,
        service: AgentService,
        authenticator: Authenticator,
        hub: PollHub,
        *,
        long_poll_seconds: float = 45.0,
        recheck_seconds: float | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.hub = hub
        self.long_poll_seconds = long_poll_seconds
        #: None: REPLICA_RECHECK_SECONDS with other replicas (``hub.publish`` set), else never.
        self._recheck_seconds = recheck_seconds
        self.protocols = {
            protocol.target_prefix + ".": protocol
            for protocol in (
                JsonProtocol(service_model(COMMANDS_SERVICE)),
                JsonProtocol(service_model(EXTENSIONS_SERVICE)),
            )
        }

    @property
    def recheck_seconds(self) -> float:
        """How often a held poll looks in the database (the long poll itself: never)."""
        if self._recheck_seconds is not None:
            return self._recheck_seconds
        if self.hub.publish is not None:
            return REPLICA_RECHECK_SECONDS
        return self.long_poll_seconds

    def handles(self, target: str | None) -> bool:
        return target is not None and any(target.startswith(p) for p in self.protocols)

    async def handle(self, request: Request, body: bytes, target: str, request_id: str) -> Response:
        prefix = next(p for p in self.protocols if target.startswith(p))
        protocol = self.protocols[prefix]
        operation = protocol.operation(target[len(prefix) :])
        caller = await authenticate_request(self.authenticator, request, body, AGENT, request_id)
        Authenticator.authorize(caller, AGENT, operation.name)
        params = _json_body(body)
        protocol.validate_input(operation, params)
        result = await self._dispatch(operation.name, caller, params)
        payload = protocol.serialize_output(operation, result)
        return Response(
            json.dumps(payload, separators=(",", ":")),
            media_type=JSON_CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )

    async def _dispatch(self, operation: str, caller: Caller, params: dict[str, Any]) -> Any:
        if operation == "PollHostCommand":
            host = await run_in_threadpool(self.service.host, caller, params.get("HostIdentifier"))
            command = await self._long_poll(host)
            return {"HostCommand": command} if command is not None else {}
        # One trip to the thread pool for the host lookup and the use case together.
        return await run_in_threadpool(self._call, operation, caller, params)

    def _call(self, operation: str, caller: Caller, params: dict[str, Any]) -> Any:
        service = self.service
        # GetDeploymentSpecification names its host too: it must be the caller's, as in a poll.
        host = service.host(caller, params.get("HostIdentifier"))
        command_id = params.get("HostCommandIdentifier")
        if operation == "GetDeploymentSpecification":
            return service.specification(host, params.get("DeploymentExecutionId", ""))
        if operation == "PutHostCommandAcknowledgement":
            return service.acknowledge(host, command_id)
        if operation == "PutHostCommandComplete":
            return service.complete(
                host, command_id, params.get("CommandStatus"), params.get("Diagnostics")
            )
        if operation == "PostHostCommandUpdate":
            return service.update(host, command_id)
        if operation == "PutHostCommandLog":
            return service.put_log(host, command_id, params["Offset"], params["Log"])
        raise ServiceError("UnknownOperationException", f"{operation} is not served here.")

    async def _long_poll(self, host: Host) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.long_poll_seconds
        first = True
        with self.hub.waiter(host.instance.name) as event:
            while True:
                event.clear()
                command = await run_in_threadpool(self.service.claim, host, contact=first)
                first = False
                remaining = deadline - loop.time()
                if command is not None or remaining <= 0 or self.hub.closing:
                    return command
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, self.recheck_seconds))
                except TimeoutError:
                    if deadline - loop.time() <= 0:
                        # Nothing woke the poll and its time is up: answer empty without one
                        # more look (half an idle poll's database work); the agent polls again
                        # at once, and a poll looks first.
                        return None


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError(
            "SerializationException", f"The body is not valid JSON: {error}"
        ) from error
    if not isinstance(params, dict):
        raise ServiceError("SerializationException", "The request body must be a JSON object.")
    return params
