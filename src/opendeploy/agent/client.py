"""The agent's side of the wire: the host command service and bundle downloads.

``CommandClient`` speaks the host command service (``codedeploy-commands``, the stock agent's
service) and ``opendeploy-agent`` (our log upload) as AWS JSON 1.1, exactly as botocore clients
built from the wire models in ``opendeploy.wire`` would, signed with the agent user's key for
SigV4 service ``codedeploy-commands``; ``GET /agent/bundles/<sha256>`` is signed the same way
(empty-payload hash, ``Range`` signed when present). It does not use botocore or httpx: see
``opendeploy.agent.transport`` for why, and for the connection reuse.

Retries are ours: transport errors, HTTP 5xx and throttling answers are retried with capped,
jittered exponential backoff; any other 4xx is not, because asking again cannot change the
answer. ``complete`` keeps trying for a long time (hours by default): a success stays a
success however long the server is away, unlike the stock agent, which reports Failed after
three quick retries (stock-agent-wire §6 E15).

Nothing here logs or raises the secret key; errors carry the operation, the error code and the
server's message.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from opendeploy import __version__
from opendeploy.agent.config import AgentConfig
from opendeploy.agent.download import download
from opendeploy.agent.transport import ConnectionPool, Response, Signer, TransportError
from opendeploy.core.errors import OpenDeployError

__all__ = [
    "AGENT_VERSION",
    "Aborted",
    "Backoff",
    "CommandClient",
    "CommandServiceError",
    "CompleteResult",
    "Polled",
    "is_retryable",
]

log = logging.getLogger(__name__)

AGENT_VERSION: Final = f"OPENDEPLOY_{__version__}"
SIGNING_NAME: Final = "codedeploy-commands"
#: ``targetPrefix`` of the wire models ``codedeploy-commands`` and ``opendeploy-agent``.
COMMANDS_TARGET: Final = "CodeDeployCommandService_v20141006"
EXTENSIONS_TARGET: Final = "OpenDeployAgent_20261126"
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.1"
USER_AGENT: Final = f"opendeploy-agent/{__version__}"
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


class _UnknownOperation(Exception):
    """The server does not serve an extension operation (an older OpenDeploy)."""


@dataclass(frozen=True, slots=True)
class Polled:
    """A command a poll returned."""

    command: dict[str, Any]
    #: GetDeploymentSpecification's answer for it, when it came with the command.
    specification: dict[str, Any] | None = None


class CompleteResult(enum.Enum):
    STORED = "stored"
    """The server has the completion."""
    REJECTED = "rejected"
    """The server refused it for good (4xx): asking again cannot help."""
    ABANDONED = "abandoned"
    """Not stored: the retry window ran out or the agent is stopping."""


def answer_error(operation: str, response: Response) -> CommandServiceError:
    """The error an HTTP answer other than 200 stands for (AWS JSON 1.1 error shape)."""
    try:
        document = json.loads(response.body) if response.body else {}
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    code = str(document.get("__type") or response.headers.get("x-amzn-ErrorType") or "")
    code = code.rpartition("#")[2].partition(":")[0]
    message = str(document.get("message") or document.get("Message") or "")
    text = f"{code}: {message}" if message else code or response.reason
    status = response.status
    return CommandServiceError(
        operation,
        f"{text} (HTTP {status})",
        code=code,
        status=status,
        retryable=status >= 500 or status == 429 or code in _THROTTLING,
    )


def _members(operation: str, body: bytes) -> dict[str, Any]:
    """The JSON object of a 200 answer (empty body: no members)."""
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise CommandServiceError(
            operation, f"the answer is not JSON: {exc}", status=200, retryable=False
        ) from None
    if not isinstance(document, dict):
        raise CommandServiceError(
            operation, "the answer is not a JSON object", status=200, retryable=False
        )
    return document


def is_retryable(error: BaseException) -> bool:
    """Whether asking again may help: transport trouble, 5xx and throttling, never other 4xx."""
    if isinstance(error, CommandServiceError):
        return error.retryable
    return isinstance(error, TransportError)


def _wrap(operation: str, error: Exception) -> CommandServiceError:
    if isinstance(error, CommandServiceError):
        return error
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
        self.pool = ConnectionPool(
            config.endpoint,
            ca_bundle=config.ca_bundle,
            connect_timeout=10.0,
            read_timeout=config.poll_read_timeout,
        )
        self.signer = Signer(
            config.access_key_id, config.secret_access_key, config.region, SIGNING_NAME
        )
        #: Whether completions ask for the host's next command, and polls for commands with
        #: their specification (each until the server says it does not know the operation).
        self.takes_next = True
        self.takes_polls = True

    def __repr__(self) -> str:
        return f"CommandClient(endpoint={self.config.endpoint!r}, host={self.host_identifier!r})"

    def close(self) -> None:
        self.pool.close()

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

    def _invoke(
        self, operation: str, params: Mapping[str, Any], *, target: str = COMMANDS_TARGET
    ) -> dict[str, Any]:
        """One AWS JSON 1.1 request, as a botocore client sends it; the answer's members."""
        body = json.dumps(params).encode()
        path = self.pool.base_path + "/"
        headers = {
            "Host": self.pool.host,
            "X-Amz-Target": f"{target}.{operation}",
            "Content-Type": JSON_CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            "X-Amz-Codedeploy-Agent-Version": AGENT_VERSION,
        }
        self.signer.sign("POST", path, headers, hashlib.sha256(body).hexdigest())
        response = self.pool.request("POST", path, body=body, headers=headers)
        if response.status != 200:
            raise answer_error(operation, response)
        return _members(operation, response.body)

    # -- the command service ----------------------------------------------------------------

    def poll(self) -> dict[str, Any] | None:
        """One PollHostCommand (a long poll; no retries here, the loop backs off)."""
        response = self._call(
            "PollHostCommand",
            lambda: self._invoke("PollHostCommand", {"HostIdentifier": self.host_identifier}),
            attempts=1,
        )
        command = response.get("HostCommand")
        return command if isinstance(command, dict) and command else None

    def take(self) -> Polled | None:
        """A long poll whose command comes with its deployment's specification (OpenDeploy's
        TakeHostCommand: no specification fetch after it); a plain PollHostCommand on a server
        without it (an older OpenDeploy), from then on."""
        if self.takes_polls:
            params = {"HostIdentifier": self.host_identifier}
            try:
                response = self._call(
                    "TakeHostCommand",
                    lambda: self._invoke("TakeHostCommand", params, target=EXTENSIONS_TARGET),
                    attempts=1,
                )
            except CommandServiceError as error:
                if error.code != "UnknownOperationException":
                    raise
                log.info("the server cannot hand specifications with commands; polling")
                self.takes_polls = False
            else:
                command = response.get("HostCommand")
                if not isinstance(command, dict) or not command:
                    return None
                given: dict[str, Any] | None = None
                if "DeploymentSpecification" in response:
                    given = {
                        key: response[key]
                        for key in ("DeploymentSystem", "DeploymentSpecification")
                        if key in response
                    }
                return Polled(command, given)
        command = self.poll()
        return None if command is None else Polled(command)

    def get_deployment_specification(self, execution_id: str) -> dict[str, Any]:
        params = {"DeploymentExecutionId": execution_id, "HostIdentifier": self.host_identifier}
        return self._call(
            "GetDeploymentSpecification",
            lambda: self._invoke("GetDeploymentSpecification", params),
            attempts=self.attempts,
        )

    def acknowledge(self, command_id: str, *, is_noop: bool) -> str | None:
        """PutHostCommandAcknowledgement; the CommandStatus the server answers, if any."""
        params = {
            "HostCommandIdentifier": command_id,
            "Diagnostics": {"Format": "JSON", "Payload": json.dumps({"IsCommandNoop": is_noop})},
        }
        response = self._call(
            "PutHostCommandAcknowledgement",
            lambda: self._invoke("PutHostCommandAcknowledgement", params),
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
        result, _ = self._complete(
            "PutHostCommandComplete", command_id, status, diagnostics, retry_seconds=retry_seconds
        )
        return result

    def complete_and_take_next(
        self, command_id: str, status: str, diagnostics: Mapping[str, Any]
    ) -> tuple[CompleteResult, dict[str, Any] | None]:
        """PutHostCommandCompleteAndTakeNext (retried as Complete is): the completion, and the
        host's next command of the deployment, already acknowledged, if the server has one.

        A server without the operation (an older OpenDeploy) gets plain completions from then
        on, and the agent polls for every command as the stock agent does.
        """
        if self.takes_next:
            try:
                return self._complete(
                    "PutHostCommandCompleteAndTakeNext", command_id, status, diagnostics
                )
            except _UnknownOperation:
                log.info("the server cannot hand the next command with a completion; polling")
                self.takes_next = False
        return self.complete(command_id, status, diagnostics), None

    def _complete(
        self,
        operation: str,
        command_id: str,
        status: str,
        diagnostics: Mapping[str, Any],
        *,
        retry_seconds: float | None = None,
    ) -> tuple[CompleteResult, dict[str, Any] | None]:
        params = {
            "HostCommandIdentifier": command_id,
            "CommandStatus": status,
            "Diagnostics": {"Format": "JSON", "Payload": fit_diagnostics(diagnostics)},
        }
        target = COMMANDS_TARGET
        if operation != "PutHostCommandComplete":
            params["HostIdentifier"] = self.host_identifier
            target = EXTENSIONS_TARGET
        window = self.complete_retry_seconds if retry_seconds is None else retry_seconds
        try:
            response = self._call(
                operation,
                lambda: self._invoke(operation, params, target=target),
                deadline=time.monotonic() + window,
                backoff=self.complete_backoff,
            )
        except Aborted as exc:
            log.warning("%s", exc)
            return CompleteResult.ABANDONED, None
        except CommandServiceError as error:
            if error.retryable:
                log.error("%s; gave up after %.0f s, will resend at the next start", error, window)
                return CompleteResult.ABANDONED, None
            if error.code == "UnknownOperationException" and target == EXTENSIONS_TARGET:
                raise _UnknownOperation(operation) from None
            log.error("%s; the server refused the completion", error)
            return CompleteResult.REJECTED, None
        command = response.get("HostCommand")
        return CompleteResult.STORED, command if isinstance(command, dict) and command else None

    def update(self, command_id: str) -> str | None:
        """PostHostCommandUpdate (heartbeat); the CommandStatus the server answers."""
        response = self._call(
            "PostHostCommandUpdate",
            lambda: self._invoke("PostHostCommandUpdate", {"HostCommandIdentifier": command_id}),
            attempts=2,
        )
        status = response.get("CommandStatus")
        return status if isinstance(status, str) else None

    def put_log(self, command_id: str, offset: int, text: str) -> None:
        """PutHostCommandLog: ``text`` at character ``offset`` of the command's full log."""
        params = {"HostCommandIdentifier": command_id, "Offset": offset, "Log": text}
        self._call(
            "PutHostCommandLog",
            lambda: self._invoke("PutHostCommandLog", params, target=EXTENSIONS_TARGET),
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
        self.bundle_url(path)
        download(
            self.pool,
            self.signer,
            self.pool.base_path + path,
            dest,
            sha256=sha256,
            size=size,
            attempts=self.attempts,
            backoff=self.backoff.delay,
            abort=self.abort,
        )
