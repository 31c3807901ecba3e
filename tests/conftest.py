"""Shared fixtures: databases (SQLite and a throwaway PostgreSQL database), a real server on
loopback driven by real boto3 clients."""

from __future__ import annotations

import configparser
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
import uvicorn
from botocore.config import Config

from opendeploy.server.app import create_app
from opendeploy.server.bootstrap import bootstrap
from opendeploy.settings import ServerSettings

POSTGRES_ENV = "OPENDEPLOY_TEST_POSTGRES_URL"
#: One boto3 session for all test clients: building a session costs ~70 ms.
_SESSION = boto3.session.Session()
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _clean_aws_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test may pick up the developer's own AWS credentials or config, nor the terminal's
    size (pytest-xdist's workers set COLUMNS=80, which would narrow the CLI's tables)."""
    for name in list(os.environ):
        if name.startswith("AWS_") or (name.startswith("OPENDEPLOY_") and name != POSTGRES_ENV):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = "od_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            )
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@dataclass
class RunningServer:
    """A real OpenDeploy server on a loopback port, in a thread of the test process."""

    endpoint: str
    data_dir: Path
    access_key_id: str
    secret_access_key: str
    account_id: str
    _server: uvicorn.Server
    _thread: threading.Thread

    def client(
        self,
        service: str = "codedeploy",
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> Any:
        return _SESSION.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_server(data_dir: Path, database_url: str = "", **settings: Any) -> RunningServer:
    config = ServerSettings(data_dir=data_dir, database_url=database_url, **settings)
    started = bootstrap(config)
    assert started.credentials_file is not None, "the database already had users"
    credentials = configparser.ConfigParser()
    credentials.read(started.credentials_file)
    app = create_app(
        started.context,
        max_request_bytes=config.max_request_bytes,
        strict_shapes=True,
        heartbeat_timeout=config.heartbeat_timeout,
        long_poll_seconds=config.long_poll_seconds,
        reconcile_interval=config.reconcile_interval,
        prometheus_url=config.prometheus_url,
        alarm_poll_seconds=config.alarm_poll_seconds,
        alertmanager_token=config.alertmanager_token,
    )
    # IPPROTO_TCP explicitly: asyncio then disables Nagle on accepted connections.
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


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def running_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server per backend for the whole session; tests use unique names."""
    data_dir = tmp_path_factory.mktemp(f"server-{request.param}")
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    server = start_server(data_dir, url)
    yield server
    server.stop()


@pytest.fixture
def server(running_server: RunningServer) -> RunningServer:
    return running_server


@pytest.fixture
def codedeploy(server: RunningServer) -> Any:
    """An admin's boto3 CodeDeploy client."""
    return server.client("codedeploy")


@pytest.fixture
def iam(server: RunningServer) -> Any:
    """An admin's boto3 IAM client."""
    return server.client("iam")


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses: unique("app") -> "app-1f3a9c0e"."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own (no other test's rows in it), dropped after."""
    name = "od_fresh_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            sa.engine.make_url(postgres_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
