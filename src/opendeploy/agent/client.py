"""The agent's side of the wire: the host command service and bundle downloads.

``CommandClient`` wraps two botocore clients built from the wire models in ``opendeploy.wire``
(``codedeploy-commands``, the stock agent's service, and ``opendeploy-agent``, our log upload),
signed with the agent user's key for SigV4 service ``codedeploy-commands``, plus an httpx client
for ``GET /agent/bundles/<sha256>`` signed the same way (empty-payload hash, ``Range`` signed
when present).

Retries are ours, not botocore's (its own are switched off): transport errors, HTTP 5xx and
throttling answers are retried with capped, jittered exponential backoff; any other 4xx is not,
because asking again cannot change the answer. ``complete`` keeps trying for a long time
(hours by default): a success stays a success however long the server is away, unlike the stock
agent, which reports Failed after three quick retries (stock-agent-wire §6 E15).

Nothing here logs or raises the secret key; errors carry the operation, the error code and the
server's message.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import botocore.session  # type: ignore[import-untyped]
import httpx
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from opendeploy import __version__
from opendeploy.agent.config import AgentConfig
from opendeploy.bundles.fetch import fetch_http
from opendeploy.core.errors import OpenDeployError
from opendeploy.wire import COMMANDS_SERVICE, DATA_PATH, EXTENSIONS_SERVICE

__all__ = [
    "AGENT_VERSION",
    "Aborted",
    "Backoff",
    "CommandClient",
    "CommandServiceError",
    "CompleteResult",
    "is_retryable",
]

log = logging.getLogger(__name__)

AGENT_VERSION: Final = f"OPENDEPLOY_{__version__}"
SIGNING_NAME: Final = "codedeploy-commands"
EMPTY_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
BUNDLE_PATH_PREFIX: Final = "/agent/bundles/"
DIAGNOSTICS_LIMIT: Final = 8192
_THROTTLING: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "SlowDown",
    }
)
_T = TypeVar("_T")


class CommandServiceError(OpenDeployError):
    """A call to the host command service that failed (after any retries)."""

    def __init__(
        self, operation: str, message: str, *, code: str = "", status: int = 0, retryable: bool
    ) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.code = code
        self.status = status
        self.retryable = retryable
        self.server_message = message


class Aborted(OpenDeployError):
    """Retrying stopped because the agent is shutting down."""


class CompleteResult(enum.Enum):
    STORED = "stored"
    """The server has the completion."""
    REJECTED = "rejected"
    """The server refused it for good (4xx): asking again cannot help."""
    ABANDONED = "abandoned"
    """Not stored: the retry window ran out or the agent is stopping."""


def _status_and_code(error: ClientError) -> tuple[int, str, str]:
    response = error.response or {}
    meta = response.get("ResponseMetadata") or {}
    details = response.get("Error") or {}
    code = str(details.get("Code") or "")
    code = code.rpartition("#")[2]
    return int(meta.get("HTTPStatusCode") or 0), code, str(details.get("Message") or "")


def is_retryable(error: BaseException) -> bool:
    """Whether asking again may help: transport trouble, 5xx and throttling, never other 4xx."""
    if isinstance(error, CommandServiceError):
        return error.retryable
    if isinstance(error, ClientError):
        status, code, _ = _status_and_code(error)
        return status >= 500 or status == 429 or code in _THROTTLING
    return isinstance(error, HTTPClientError | BotocoreConnectionError | IncompleteReadError)


def _wrap(operation: str, error: Exception) -> CommandServiceError:
    if isinstance(error, CommandServiceError):
        return error
    if isinstance(error, ClientError):
        status, code, message = _status_and_code(error)
        text = f"{code}: {message}" if message else code or str(error)
        return CommandServiceError(
            operation,
            f"{text} (HTTP {status})",
            code=code,
            status=status,
            retryable=is_retryable(error),
        )
    return CommandServiceError(
        operation, f"{type(error).__name__}: {error}", retryable=is_retryable(error)
    )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits d/2 to d, d = min(cap, base*2^n)."""

    base: float = 0.5
    cap: float = 30.0
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt, 30))
        return float(ceiling / 2 + self.rng() * ceiling / 2)


def fit_diagnostics(diagnostics: Mapping[str, Any]) -> str:
    """The Diagnostics payload JSON, within the model's 8192 characters (oldest log cut first)."""
    data = dict(diagnostics)
    text = json.dumps(data, ensure_ascii=False)
    while len(text) > DIAGNOSTICS_LIMIT:
        logged = str(data.get("log") or "")
        message = str(data.get("message") or "")
        excess = len(text) - DIAGNOSTICS_LIMIT
        if logged:
            data["log"] = logged[min(len(logged), excess + 16) :]
        elif message:
            data["message"] = message[: max(0, len(message) - excess - 16)]
        else:
            break
        text = json.dumps(data, ensure_ascii=False)
    return text


class _RetryingTransport(httpx.BaseTransport):
    """Re-sends a bundle request on connection errors and 5xx answers, with backoff."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        backoff: Backoff,
        attempts: int,
        wait: Callable[[float], bool],
    ) -> None:
        self.inner = inner
        self.backoff = backoff
        self.attempts = attempts
        self.wait = wait

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            try:
                response = self.inner.handle_request(request)
            except httpx.TransportError as exc:
                if last:
                    raise
                log.warning("bundle download: %s; retrying", type(exc).__name__)
            else:
                if response.status_code < 500 or last:
                    return response
                response.close()
                log.warning("bundle download: HTTP %s; retrying", response.status_code)
            if self.wait(self.backoff.delay(attempt)):
                raise httpx.ConnectError("the agent is stopping", request=request)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()


class CommandClient:
    """The host command service as the agent uses it. Thread-safe."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        abort: threading.Event | None = None,
        backoff: Backoff | None = None,
        attempts: int = 4,
        complete_retry_seconds: float = 6 * 3600.0,
        complete_backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.host_identifier = config.host_identifier
        self.abort = abort or threading.Event()
        self.backoff = backoff or Backoff()
        self.attempts = attempts
        self.complete_retry_seconds = complete_retry_seconds
        self.complete_backoff = complete_backoff or Backoff(base=1.0, cap=30.0)
        self._credentials = Credentials(config.access_key_id, config.secret_access_key)
        session = _isolated_session()
        session.get_component("data_loader").search_paths.append(str(DATA_PATH))
        client_config = Config(
            read_timeout=config.poll_read_timeout,
            connect_timeout=10,
            retries={"total_max_attempts": 1, "mode": "standard"},
            tcp_keepalive=True,
            user_agent_extra=f"opendeploy-agent/{__version__}",
        )
        verify: str | bool | None = str(config.ca_bundle) if config.ca_bundle else None
        common: dict[str, Any] = {
            "endpoint_url": config.endpoint,
            "region_name": config.region,
            "aws_access_key_id": config.access_key_id,
            "aws_secret_access_key": config.secret_access_key,
            "config": client_config,
            "verify": verify,
        }
        self.commands = session.create_client(COMMANDS_SERVICE, **common)
        self.extensions = session.create_client(EXTENSIONS_SERVICE, **common)
        for client in (self.commands, self.extensions):
            client.meta.events.register("before-sign", _add_version_header)
        context = (
            ssl.create_default_context(cafile=str(config.ca_bundle))
            if config.ca_bundle
            else ssl.create_default_context()
        )
        self.http = httpx.Client(
            transport=_RetryingTransport(
                httpx.HTTPTransport(verify=context), self.backoff, attempts, self.abort.wait
            ),
            timeout=httpx.Timeout(60.0, connect=10.0),
            headers={"User-Agent": f"opendeploy-agent/{__version__}"},
        )

    def __repr__(self) -> str:
        return f"CommandClient(endpoint={self.config.endpoint!r}, host={self.host_identifier!r})"

    def close(self) -> None:
        self.http.close()
        for client in (self.commands, self.extensions):
            client.close()

    # -- retries ----------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        call: Callable[[], _T],
        *,
        attempts: int | None = None,
        deadline: float | None = None,
        backoff: Backoff | None = None,
    ) -> _T:
        """``call()`` retried per the rules above; raises CommandServiceError or Aborted."""
        backoff = backoff or self.backoff
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                error = _wrap(operation, exc)
                if not error.retryable:
                    raise error from None
                attempt += 1
                out_of_attempts = attempts is not None and attempt >= attempts
                delay = backoff.delay(attempt - 1)
                out_of_time = deadline is not None and time.monotonic() + delay > deadline
                if out_of_attempts or out_of_time:
                    raise error from None
                log.warning("%s; retrying in %.1f s (attempt %d)", error, delay, attempt + 1)
                if self.abort.wait(delay):
                    raise Aborted(f"{operation}: not retried, the agent is stopping") from None

    # -- the command service ----------------------------------------------------------------

    def poll(self) -> dict[str, Any] | None:
        """One PollHostCommand (a long poll; no retries here, the loop backs off)."""
        response = self._call(
            "PollHostCommand",
            lambda: self.commands.poll_host_command(HostIdentifier=self.host_identifier),
            attempts=1,
        )
        command = response.get("HostCommand")
        return command if isinstance(command, dict) and command else None

    def get_deployment_specification(self, execution_id: str) -> dict[str, Any]:
        response: dict[str, Any] = self._call(
            "GetDeploymentSpecification",
            lambda: self.commands.get_deployment_specification(
                DeploymentExecutionId=execution_id, HostIdentifier=self.host_identifier
            ),
            attempts=self.attempts,
        )
        return response

    def acknowledge(self, command_id: str, *, is_noop: bool) -> str | None:
        """PutHostCommandAcknowledgement; the CommandStatus the server answers, if any."""
        payload = json.dumps({"IsCommandNoop": is_noop})
        response = self._call(
            "PutHostCommandAcknowledgement",
            lambda: self.commands.put_host_command_acknowledgement(
                HostCommandIdentifier=command_id,
                Diagnostics={"Format": "JSON", "Payload": payload},
            ),
            attempts=self.attempts,
        )
        status = response.get("CommandStatus")
        return status if isinstance(status, str) else None

    def complete(
        self,
        command_id: str,
        status: str,
        diagnostics: Mapping[str, Any],
        *,
        retry_seconds: float | None = None,
    ) -> CompleteResult:
        """PutHostCommandComplete, retried until stored, refused (4xx) or out of time."""
        payload = fit_diagnostics(diagnostics)
        window = self.complete_retry_seconds if retry_seconds is None else retry_seconds
        try:
            self._call(
                "PutHostCommandComplete",
                lambda: self.commands.put_host_command_complete(
                    HostCommandIdentifier=command_id,
                    CommandStatus=status,
                    Diagnostics={"Format": "JSON", "Payload": payload},
                ),
                deadline=time.monotonic() + window,
                backoff=self.complete_backoff,
            )
        except Aborted as exc:
            log.warning("%s", exc)
            return CompleteResult.ABANDONED
        except CommandServiceError as error:
            if error.retryable:
                log.error("%s; gave up after %.0f s, will resend at the next start", error, window)
                return CompleteResult.ABANDONED
            log.error("%s; the server refused the completion", error)
            return CompleteResult.REJECTED
        return CompleteResult.STORED

    def update(self, command_id: str) -> str | None:
        """PostHostCommandUpdate (heartbeat); the CommandStatus the server answers."""
        response = self._call(
            "PostHostCommandUpdate",
            lambda: self.commands.post_host_command_update(HostCommandIdentifier=command_id),
            attempts=2,
        )
        status = response.get("CommandStatus")
        return status if isinstance(status, str) else None

    def put_log(self, command_id: str, offset: int, text: str) -> None:
        """PutHostCommandLog: ``text`` at character ``offset`` of the command's full log."""
        self._call(
            "PutHostCommandLog",
            lambda: self.extensions.put_host_command_log(
                HostCommandIdentifier=command_id, Offset=offset, Log=text
            ),
            attempts=self.attempts,
        )

    # -- bundles ----------------------------------------------------------------------------

    def bundle_url(self, path: str) -> str:
        """The URL of a bundle in the server's store; ``path`` must be /agent/bundles/<sha>."""
        name = path[len(BUNDLE_PATH_PREFIX) :] if path.startswith(BUNDLE_PATH_PREFIX) else ""
        if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
            raise ValueError(f"bundle path {path!r} is not {BUNDLE_PATH_PREFIX}<sha256>")
        return self.config.endpoint + path

    def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None:
        """Fetch a bundle from the server's store to ``dest`` (resumable, sha256-checked)."""
        fetch_http(self.http, self.bundle_url(path), dest, sha256=sha256, size=size, auth=self.sign)

    def sign(self, request: httpx.Request) -> httpx.Request:
        """SigV4-sign a bodiless request (httpx function auth): host, date, payload hash, Range."""
        headers = {"X-Amz-Content-Sha256": EMPTY_SHA256}
        if "range" in request.headers:
            headers["Range"] = request.headers["range"]
        signed = AWSRequest(method=request.method, url=str(request.url), headers=headers, data=b"")
        SigV4Auth(self._credentials, SIGNING_NAME, self.config.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-Sha256"):
            request.headers[name] = signed.headers[name]
        return request


def _isolated_session() -> Any:
    """A botocore session that ignores the AWS environment and files of the agent's user.

    The agent's configuration file is its whole configuration: an ``AWS_PROFILE`` naming a
    missing profile, an ``AWS_CA_BUNDLE`` or a ``~/.aws/config`` meant for other tools must not
    change (or break) how it talks to its server.
    """
    isolated = {
        name: (None, None, default, None)
        for name, default in (
            ("profile", None),
            ("config_file", os.devnull),
            ("credentials_file", os.devnull),
            ("ca_bundle", None),
            ("data_path", None),
        )
    }
    return botocore.session.Session(session_vars=isolated)


def _add_version_header(request: Any, **_: Any) -> None:
    request.headers["X-Amz-Codedeploy-Agent-Version"] = AGENT_VERSION
