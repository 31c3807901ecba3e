"""The agent's HTTP: SigV4 signing and a small keep-alive connection pool, standard library only.

An idle agent is one long poll every ~45 s, and a fleet runs one agent per host, so the agent
is kept small: botocore (the service models, endpoint rules, its event system) and httpx
would cost tens of megabytes of memory and a few milliseconds of CPU per request for five
JSON operations with string members. The requests are the ones botocore sends for the same
calls (``POST /``, AWS JSON 1.1, ``X-Amz-Target``, SigV4 over host, date and our headers).

``ConnectionPool`` reuses connections (HTTP/1.1 keep-alive), so a command's acknowledgement,
completion and the next poll cost no TCP or TLS handshake. A pooled connection the server has
closed meanwhile (uvicorn drops idle ones after a few seconds) is noticed before it is used,
and a request that meets a connection closed under it is sent once more on a new one: every
agent operation may be repeated (completions and log chunks are idempotent, a lost
acknowledgement or poll answer is handed out again by the server).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import select
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final, NamedTuple
from urllib.parse import quote, urlsplit

__all__ = [
    "EMPTY_SHA256",
    "ConnectionPool",
    "Response",
    "Signer",
    "TransportError",
]

EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
ALGORITHM: Final = "AWS4-HMAC-SHA256"
#: Headers never signed (a proxy may rewrite them), as botocore.
_UNSIGNED: Final = frozenset({"user-agent", "expect", "x-amzn-trace-id", "authorization"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Errors that mean the server closed a kept-alive connection before answering.
_CLOSED: Final = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

#: What a request can fail with below HTTP: connection, TLS, timeouts, malformed answers.
TransportError: Final = (OSError, http.client.HTTPException)


class Signer:
    """AWS Signature Version 4 for one access key, region and service."""

    __slots__ = ("_keys", "access_key_id", "region", "secret_access_key", "service")

    def __init__(self, access_key_id: str, secret_access_key: str, region: str, service: str):
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.service = service
        self._keys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Signer({self.access_key_id!r}, region={self.region!r}, {self.service!r})"

    def sign(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        payload_sha256: str,
        *,
        now: float | None = None,
    ) -> None:
        """Add ``X-Amz-Date`` and ``Authorization`` to ``headers`` (which must hold ``Host``)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        headers["X-Amz-Date"] = stamp
        signed = {
            name.lower(): " ".join(value.split())
            for name, value in headers.items()
            if name.lower() not in _UNSIGNED
        }
        names = sorted(signed)
        canonical = "\n".join(
            (
                method,
                quote(path, safe="/~"),
                "",
                "".join(f"{name}:{signed[name]}\n" for name in names),
                ";".join(names),
                payload_sha256,
            )
        )
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        string_to_sign = "\n".join(
            (ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(
            self._key(stamp[:8]), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )

    def _key(self, day: str) -> bytes:
        """The signing key of ``day`` (YYYYMMDD): four HMACs, computed once a day."""
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self.secret_access_key).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {day: key}
        return key


class Response(NamedTuple):
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


class ConnectionPool:
    """Keep-alive connections to one ``http://`` or ``https://`` endpoint. Thread-safe.

    ``connect_timeout`` bounds connecting (and the TLS handshake); ``read_timeout`` every wait
    for the server after that, so it must exceed the server's long poll.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        ca_bundle: Path | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 80.0,
        keep: int = 4,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{endpoint!r} is not an http:// or https:// URL")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.base_path = parts.path.rstrip("/")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        #: The Host header, as botocore sends it: without the scheme's default port.
        self.host = host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        self.ca_bundle = ca_bundle
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keep = keep
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"ConnectionPool({self.scheme}://{self.host})"

    def request(
        self, method: str, path: str, *, body: bytes = b"", headers: Mapping[str, str]
    ) -> Response:
        """Send a request and read the whole answer; raises one of ``TransportError``."""
        connection, response = self._send(method, path, body, headers)
        try:
            data = response.read()
        except BaseException:
            connection.close()
            raise
        self._release(connection, response)
        return Response(response.status, response.reason, response.headers, data)

    @contextmanager
    def stream(
        self, method: str, path: str, *, headers: Mapping[str, str]
    ) -> Iterator[http.client.HTTPResponse]:
        """Send a bodiless request; the answer is read as it arrives."""
        connection, response = self._send(method, path, b"", headers)
        try:
            yield response
        except BaseException:
            connection.close()
            raise
        if response.isclosed():
            self._release(connection, response)
        else:
            connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- connections -------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection, reused = self._acquire()
        try:
            return connection, self._exchange(connection, method, path, body, headers)
        except _CLOSED:
            connection.close()
            if not reused:
                raise
        # The server closed the kept-alive connection as the request went out: once more.
        connection = self._connect()
        try:
            return connection, self._exchange(connection, method, path, body, headers)
        except BaseException:
            connection.close()
            raise

    @staticmethod
    def _exchange(
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> http.client.HTTPResponse:
        try:
            connection.request(method, path, body=body or None, headers=dict(headers))
            return connection.getresponse()
        except BaseException:
            connection.close()
            raise

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect(), False
            if _usable(connection):
                return connection, True
            connection.close()

    def _release(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        if response.will_close:
            connection.close()
            return
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self.scheme == "https":
            connection = http.client.HTTPSConnection(
                self.hostname, self.port, timeout=self.connect_timeout, context=self._tls()
            )
        else:
            connection = http.client.HTTPConnection(
                self.hostname, self.port, timeout=self.connect_timeout
            )
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(self.read_timeout)
        return connection

    def _tls(self) -> ssl.SSLContext:
        """The TLS settings: the pinned CA bundle if configured, else the system's CAs."""
        if self._context is None:
            cafile = str(self.ca_bundle) if self.ca_bundle else None
            self._context = ssl.create_default_context(cafile=cafile)
        return self._context


def _usable(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection is still open: nothing to read, no hang-up."""
    sock = connection.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)
