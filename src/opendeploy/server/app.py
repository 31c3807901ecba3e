"""The ASGI application: public API, health probes. No module-level app object.

Stopping has two steps (``Shutdown``): at once, held long polls answer and the background
work stops, releasing its leases; then, once no request is left, the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opendeploy.server.agent_api import AgentApi, PollHub
from opendeploy.server.alarms import AlarmMonitor
from opendeploy.server.alertmanager_api import AlertmanagerApi
from opendeploy.server.api import PublicApi
from opendeploy.server.auth import Authenticator
from opendeploy.server.bundles_api import BundlesApi
from opendeploy.server.dashboard import dashboard_routes
from opendeploy.server.metrics import Metrics
from opendeploy.server.reconciler import Reconciler
from opendeploy.server.service.agent import AgentService
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.triggers import TriggerOptions, TriggerWorker
from opendeploy.store.wakeups import CommandChannel

__all__ = ["Shutdown", "create_app"]

log = logging.getLogger(__name__)

_REQUEST_ID = b"x-amzn-requestid"
_CONNECTION = b"connection"


class Shutdown:
    """The first step of stopping: taken as soon as the server is told to stop.

    ``begin`` answers every held long poll at once (empty), makes every response from then on
    close its connection, and stops the background work in a thread: the reconciler releases
    its lease, so another replica takes it over at its next pass rather than when the lease
    expires. An agent whose poll is answered polls again at once, on a new connection, which
    the load balancer sends to another replica.

    Why not simply in the lifespan's end: uvicorn runs it only after every open connection has
    closed, or, past its graceful-shutdown timeout, after it has cancelled the requests still
    running. Held polls then are cut, not answered, and the lease stays until it expires.
    ``opendeploy server`` therefore calls ``begin`` when uvicorn starts to shut down; the
    lifespan's end calls it too (it runs once) and waits for it, so any ASGI server stops
    cleanly, if later.
    """

    def __init__(self, hub: PollHub, background: Sequence[Callable[[], None]]) -> None:
        self._hub = hub
        self._background = tuple(background)
        self._stopped: asyncio.Future[None] | None = None

    @property
    def begun(self) -> bool:
        return self._stopped is not None

    def begin(self) -> Awaitable[None]:
        """Release held polls and start stopping the background work; call it on the event
        loop. It does not wait: await the result to know the background work has stopped."""
        if self._stopped is None:
            self._hub.release_all()
            self._stopped = asyncio.ensure_future(asyncio.to_thread(self._stop_background))
        return self._stopped

    def _stop_background(self) -> None:
        for stop in self._background:
            try:
                stop()
            except Exception:
                log.exception("stopping background work failed")


class CloseWhenStoppingMiddleware:
    """Once the server is stopping, every response says ``Connection: close``.

    A client then opens a new connection for its next request, which goes to a replica that
    is not stopping, instead of reusing one that this replica is about to close."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.shutdown.begun:
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != _CONNECTION
                ]
                headers.append((_CONNECTION, b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


class AgentCallsMiddleware:
    """Agent API calls (``POST /`` with an agent target) go straight to the API handler.

    Idle agents' long polls are most of a fleet's requests, and each one otherwise also paid
    for the request-id and closing wrappers, the exception middleware and the router. The
    handler already answers every error in the AWS shape with its request id and records the
    request's metrics; what this still adds is ``Connection: close`` while stopping.
    """

    def __init__(self, app: ASGIApp, api: PublicApi, agent: AgentApi, shutdown: Shutdown) -> None:
        self.app = app
        self.api = api
        self.agent = agent
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/":
            target = next(
                (value for name, value in scope["headers"] if name.lower() == b"x-amz-target"),
                None,
            )
            if target is not None and self.agent.handles(target.decode("latin-1")):
                response = await self.api.handle(Request(scope, receive))
                if self.shutdown.begun:
                    response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Gives every HTTP response an ``x-amzn-RequestId`` (probes, 404s and 405s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == _REQUEST_ID for name, _ in headers):
                    headers.append((_REQUEST_ID, str(uuid.uuid4()).encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(
    context: ServiceContext,
    *,
    max_request_bytes: int = 1024 * 1024,
    strict_shapes: bool = False,
    heartbeat_timeout: float = 60.0,
    long_poll_seconds: float = 45.0,
    reconcile_interval: float = 5.0,
    max_bundle_bytes: int = 2 * 1024 * 1024 * 1024,
    triggers: TriggerOptions | None = None,
    prometheus_url: str = "",
    alarm_poll_seconds: float = 5.0,
    alertmanager_token: str = "",
) -> Starlette:
    hub = PollHub()
    channel = CommandChannel(context.db, hub.wake_local, hub.listening)
    if channel.enabled:
        hub.publish = channel.publish
        # Until LISTEN is up, other replicas' commands may come unannounced.
        hub.wakes_complete = False
    context = dataclasses.replace(context, notifier=hub)
    agent_service = AgentService(context, contact_interval=min(5.0, heartbeat_timeout / 4))
    agent = AgentApi(
        agent_service,
        Authenticator(context.db, context.secrets),
        hub,
        long_poll_seconds=long_poll_seconds,
    )
    metrics = Metrics(
        context.db,
        waiting_polls=lambda: hub.waiting,
        heartbeat_timeout=heartbeat_timeout,
        clock=context.clock,
        store_contacts=agent_service.contacts.flush,
    )
    agent_service.observe_event = metrics.observe_event
    api = PublicApi(
        context,
        max_request_bytes=max_request_bytes,
        strict_shapes=strict_shapes,
        agent=agent,
        observe=metrics.observe_request,
    )

    async def metrics_page(_: Request) -> Response:
        body = await run_in_threadpool(metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    reconciler = Reconciler(
        context, heartbeat_timeout=heartbeat_timeout, interval=reconcile_interval
    )
    trigger_worker = TriggerWorker(context, triggers)
    alarms = AlarmMonitor(context, prometheus_url=prometheus_url, interval=alarm_poll_seconds)
    alertmanager = AlertmanagerApi(context, alarms, token=alertmanager_token)

    async def spec_signer(_: Request) -> Response:
        signer = await run_in_threadpool(lambda: agent_service.signer)
        return Response(signer.certificate_pem, media_type="application/x-pem-file")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _database_answers() -> None:
        with context.db.read() as connection:
            connection.execute(text("SELECT 1"))

    async def readyz(_: Request) -> Response:
        try:
            await run_in_threadpool(_database_answers)
        except Exception as error:
            return JSONResponse(
                {"status": "unavailable", "reason": type(error).__name__}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    # The reconciler first: its lease is what another replica waits for.
    shutdown = Shutdown(hub, [reconciler.stop, alarms.stop, trigger_worker.stop])

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        reconciler.start()
        trigger_worker.start()
        alarms.start()
        channel.start()
        try:
            yield
        finally:
            await shutdown.begin()
            # Every connection has closed by now: the contacts noted last are stored.
            await asyncio.to_thread(agent_service.close)
            channel.stop()
            context.db.dispose()

    routes: list[BaseRoute] = [
        Route("/", api.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/agent/spec-signer.pem", spec_signer, methods=["GET"]),
        Route("/alertmanager/webhook", alertmanager.webhook, methods=["POST"]),
    ]
    if context.bundles is not None:
        bundles = BundlesApi(
            context.bundles,
            agent.service,
            api.authenticator,
            max_bundle_bytes=max_bundle_bytes,
        )
        routes += [
            Route("/bundles", bundles.upload, methods=["PUT"]),
            Route("/agent/bundles/{sha256}", bundles.download, methods=["GET"]),
        ]
    routes += dashboard_routes(context)

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AgentCallsMiddleware, api=api, agent=agent, shutdown=shutdown),
            Middleware(RequestIdMiddleware),
            Middleware(CloseWhenStoppingMiddleware, shutdown=shutdown),
        ],
        lifespan=lifespan,
    )
    #: ``opendeploy server`` begins it as soon as uvicorn starts to shut down.
    app.state.shutdown = shutdown
    return app
