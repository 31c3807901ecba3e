"""The agent's own HTTP: SigV4 as botocore signs, kept-alive connections, bundle downloads."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opendeploy.agent.client import COMMANDS_TARGET, EXTENSIONS_TARGET
from opendeploy.agent.download import DownloadError, download
from opendeploy.agent.transport import EMPTY_SHA256, ConnectionPool, Signer

SECRET = "transport-secret-0000000000000000000000"


class Stub:
    """A loopback HTTP/1.1 server that counts connections and answers from a script."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.close_after_answer = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stub.connections += 1

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                stub.requests.append(
                    {"method": self.command, "headers": dict(self.headers), "body": body}
                )
                status, headers, data = stub.answers.pop(0) if stub.answers else (200, {}, b"{}")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if stub.close_after_answer:
                    self.close_connection = True

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


@pytest.fixture
def pool(stub: Stub) -> Iterator[ConnectionPool]:
    connections = ConnectionPool(stub.endpoint, read_timeout=5)
    yield connections
    connections.close()


# -- signing ---------------------------------------------------------------------------------


def test_the_signature_is_the_one_botocore_computes() -> None:
    """The server recomputes every signature with botocore's signer."""
    import datetime as dt

    from opendeploy.server.sigv4 import verify_request

    body = b'{"HostIdentifier": "arn:aws:iam::000000000000:user/agent"}'
    headers = {
        "Host": "deploy.example.com:8443",
        "X-Amz-Target": f"{COMMANDS_TARGET}.PollHostCommand",
        "Content-Type": "application/x-amz-json-1.1",
        "User-Agent": "not signed",
    }
    now = 1_790_000_000.0
    Signer("AKIAAGENT", SECRET, "eu-west-1", "codedeploy-commands").sign(
        "POST", "/", headers, hashlib.sha256(body).hexdigest(), now=now
    )
    signed = verify_request(
        method="POST",
        path="/",
        query="",
        headers=headers,
        body=body,
        secret_for=lambda key: SECRET if key == "AKIAAGENT" else None,
        now=dt.datetime.fromtimestamp(now, dt.UTC),
        services={"codedeploy-commands"},
    )
    assert (signed.region, signed.service) == ("eu-west-1", "codedeploy-commands")
    assert "x-amz-target" in signed.signed_headers
    assert "user-agent" not in signed.signed_headers
    assert headers["X-Amz-Date"] == time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def test_the_signing_key_is_kept_for_the_day_only() -> None:
    signer = Signer("AKIAAGENT", SECRET, "us-east-1", "codedeploy-commands")
    for now in (1_790_000_000.0, 1_790_000_000.0 + 86_400):
        headers = {"Host": "h"}
        signer.sign("GET", "/", headers, EMPTY_SHA256, now=now)
    assert len(signer._keys) == 1
    assert SECRET not in repr(signer)


def test_the_target_prefixes_are_the_wire_models() -> None:
    from opendeploy.wire import COMMANDS_SERVICE, EXTENSIONS_SERVICE, service_model

    assert service_model(COMMANDS_SERVICE).metadata["targetPrefix"] == COMMANDS_TARGET
    assert service_model(EXTENSIONS_SERVICE).metadata["targetPrefix"] == EXTENSIONS_TARGET


def test_the_host_header_omits_only_the_default_port() -> None:
    assert ConnectionPool("http://h.example:80").host == "h.example"
    assert ConnectionPool("https://h.example").host == "h.example"
    assert ConnectionPool("https://h.example:8443").host == "h.example:8443"
    assert ConnectionPool("http://[::1]:8080/base/").host == "[::1]:8080"
    assert ConnectionPool("http://[::1]:8080/base/").base_path == "/base"
    with pytest.raises(ValueError):
        ConnectionPool("ftp://h.example")


# -- connections -----------------------------------------------------------------------------


def test_requests_reuse_one_connection(stub: Stub, pool: ConnectionPool) -> None:
    for _ in range(5):
        answer = pool.request("POST", "/", body=b"{}", headers={"Host": pool.host})
        assert answer.status == 200 and json.loads(answer.body) == {}
    assert stub.connections == 1


def test_a_connection_the_server_closed_is_replaced_at_once(
    stub: Stub, pool: ConnectionPool
) -> None:
    stub.close_after_answer = True
    started = time.monotonic()
    for _ in range(3):
        assert pool.request("POST", "/", body=b"{}", headers={"Host": pool.host}).status == 200
    assert time.monotonic() - started < 1
    assert stub.connections == 3
    assert len(stub.requests) == 3


def test_a_connection_closed_under_a_request_is_retried_once_on_a_new_one(
    stub: Stub, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool.request("POST", "/", body=b"{}", headers={"Host": pool.host})
    # The server closes the idle connection just as the request goes out (not yet visible).
    monkeypatch.setattr("opendeploy.agent.transport._usable", lambda connection: True)
    [idle] = pool._idle
    assert idle.sock is not None
    idle.sock.shutdown(socket.SHUT_RDWR)
    assert pool.request("POST", "/", body=b"{}", headers={"Host": pool.host}).status == 200
    assert stub.connections == 2


def test_a_new_connection_that_fails_is_not_retried(pool: ConnectionPool) -> None:
    closed = ConnectionPool(f"http://127.0.0.1:{_closed_port()}", connect_timeout=1)
    with pytest.raises(ConnectionRefusedError):
        closed.request("POST", "/", body=b"{}", headers={"Host": closed.host})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- downloads -------------------------------------------------------------------------------


DATA = bytes(range(256)) * 40
SHA = hashlib.sha256(DATA).hexdigest()


def _fetch(stub: Stub, pool: ConnectionPool, dest: Path, **options: Any) -> None:
    signer = Signer("AKIAAGENT", SECRET, "us-east-1", "codedeploy-commands")
    options.setdefault("sha256", SHA)
    options.setdefault("size", len(DATA))
    download(pool, signer, "/agent/bundles/x", dest, backoff=lambda attempt: 0.0, **options)


def test_a_download_is_checked_and_signed(stub: Stub, pool: ConnectionPool, tmp_path: Path) -> None:
    stub.answers = [(200, {}, DATA)]
    _fetch(stub, pool, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == DATA
    [request] = stub.requests
    assert request["headers"]["X-Amz-Content-Sha256"] == EMPTY_SHA256
    assert "x-amz-content-sha256" in request["headers"]["Authorization"]


def test_a_partial_file_that_is_in_fact_complete_is_only_checked(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    (tmp_path / "b").write_bytes(DATA)
    stub.answers = [(416, {"Content-Range": f"bytes */{len(DATA)}"}, b"")]
    _fetch(stub, pool, tmp_path / "b", size=None)
    assert stub.requests[0]["headers"]["Range"] == f"bytes={len(DATA)}-"


def test_a_resume_answered_from_the_wrong_offset_starts_over(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    (tmp_path / "b").write_bytes(DATA[:100])
    stub.answers = [
        (206, {"Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}"}, DATA),
        (200, {}, DATA),
    ]
    _fetch(stub, pool, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == DATA
    assert "Range" not in stub.requests[1]["headers"]


def test_a_download_longer_than_announced_is_deleted(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    stub.answers = [(200, {}, DATA)]
    with pytest.raises(DownloadError, match="longer than"):
        _fetch(stub, pool, tmp_path / "b", size=100, sha256=hashlib.sha256(DATA[:100]).hexdigest())
    assert not (tmp_path / "b").exists()


def test_other_content_is_deleted_and_named(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    stub.answers = [(200, {}, DATA[::-1])]
    with pytest.raises(DownloadError, match=f"sha256 expected {SHA}"):
        _fetch(stub, pool, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_4xx_is_not_retried_but_a_5xx_is(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    stub.answers = [(503, {}, b""), (403, {}, b"denied")]
    with pytest.raises(DownloadError, match="HTTP 403"):
        _fetch(stub, pool, tmp_path / "b")
    assert len(stub.requests) == 2


def test_a_download_gives_up_but_keeps_what_arrived(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    stub.answers = [(500, {}, b"")] * 3
    (tmp_path / "b").write_bytes(DATA[:10])
    with pytest.raises(DownloadError, match="10 bytes are kept"):
        _fetch(stub, pool, tmp_path / "b", attempts=3)


def test_a_stopping_agent_ends_the_download_retries(
    stub: Stub, pool: ConnectionPool, tmp_path: Path
) -> None:
    abort = threading.Event()
    abort.set()
    stub.answers = [(500, {}, b"")] * 3
    with pytest.raises(DownloadError, match="stopping"):
        _fetch(stub, pool, tmp_path / "b", abort=abort)
    assert len(stub.requests) == 1


def test_a_drop_part_way_resumes(tmp_path: Path) -> None:
    """The server sends half the body and hangs up; the next try asks for the rest."""
    served: list[str | None] = []

    def serve(listener: socket.socket) -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                request = connection.recv(65536).decode()
                wanted = [line for line in request.split("\r\n") if line.startswith("Range:")]
                served.append(wanted[0] if wanted else None)
                if not wanted:
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n"
                    connection.sendall(head.encode() + DATA[:1000])
                else:
                    rest = DATA[1000:]
                    head = (
                        "HTTP/1.1 206 Partial Content\r\n"
                        f"Content-Range: bytes 1000-{len(DATA) - 1}/{len(DATA)}\r\n"
                        f"Content-Length: {len(rest)}\r\n\r\n"
                    )
                    connection.sendall(head.encode() + rest)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        pool = ConnectionPool(f"http://127.0.0.1:{listener.getsockname()[1]}", read_timeout=5)
        signer = Signer("AKIAAGENT", SECRET, "us-east-1", "codedeploy-commands")
        download(
            pool,
            signer,
            "/agent/bundles/x",
            tmp_path / "b",
            sha256=SHA,
            size=len(DATA),
            backoff=lambda attempt: 0.0,
        )
        thread.join(5)
    assert (tmp_path / "b").read_bytes() == DATA
    assert served == [None, "Range: bytes=1000-"]


def test_http_client_errors_are_transport_errors() -> None:
    from opendeploy.agent.client import is_retryable

    assert is_retryable(http.client.RemoteDisconnected("gone"))
    assert is_retryable(ConnectionRefusedError())
    assert not is_retryable(ValueError())
