"""Helpers for the trigger tests: a real webhook receiver on loopback, a server whose trigger
worker runs with test timings, and the ``opendeploy`` extension client.

``Receiver`` is a threaded ``http.server`` that records every request and answers per path as
scripted (a list of statuses to answer in turn, then 200; an optional delay before answering).
``trigger_site`` is ``agentsim.open_site`` with the trigger worker's options given (tests/
conftest.py's ``start_server`` passes none, so its servers use the defaults).

Import it from tests in this directory as ``import triggerkit``.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import agentsim
import uvicorn
from agentsim import RunningServer, Site

from opendeploy.server.app import create_app
from opendeploy.server.bootstrap import bootstrap
from opendeploy.server.triggers import TriggerOptions
from opendeploy.settings import ServerSettings
from opendeploy.store.database import make_sqlite_url
from opendeploy.wire import PUBLIC_EXTENSIONS_SERVICE

__all__ = [
    "Received",
    "Receiver",
    "Script",
    "extensions",
    "leaves",
    "signature_ok",
    "trigger_site",
    "wait_for_deliveries",
]


@dataclass
class Script:
    """How a path answers: ``statuses`` in turn (then 200), each after ``delay`` seconds."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: Mapping[str, str]
    body: bytes
    started: float
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event(self) -> str:
        return self.headers["x-opendeploy-event"]

    @property
    def delivery_id(self) -> str:
        return self.headers["x-opendeploy-delivery"]


class Receiver:
    """A webhook receiver on 127.0.0.1; ``url(path)`` is a trigger target."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.received: list[Received] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.in_flight += 1
                    script = receiver.scripts.get(self.path, Script())
                    status = script.statuses.pop(0) if script.statuses else 200
                try:
                    if script.delay:
                        time.sleep(script.delay)
                    answer = b'{"ok":true}' if status < 300 else b"nope: scripted answer"
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    with receiver._lock:
                        receiver.in_flight -= 1
                        receiver.received.append(
                            Received(self.path, headers, body, started, status)
                        )

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *statuses: int, delay: float = 0.0) -> str:
        """Script ``path``'s answers; returns its URL."""
        with self._lock:
            self.scripts[path] = Script(list(statuses), delay)
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def signature_ok(received: Received, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers.get("x-opendeploy-signature", ""), expected)


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar in a JSON value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def extensions(server: RunningServer, *, key_id: str = "", secret: str = "") -> Any:
    """A botocore client of our public API extensions (admin's key unless given)."""
    return agentsim.agent_client(
        server,
        service=PUBLIC_EXTENSIONS_SERVICE,
        access_key_id=key_id or server.access_key_id,
        secret_access_key=secret or server.secret_access_key,
        read_timeout=10,
    )


def wait_for_deliveries(
    client: Any,
    deployment_id: str,
    count: int,
    *,
    statuses: Sequence[str] = ("Delivered", "Failed"),
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """ListTriggerDeliveries until ``count`` deliveries exist, all in ``statuses``."""

    def done() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = client.list_trigger_deliveries(deploymentId=deployment_id)[
            "deliveries"
        ]
        if len(found) == count and all(d["status"] in statuses for d in found):
            return found
        return None

    result: list[dict[str, Any]] = agentsim.wait_for(
        done, timeout=timeout, interval=0.05, what=f"{count} deliveries of {deployment_id}"
    )
    return result


def _start_server(
    data_dir: Path, database_url: str, options: TriggerOptions, **settings: Any
) -> RunningServer:
    """tests/conftest.py's ``start_server`` with the trigger worker's options."""
    config = ServerSettings(data_dir=data_dir, database_url=database_url, **settings)
    started = bootstrap(config)
    assert started.credentials_file is not None, "the database already had users"
    credentials = configparser.ConfigParser()
    credentials.read(started.credentials_file)
    app = create_app(
        started.context,
        strict_shapes=True,
        heartbeat_timeout=config.heartbeat_timeout,
        long_poll_seconds=config.long_poll_seconds,
        reconcile_interval=config.reconcile_interval,
        triggers=options,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return RunningServer(
        endpoint=f"http://127.0.0.1:{port}",
        data_dir=data_dir,
        access_key_id=credentials["default"]["aws_access_key_id"],
        secret_access_key=credentials["default"]["aws_secret_access_key"],
        account_id=started.context.account_id,
        _server=server,
        _thread=thread,
    )


@contextlib.contextmanager
def trigger_site(
    backend: str, data_dir: Path, options: TriggerOptions, **settings: Any
) -> Iterator[Site]:
    """A dedicated server of ``backend`` whose trigger worker runs with ``options``."""
    settings.setdefault("long_poll_seconds", 1.0)
    with agentsim._database(backend, data_dir) as url:
        server = _start_server(data_dir, url, options, **settings)
        site = Site(
            backend=backend,
            server=server,
            database_url=url or make_sqlite_url(data_dir),
            codedeploy=server.client("codedeploy"),
            iam=server.client("iam"),
        )
        try:
            yield site
        finally:
            site.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
