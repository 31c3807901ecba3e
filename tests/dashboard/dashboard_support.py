"""What the dashboard tests share: an in-process server on loopback with a user of each
role, and helpers that read tokens out of pages."""

from __future__ import annotations

import configparser
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from opendeploy.core.policies import POLICY_ARNS, Role
from opendeploy.server.app import create_app
from opendeploy.server.bootstrap import bootstrap
from opendeploy.server.service import iam
from opendeploy.server.service.context import ServiceContext
from opendeploy.settings import ServerSettings
from opendeploy.store import identities


@dataclass(frozen=True)
class Key:
    access_key_id: str
    secret: str


@dataclass
class UiServer:
    endpoint: str
    context: ServiceContext
    admin: Key
    deployer: Key
    reader: Key
    agent: Key
    _server: uvicorn.Server
    _thread: threading.Thread

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.endpoint, follow_redirects=False, timeout=10)

    def sign_in(self, key: Key, client: httpx.Client | None = None) -> httpx.Client:
        """A client holding a session of ``key``'s user."""
        client = client or self.client()
        token = form_token(client.get("/ui/signin").text)
        response = client.post(
            "/ui/signin",
            data={
                "form_token": token,
                "access_key_id": key.access_key_id,
                "secret_access_key": key.secret,
                "next": "/ui",
            },
        )
        assert response.status_code == 303, response.text
        assert "od_session" in client.cookies
        return client

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def form_token(html: str) -> str:
    match = re.search(r'name="form_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def user_with_key(context: ServiceContext, name: str, role: Role) -> Key:
    with context.db.write() as connection:
        user = iam.new_user(context, name)
        identities.create_user(connection, user)
        identities.attach_policy(connection, name, POLICY_ARNS[role])
        key = iam.issue_access_key(context, connection, user)
    return Key(key["AccessKeyId"], key["SecretAccessKey"])


def start_ui_server(data_dir: Path) -> UiServer:
    started = bootstrap(ServerSettings(data_dir=data_dir))
    assert started.credentials_file is not None
    credentials = configparser.ConfigParser()
    credentials.read(started.credentials_file)
    admin = Key(
        credentials["default"]["aws_access_key_id"],
        credentials["default"]["aws_secret_access_key"],
    )
    context = started.context
    deployer = user_with_key(context, "dana-deployer", Role.DEPLOYER)
    reader = user_with_key(context, "rita-reader", Role.READER)
    agent = user_with_key(context, "agent-host-1", Role.AGENT)
    app = create_app(context, long_poll_seconds=1.0)
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
            raise RuntimeError("the dashboard test server did not start")
        time.sleep(0.01)
    return UiServer(
        endpoint=f"http://127.0.0.1:{port}",
        context=context,
        admin=admin,
        deployer=deployer,
        reader=reader,
        agent=agent,
        _server=server,
        _thread=thread,
    )
