"""``POST /alertmanager/webhook``: Alertmanager pushes alert states (docs/alarms.md).

The body is Alertmanager's webhook payload (version 4); the request carries the server's
Alertmanager token as ``Authorization: Bearer <token>``. Answers 200 ``{"received": n,
"changed": n, "firing": [names]}``; 401 without a bearer token, 403 with a wrong one or when no
token is configured, 400 for a body that is not a webhook payload, 413 past 8 MiB. Recorded
states are in the database; the local alarm monitor is woken at once.
"""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from opendeploy.server.alarms import AlarmMonitor, authorize_push, parse_webhook, record_push
from opendeploy.server.service.context import ServiceContext

__all__ = ["MAX_WEBHOOK_BYTES", "AlertmanagerApi"]

MAX_WEBHOOK_BYTES = 8 * 1024 * 1024


class AlertmanagerApi:
    def __init__(self, context: ServiceContext, monitor: AlarmMonitor, *, token: str) -> None:
        self.context = context
        self.monitor = monitor
        self.token = token

    async def webhook(self, request: Request) -> Response:
        refused = authorize_push(self.token, request.headers.get("authorization"))
        if refused is not None:
            headers = (
                {"WWW-Authenticate": 'Bearer realm="opendeploy-alertmanager"'}
                if refused.status == 401
                else None
            )
            return JSONResponse(
                {"message": refused.message}, status_code=refused.status, headers=headers
            )
        body = await self._body(request)
        if body is None:
            return JSONResponse(
                {"message": f"The body is larger than {MAX_WEBHOOK_BYTES} bytes."},
                status_code=413,
            )
        try:
            payload = json.loads(body)
        except ValueError as error:
            return JSONResponse({"message": f"The body is not JSON: {error}"}, status_code=400)
        try:
            alerts = parse_webhook(payload, self.context.clock())
        except ValueError as error:
            return JSONResponse({"message": str(error)}, status_code=400)
        changed = await run_in_threadpool(record_push, self.context, alerts)
        firing = sorted({alert.alert_name for alert in alerts if alert.firing})
        if firing:
            self.monitor.wake()
        return JSONResponse({"received": len(alerts), "changed": changed, "firing": firing})

    @staticmethod
    async def _body(request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BYTES:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_WEBHOOK_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
