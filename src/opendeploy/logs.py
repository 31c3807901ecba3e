"""Logging set-up for the entry points: text or JSON lines, each with its deployment id.

Library code only calls ``logging.getLogger(__name__)``; code working on a deployment wraps
its work in ``deployment_context(id)`` so every line it logs carries ``deployment_id``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
from collections.abc import Iterator

__all__ = ["JsonFormatter", "configure_logging", "deployment_context"]

_DEPLOYMENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "opendeploy_deployment", default=None
)


@contextlib.contextmanager
def deployment_context(deployment_id: str | None) -> Iterator[None]:
    token = _DEPLOYMENT.set(deployment_id)
    try:
        yield
    finally:
        _DEPLOYMENT.reset(token)


class _DeploymentFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        deployment_id = _DEPLOYMENT.get()
        record.deployment_id = deployment_id or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, deployment_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        deployment_id = getattr(record, "deployment_id", "-")
        if deployment_id != "-":
            document["deployment_id"] = deployment_id
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_DeploymentFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(deployment_id)s] %(name)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
