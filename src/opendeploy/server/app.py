"""The ASGI application: public API, health probes. No module-level app object."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opendeploy.server.api import PublicApi
from opendeploy.server.service.context import ServiceContext

__all__ = ["create_app"]


def create_app(
    context: ServiceContext, *, max_request_bytes: int = 1024 * 1024, strict_shapes: bool = False
) -> Starlette:
    api = PublicApi(context, max_request_bytes=max_request_bytes, strict_shapes=strict_shapes)

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

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        context.db.dispose()

    return Starlette(
        routes=[
            Route("/", api.handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
