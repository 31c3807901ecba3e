"""The agent endpoint: CodeDeploy's host command service (and our extensions) on ``POST /``.

Signed for SigV4 service ``codedeploy-commands`` by an agent user. PollHostCommand is a long
poll: held until a command for the host exists or ``long_poll_seconds`` pass. Use cases that
create commands wake the held polls through ``notify`` (from any thread), and other replicas'
through PostgreSQL NOTIFY. While this replica's LISTEN connection is down, a held poll also
re-checks the database every ``recheck_seconds`` (30 s by default; one read), and when the
connection goes down or comes back every held poll looks once more: notifications sent
meanwhile are lost. A lone server (SQLite) needs none of this: every command is created
in-process.

Idle polls are most of a fleet's traffic, so one costs as little as we can make it: the
signature is checked on the event loop when the caller's key is in memory (no trip to a
thread), the host and whether a command waits are one read transaction, contact is noted in
memory (``store.contacts``), and a poll whose time ran out answers without one more look.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from opendeploy.core.errors import ServiceError
from opendeploy.core.policies import AGENT
from opendeploy.server.api import authenticate_request
from opendeploy.server.auth import Authenticator
from opendeploy.server.protocol import JsonProtocol
from opendeploy.server.service.agent import AgentService, Host
from opendeploy.server.service.context import Caller
from opendeploy.wire import COMMANDS_SERVICE, EXTENSIONS_SERVICE, service_model

__all__ = ["AgentApi", "PollHub"]

log = logging.getLogger(__name__)

T = TypeVar("T")

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
#: How often a held poll re-checks the database when other replicas may create its commands.
REPLICA_RECHECK_SECONDS = 30.0
#: Threads that run polls' database looks (short reads).
POLL_THREADS = 8
#: Threads that run the other agent calls; a completion's thread waits while its
#: deployment's batch runs, and the batch holds the completions waiting (Batches). With the
#: poll threads, 40: as many as a PostgreSQL replica's connection pool.
CALL_THREADS = 32
#: Held polls looked for in one job at most (``_Claims``).
MAX_CLAIMS = 2000
#: Hosts whose last wake-up is remembered (for polls looking in the database meanwhile).
_WOKEN_LIMIT = 10_000
#: How long a host found with nothing pending is answered without a look (unless woken).
QUIET_SECONDS = 300.0
_QUIET_HOSTS_LIMIT = 100_000


class PollHub:
    """Held long polls by host, and the thread-safe way to wake them (a CommandNotifier).

    A poll looks in the database before it waits, and a wake-up for its host may come while it
    looks: ``mark`` before the look and ``woken_since`` after registering the waiter tell it
    to look again. Everything but ``notify``/``wake_local``/``listening`` runs on the event
    loop.

    Quiet hosts: a look that found nothing pending for a host (no command at all that is not
    yet acknowledged) makes the host quiet, and its next polls wait without a look, until a
    wake-up for it or ``QUIET_SECONDS``. A host gets a command only from a decision, which
    wakes it: here directly, from other replicas through LISTEN. So quiet hosts are trusted
    only while every wake-up arrives: always with one server, with replicas only while the
    LISTEN connection is up (``listening``); each change forgets them all. Idle polls are
    most of a fleet's requests, and this spares each its look (a trip to a thread and a
    read).
    """

    def __init__(self, publish: Callable[[Iterable[str]], None] | None = None) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Tells the other replicas (PostgreSQL NOTIFY); None with one server.
        self.publish = publish
        self.closing = False
        self._wakes = itertools.count(1)
        self._last_wake = 0
        #: host -> number of its latest wake-up
        self._woken: dict[str, int] = {}
        #: host -> until when it is quiet (loop time)
        self._quiet: dict[str, float] = {}
        #: Whether every wake-up reaches this replica (see ``listening``).
        self.wakes_complete = True
        self.quiet_seconds = QUIET_SECONDS

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    def notify(self, instance_names: Iterable[str]) -> None:
        """Wake the long polls of these hosts, here and on every other replica."""
        names = tuple(instance_names)
        self.wake_local(names)
        if self.publish is not None:
            self.publish(names)

    def wake_local(self, instance_names: Iterable[str]) -> None:
        """Wake this replica's long polls of these hosts; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake, tuple(instance_names))

    def _wake(self, names: tuple[str, ...]) -> None:
        number = self._last_wake = next(self._wakes)
        if len(self._woken) + len(names) > _WOKEN_LIMIT:
            # Only polls looking in the database right now need these; they are recent.
            recent = number - _WOKEN_LIMIT // 2
            self._woken = {name: n for name, n in self._woken.items() if n > recent}
        quiet = self._quiet
        for name in names:
            self._woken[name] = number
            quiet.pop(name, None)
            for event in self._waiters.get(name, ()):
                event.set()

    def listening(self, up: bool) -> None:
        """The LISTEN connection to the other replicas came up or went down (any thread):
        wake-ups may have been missed, so no host stays quiet, and while it is down no host
        becomes quiet."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.wakes_complete = up
            self._quiet = {}
            return
        loop.call_soon_threadsafe(self._listening, up)

    def _listening(self, up: bool) -> None:
        self.wakes_complete = up
        self._quiet = {}
        # Wake-ups may have been lost: every held poll looks once more.
        for events in self._waiters.values():
            for event in events:
                event.set()

    def is_quiet(self, name: str) -> bool:
        """Whether ``name`` had nothing pending at its last look and was not woken since."""
        until = self._quiet.get(name)
        if until is None:
            return False
        if until > asyncio.get_running_loop().time() and self.wakes_complete:
            return True
        del self._quiet[name]
        return False

    def found_quiet(self, name: str, mark: int) -> None:
        """A look begun at ``mark`` found nothing pending for ``name``."""
        if self.wakes_complete and not self.woken_since(name, mark):
            self._quiet[name] = asyncio.get_running_loop().time() + self.quiet_seconds

    def mark(self) -> int:
        """Where the wake-ups are now; on the event loop, before a look in the database."""
        self._loop = asyncio.get_running_loop()
        return self._last_wake

    def woken_since(self, name: str, mark: int) -> bool:
        """Whether ``name`` was woken after ``mark`` (its look may have missed the work)."""
        return self._woken.get(name, 0) > mark

    def release_all(self) -> None:
        """Shutting down: every held poll answers now (empty), so the server stops at once."""
        self.closing = True
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def waiter(self, name: str) -> Iterator[asyncio.Event]:
        """An event set when ``name`` gets work, registered while the context is open."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._waiters.setdefault(name, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[name]


class _Threads:
    """Daemon threads that run the agent calls' blocking work (database looks and writes).

    Every agent request makes a trip to a thread and back; this is the cheapest such trip we
    have (a C queue there, ``call_soon_threadsafe`` back): Starlette's thread pool (anyio's
    cancel scopes and capacity limiter, a ``queue.Queue`` per worker) and
    ``ThreadPoolExecutor`` (a semaphore per submit) spend more of the event loop's time on
    each. In a fleet benchmark (1,000 agents, AllAtOnce) the trips through Starlette's pool
    were a ninth of the event loop's time.
    """

    def __init__(self, threads: int, name: str) -> None:
        self._threads = threads
        self._name = name
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]
        ] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def run(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """``job()`` in a thread; await the answer on the running loop."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, job))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for index in range(self._threads):
                threading.Thread(
                    target=self._work, name=f"opendeploy-{self._name}-{index}", daemon=True
                ).start()
            self._started = True

    def _work(self) -> None:
        while True:
            loop, future, job = self._jobs.get()
            try:
                outcome: tuple[Any, BaseException | None] = (job(), None)
            except BaseException as error:
                outcome = (None, error)
            # A closed loop raises RuntimeError: nobody waits for this answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, *outcome)


class _Claims:
    """Held polls' looks, made together: every poll woken by one wake-up (a deployment's start
    wakes all its hosts) is looked for in one job, ``claim(hosts)``, in one of ``threads``.

    One job runs at a time; polls woken while it runs wait for the next, which takes them all
    (up to ``MAX_CLAIMS``). So the first commands of a deployment to thousands of hosts are
    handed over in a few transactions, ahead of the completions of the hosts served first,
    instead of one poll at a time behind them.
    """

    def __init__(
        self,
        threads: _Threads,
        claim: Callable[[Sequence[Host]], Sequence[dict[str, Any] | None]],
    ) -> None:
        self._threads = threads
        self._claim = claim
        self._pending: list[tuple[Host, asyncio.Future[dict[str, Any] | None]]] = []
        self._running = False

    def claim(self, host: Host) -> asyncio.Future[dict[str, Any] | None]:
        """The host's next command (handed over) or None, once a job that looked for it ran."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._pending.append((host, answer))
        if not self._running:
            self._running = True
            # After this pass of the loop: the other polls woken with this one join in.
            loop.call_soon(self._start)
        return answer

    def _start(self) -> None:
        # Polls cancelled meanwhile (the server stopping) are not looked for: a command
        # handed over to nobody would wait REDELIVER_AFTER_SECONDS to go out again.
        self._pending = [(host, answer) for host, answer in self._pending if not answer.done()]
        batch = self._pending[:MAX_CLAIMS]
        del self._pending[:MAX_CLAIMS]
        if not batch:
            self._running = False
            return
        hosts = [host for host, _ in batch]
        try:
            job = self._threads.run(lambda: self._claim(hosts))
        except BaseException as error:
            self._finished(batch, error, [])
            return
        job.add_done_callback(lambda done: self._job_done(batch, done))

    def _job_done(
        self,
        batch: list[tuple[Host, asyncio.Future[dict[str, Any] | None]]],
        job: asyncio.Future[Sequence[dict[str, Any] | None]],
    ) -> None:
        error = job.exception()
        answers = job.result() if error is None else []
        if error is None and len(answers) != len(batch):
            error = RuntimeError(f"{len(answers)} claims answered for {len(batch)} polls")
        self._finished(batch, error, answers)

    def _finished(
        self,
        batch: list[tuple[Host, asyncio.Future[dict[str, Any] | None]]],
        error: BaseException | None,
        answers: Sequence[dict[str, Any] | None],
    ) -> None:
        """Settle the batch's polls, then start the next job; never leaves a poll waiting."""
        for index, (_, answer) in enumerate(batch):
            if answer.done():
                continue
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(answers[index])
        if self._pending:
            self._start()
        else:
            self._running = False


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class AgentApi:
    def __init__(
        self,
        service: AgentService,
        authenticator: Authenticator,
        hub: PollHub,
        *,
        long_poll_seconds: float = 45.0,
        recheck_seconds: float | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.hub = hub
        self.long_poll_seconds = long_poll_seconds
        self._lookers = _Threads(POLL_THREADS, "poll")
        self._callers = _Threads(CALL_THREADS, "call")
        self._claims = _Claims(self._lookers, service.claim)
        #: caller ARN -> its host, for polls of quiet hosts (no look: no database read)
        self._quiet_hosts: dict[str, Host] = {}
        #: None: REPLICA_RECHECK_SECONDS with other replicas (``hub.publish`` set), else never.
        self._recheck_seconds = recheck_seconds
        self.protocols = {
            protocol.target_prefix + ".": protocol
            for protocol in (
                JsonProtocol(service_model(COMMANDS_SERVICE)),
                JsonProtocol(service_model(EXTENSIONS_SERVICE)),
            )
        }

    @property
    def recheck_seconds(self) -> float:
        """How often a held poll looks in the database (the long poll itself: never)."""
        if self._recheck_seconds is not None:
            return self._recheck_seconds
        if self.hub.publish is not None and not self.hub.wakes_complete:
            return REPLICA_RECHECK_SECONDS
        return self.long_poll_seconds

    def handles(self, target: str | None) -> bool:
        return target is not None and any(target.startswith(p) for p in self.protocols)

    async def handle(self, request: Request, body: bytes, target: str, request_id: str) -> Response:
        prefix = next(p for p in self.protocols if target.startswith(p))
        protocol = self.protocols[prefix]
        operation = protocol.operation(target[len(prefix) :])
        caller = await authenticate_request(self.authenticator, request, body, AGENT, request_id)
        Authenticator.authorize(caller, AGENT, operation.name)
        params = _json_body(body)
        protocol.validate_input(operation, params)
        result = await self._dispatch(operation.name, caller, params)
        payload = protocol.serialize_output(operation, result)
        return Response(
            json.dumps(payload, separators=(",", ":")),
            media_type=JSON_CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )

    async def _dispatch(self, operation: str, caller: Caller, params: dict[str, Any]) -> Any:
        if operation in ("PollHostCommand", "TakeHostCommand"):
            took_at = self.service.ctx.clock() if operation == "TakeHostCommand" else None
            command = await self._long_poll(caller, params.get("HostIdentifier"), took_at=took_at)
            if command is None:
                return {}
            if operation == "PollHostCommand":
                return {"HostCommand": command}
            taken = self.service.cached_take(caller, params.get("HostIdentifier"), command)
            if taken is not None:
                return taken
            return await self._callers.run(lambda: self._take(caller, params, command))
        # One trip to a thread for the host lookup and the use case together.
        return await self._callers.run(lambda: self._call(operation, caller, params))

    def _take(
        self, caller: Caller, params: dict[str, Any], command: dict[str, Any]
    ) -> dict[str, Any]:
        """TakeHostCommand's answer to a poll that found ``command``: the command with its
        deployment's specification, which the agent would otherwise fetch in a request of its
        own. The command is handed over as by PollHostCommand, not acknowledged: an answer
        that never reaches its agent is handed out again, and the agent's acknowledgement
        still tells it whether the command is to run (a stop or a lost heartbeat meanwhile).
        A specification that cannot be built is left out: the agent asks for it and reports
        the error on the command.
        """
        host = self.service.host(caller, params.get("HostIdentifier"))
        try:
            specification = self.service.specification(host, command["DeploymentExecutionId"])
        except ServiceError as error:
            log.warning(
                "no specification for command %s: %s", command["HostCommandIdentifier"], error
            )
            specification = {}
        return {"HostCommand": command, **specification}

    def _call(self, operation: str, caller: Caller, params: dict[str, Any]) -> Any:
        service = self.service
        # GetDeploymentSpecification names its host too: it must be the caller's, as in a poll.
        host = service.host(caller, params.get("HostIdentifier"))
        command_id = params.get("HostCommandIdentifier")
        if operation == "GetDeploymentSpecification":
            return service.specification(host, params.get("DeploymentExecutionId", ""))
        if operation == "PutHostCommandAcknowledgement":
            return service.acknowledge(host, command_id)
        if operation in ("PutHostCommandComplete", "PutHostCommandCompleteAndTakeNext"):
            return service.complete(
                host,
                command_id,
                params.get("CommandStatus"),
                params.get("Diagnostics"),
                take_next=operation == "PutHostCommandCompleteAndTakeNext",
            )
        if operation == "PostHostCommandUpdate":
            return service.update(host, command_id)
        if operation == "PutHostCommandLog":
            return service.put_log(host, command_id, params["Offset"], params["Log"])
        raise ServiceError("UnknownOperationException", f"{operation} is not served here.")

    async def _long_poll(
        self, caller: Caller, host_identifier: str | None, *, took_at: float | None = None
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.long_poll_seconds
        hub = self.hub
        mark = hub.mark()
        host = self._quiet_hosts.get(caller.arn)
        if host is not None and hub.is_quiet(host.instance.name):
            host = self.service.quiet_host(caller, host_identifier, host)
        else:
            found = await self._lookers.run(
                lambda: self.service.poll(caller, host_identifier, took_at=took_at)
            )
            host = found.host
            if found.command is not None or hub.closing:
                return found.command
            if not found.pending:
                hub.found_quiet(host.instance.name, mark)
                if len(self._quiet_hosts) >= _QUIET_HOSTS_LIMIT:
                    self._quiet_hosts.clear()
                self._quiet_hosts[caller.arn] = host
        if hub.closing:
            return None
        with hub.waiter(host.instance.name) as event:
            if hub.woken_since(host.instance.name, mark):
                event.set()
            while True:
                if not event.is_set():
                    remaining = deadline - loop.time()
                    last = remaining <= self.recheck_seconds
                    if remaining <= 0:
                        return None
                    try:
                        async with asyncio.timeout(remaining if last else self.recheck_seconds):
                            await event.wait()
                    except TimeoutError:
                        if last:
                            # Nothing woke the poll and its time is up (a timer may fire a
                            # little early: no clock comparison here): answer empty without
                            # one more look; the agent polls again at once, and a poll
                            # looks first.
                            return None
                if hub.closing:
                    return None
                event.clear()
                command = await self._claims.claim(host)
                if command is not None:
                    return command


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError(
            "SerializationException", f"The body is not valid JSON: {error}"
        ) from error
    if not isinstance(params, dict):
        raise ServiceError("SerializationException", "The request body must be a JSON object.")
    return params
