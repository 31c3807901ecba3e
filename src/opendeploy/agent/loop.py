"""The agent's main loop: poll, then for each command spec → verify → ack → run → complete.

``Agent.step()`` does one round: journal recovery (until it has gone through), one long poll
(the server holds it up to ~45 s; the next one starts at once), and the handling of the
command it returned, if any. ``run_forever()`` repeats it until stopped. The poll is
OpenDeploy's TakeHostCommand, whose command comes with its specification (step 1 below
without a request), or the stock PollHostCommand on a server without it.

Per command, as the stock agent (agent-protocol §1.3, stock-agent-wire §5-6):

1. GetDeploymentSpecification; ``DeploymentSystem`` must be ``CodeDeploy``; the PKCS7/JSON
   envelope must verify against the pinned signer certificate.
2. PutHostCommandAcknowledgement with ``{"IsCommandNoop": ...}``. The answer decides:
   absent / Pending / InProgress → run; Succeeded → nothing more; Failed → for a no-op,
   Complete(Succeeded, "Succeeded: CompletedNoopCommand"), otherwise nothing more.
3. Journal entry written, command executed while a heartbeat thread sends
   PostHostCommandUpdate every ``heartbeat_interval``, outcome recorded in the journal.
4. One PutHostCommandComplete, retried until the server stores it; journal entry removed.

A deterministic failure before the ack (bad spec, unreadable appspec, a 4xx) is reported with
one Complete(Failed, code 5) and no ack. A transient one (server unreachable after retries) is
not reported at all: the server hands an unacknowledged command out again.

Shutdown is two-stage (``request_stop``): the first request stops polling (an idle agent exits
at once) and lets a running command finish and report; the second kills the running hook's
process group and exits without reporting, leaving the journal entry, so the next start
reports the event as failed with code 7.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, Generic, Protocol, TypeVar

from opendeploy.agent.client import (
    Aborted,
    Backoff,
    CommandServiceError,
    CompleteResult,
    Polled,
)
from opendeploy.agent.config import AgentConfig
from opendeploy.agent.executor import (
    DeploymentSpec,
    Executor,
    ExecutorClient,
    Outcome,
    SpecError,
    failure,
)
from opendeploy.agent.journal import Journal, JournalEntry, recover
from opendeploy.agent.wakeup import Wakeup

__all__ = [
    "NOOP_DIAGNOSTICS",
    "Agent",
    "AgentClient",
    "Step",
    "current_deployment",
]

#: Verified deployment specifications kept, by execution id.
_SPEC_CACHE_SIZE = 16

log = logging.getLogger(__name__)

NOOP_DIAGNOSTICS: Final[Mapping[str, Any]] = {
    "error_code": 0,
    "script_name": "",
    "message": "Succeeded: CompletedNoopCommand",
    "log": "",
}
_T = TypeVar("_T")

_current: list[str | None] = [None]


def current_deployment() -> str | None:
    """The deployment whose command the agent is handling (for log lines), or None."""
    return _current[0]


@contextmanager
def _deployment(deployment_id: str | None) -> Iterator[None]:
    previous = _current[0]
    _current[0] = deployment_id
    try:
        yield
    finally:
        _current[0] = previous


class AgentClient(ExecutorClient, Protocol):
    """What the loop needs from ``CommandClient`` (tests pass a fake)."""

    host_identifier: str
    abort: threading.Event

    def take(self) -> Polled | None: ...

    def get_deployment_specification(self, execution_id: str) -> dict[str, Any]: ...

    def acknowledge(self, command_id: str, *, is_noop: bool) -> str | None: ...

    def complete(
        self,
        command_id: str,
        status: str,
        diagnostics: Mapping[str, Any],
        *,
        retry_seconds: float | None = None,
    ) -> CompleteResult: ...

    def complete_and_take_next(
        self, command_id: str, status: str, diagnostics: Mapping[str, Any]
    ) -> tuple[CompleteResult, dict[str, Any] | None]: ...

    def update(self, command_id: str) -> str | None: ...


class Step(enum.Enum):
    IDLE = "idle"
    """The poll returned no command."""
    COMMAND = "command"
    """A command was handled."""
    ERROR = "error"
    """The poll failed; the agent backed off."""
    STOPPED = "stopped"
    """A stop was requested."""


class _Stopped(Exception):
    pass


class _Background(Generic[_T]):
    """A journal write on a thread of its own; ``result()`` waits for it (None if it raised)."""

    def __init__(self, call: Callable[[], _T]) -> None:
        self._value: _T | None = None

        def run() -> None:
            try:
                self._value = call()
            except Exception:
                log.exception("journal write failed")

        self._thread = threading.Thread(target=run, name="journal-write", daemon=True)
        self._thread.start()

    def result(self) -> _T | None:
        self._thread.join()
        return self._value


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        client: AgentClient,
        executor: Executor | None = None,
        *,
        journal: Journal | None = None,
        poll_backoff: Backoff | None = None,
        min_poll_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.client = client
        self.executor = executor or Executor(config, client)
        self.journal = journal or Journal(config.root_dir)
        self.poll_backoff = poll_backoff or Backoff(base=1.0, cap=60.0)
        self.min_poll_interval = min_poll_interval
        self.poll_errors = 0
        #: Wakes the main thread: a worker's call finished, or a stop was requested.
        self.wakeup = Wakeup()
        self._certificate: Any = None
        self._specs: dict[str, DeploymentSpec] = {}
        self._recovered = False
        self._stopping = False
        self._killed = False
        self._executing = False
        self._hook_note: _Background[None] | None = None

    # -- stopping ----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def killed(self) -> bool:
        return self._killed

    def request_stop(self) -> None:
        """First call: stop polling, finish the running command. Second: kill it and exit.

        Called from the signal handler, in the main thread: the first call only sets a flag
        and writes to the wake-up pipe, so it cannot block on a lock the interrupted main
        thread holds (``threading.Event.set`` could).
        """
        if not self._stopping:
            self._stopping = True
            self.wakeup.notify()
            if self._executing:
                log.warning("stopping after the running command finishes (signal again to kill it)")
            else:
                log.info("stopping")
            return
        if not self._killed:
            self._killed = True
            self.wakeup.notify()
            self.client.abort.set()
            log.warning("stopping now: killing the running hook; the next start reports it")
            self.executor.abort()

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a stop is requested; True if it was."""
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            self.wakeup.clear()
            remaining = deadline - time.monotonic()
            if self._stopping or remaining <= 0:
                return self._stopping
            self.wakeup.wait(remaining)

    def _wait_for(self, call: Callable[[], _T], *, stop_on: Callable[[], bool]) -> _T:
        """``call()`` in a worker thread; raises _Stopped as soon as ``stop_on()`` is true.

        The main thread blocks until the worker or a stop request wakes it: an idle agent
        costs no CPU while its long poll is held.
        """
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()
                self.wakeup.notify()

        worker = threading.Thread(target=run, name="agent-call", daemon=True)
        worker.start()
        while True:
            self.wakeup.clear()
            if done.is_set():
                break
            if stop_on():
                raise _Stopped
            self.wakeup.wait()
        if "error" in box:
            raise box["error"]
        value: _T = box["value"]
        return value

    # -- the loop ----------------------------------------------------------------------------

    def run_forever(self) -> int:
        """Poll and handle commands until stopped; 0 after a clean stop, 2 after a kill."""
        log.info(
            "agent for %s (%s) polling %s",
            self.config.instance_name,
            self.client.host_identifier,
            self.config.endpoint,
        )
        while not self._stopping:
            self.step()
        if not self._killed:
            self.executor.drain_logs(timeout=10)
        return 2 if self._killed else 0

    def step(self) -> Step:
        """Journal recovery if still due, one poll, and the command it returns."""
        if self._stopping:
            return Step.STOPPED
        if not self._recovered:
            try:
                # A stop request must not wait for the completions' retry window.
                self._recovered = self._wait_for(self.recover, stop_on=lambda: self._stopping)
            except _Stopped:
                return Step.STOPPED
            if not self._recovered:
                # An event this agent began is not reported yet: it takes no work until it
                # is, since a take tells the server that no command it acknowledged is running
                # here (``AgentService.poll``).
                return self._back_off("events begun earlier are not reported yet")
        started = time.monotonic()
        try:
            polled = self._wait_for(self.client.take, stop_on=lambda: self._stopping)
        except _Stopped:
            return Step.STOPPED
        except (CommandServiceError, Aborted) as exc:
            return self._back_off(f"poll failed: {exc}")
        self.poll_errors = 0
        if polled is None:
            elapsed = time.monotonic() - started
            if elapsed < self.min_poll_interval:
                # A server that answers at once (no long poll) must not make us spin.
                self._sleep(self.min_poll_interval - elapsed)
            return Step.IDLE
        following: Mapping[str, Any] | None = polled.command
        acknowledged, specification = False, polled.specification
        while following is not None:
            current = following
            try:
                following = self.handle(
                    current, acknowledged=acknowledged, specification=specification
                )
            except Exception:
                log.exception("handling command %s failed", current.get("HostCommandIdentifier"))
                following = None
                # Whatever it journaled is reported before the next take.
                self._recovered = False
            acknowledged, specification = True, None
        return Step.COMMAND

    def _back_off(self, why: str) -> Step:
        """Wait longer after each failed step in a row before the next poll."""
        self.poll_errors += 1
        delay = self.poll_backoff.delay(min(self.poll_errors - 1, 10))
        log.warning("%s (%d in a row); next poll in %.1f s", why, self.poll_errors, delay)
        self._sleep(delay)
        return Step.ERROR

    def recover(self) -> bool:
        """Report the journal's entries (code 7, or their recorded result); True when done."""

        def complete(command_id: str, status: str, diagnostics: dict[str, Any]) -> bool:
            result = self.client.complete(command_id, status, diagnostics)
            return result is not CompleteResult.ABANDONED

        try:
            pending = recover(self.journal, complete)
        except OSError as exc:
            log.error("cannot read the journal in %s: %s", self.journal.directory, exc)
            return False
        return not pending

    # -- one command -------------------------------------------------------------------------

    def handle(
        self,
        command: Mapping[str, Any],
        *,
        acknowledged: bool = False,
        specification: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any] | None:
        """Run one command; the host's next one if the server handed it with the completion.

        ``acknowledged``: the command came with a completion's answer (already acknowledged,
        so no ack is sent and a failure to start it is reported, since the server will not
        hand it out again). ``specification``: GetDeploymentSpecification's answer for it,
        when it came with the command (verified like a fetched one).
        """
        command_id = command.get("HostCommandIdentifier")
        name = command.get("CommandName")
        execution_id = command.get("DeploymentExecutionId")
        host = command.get("HostIdentifier")
        if host != self.client.host_identifier:
            log.error(
                "ignoring a command for host %r: this agent is %r",
                host,
                self.client.host_identifier,
            )
            return None
        if not isinstance(command_id, str) or not command_id:
            log.error("ignoring a command without HostCommandIdentifier: %r", dict(command))
            return None
        if not isinstance(name, str) or not name or not isinstance(execution_id, str):
            log.error("command %s has no CommandName or DeploymentExecutionId", command_id)
            self._complete(command_id, failure("the command has no name or execution id"))
            return None
        with _deployment(execution_id.rpartition("deployment/")[2] or None):
            spec = self._specification(
                command_id, name, execution_id, acknowledged=acknowledged, given=specification
            )
            if spec is None:
                return None
            with _deployment(spec.deployment_id):
                return self._acknowledge_and_run(command_id, name, spec, acknowledged=acknowledged)

    def _specification(
        self,
        command_id: str,
        name: str,
        execution_id: str,
        *,
        acknowledged: bool = False,
        given: Mapping[str, Any] | None = None,
    ) -> DeploymentSpec | None:
        log.info("%s: received (%s)", name, command_id)
        cached = self._specs.get(execution_id)
        if cached is not None:
            return cached
        if given is not None:
            response = given
        else:
            try:
                response = self.client.get_deployment_specification(execution_id)
            except Aborted:
                return None
            except CommandServiceError as exc:
                if exc.retryable and not acknowledged:
                    log.error(
                        "%s: cannot get the specification (%s); the server will resend it",
                        name,
                        exc,
                    )
                    return None
                self._complete(command_id, failure(exc.server_message))
                return None
        system = response.get("DeploymentSystem")
        if system != "CodeDeploy":
            self._complete(
                command_id, failure(f"Deployment System mismatch: CodeDeploy != {system}")
            )
            return None
        envelope = (response.get("DeploymentSpecification") or {}).get("GenericEnvelope")
        # Imported at the first command: an idle agent does without X.509 and CMS code.
        from opendeploy.agent.envelope import EnvelopeError, load_certificate, verify_envelope

        try:
            if self._certificate is None:
                self._certificate = load_certificate(self.config.spec_signer_certificate)
            spec = DeploymentSpec.parse(verify_envelope(envelope, self._certificate))
        except (EnvelopeError, SpecError) as exc:
            log.error("%s: refusing the deployment specification: %s", name, exc)
            self._complete(command_id, failure(f"Invalid deployment specification: {exc}"))
            return None
        # A deployment's specification never changes: its next commands reuse this one.
        if len(self._specs) >= _SPEC_CACHE_SIZE:
            self._specs.pop(next(iter(self._specs)))
        self._specs[execution_id] = spec
        return spec

    def _acknowledge_and_run(
        self, command_id: str, name: str, spec: DeploymentSpec, *, acknowledged: bool = False
    ) -> Mapping[str, Any] | None:
        """Acknowledge (unless ``acknowledged``), run and report the command; the host's next
        command if the server handed it with the completion."""
        if not acknowledged and not self._acknowledge(command_id, name, spec):
            return None
        self._wait_for_hook_notes()
        try:
            entry = self.journal.begin(spec.deployment_id, command_id, name)
        except OSError as exc:
            log.error("%s: cannot write the journal: %s", name, exc)
            self._complete(command_id, failure(f"The agent cannot write its journal: {exc}"))
            return None
        outcome = self._execute(command_id, name, spec, entry)
        if outcome is None:
            log.warning("%s: killed; the next start reports it as failed", name)
            return None
        return self._report(command_id, entry, outcome)

    def _acknowledge(self, command_id: str, name: str, spec: DeploymentSpec) -> bool:
        """PutHostCommandAcknowledgement; True when the command is to run."""
        try:
            noop = self.executor.is_noop(name, spec)
        except Exception as exc:
            log.error("%s: %s", name, exc)
            self._complete(command_id, failure(str(exc)))
            return False
        try:
            status = self.client.acknowledge(command_id, is_noop=noop)
        except Aborted:
            return False
        except CommandServiceError as exc:
            if exc.retryable:
                log.error("%s: cannot acknowledge (%s); the server will resend it", name, exc)
                return False
            self._complete(command_id, failure(exc.server_message))
            return False
        if status == "Succeeded":
            log.info("%s: the server says it already succeeded; nothing to do", name)
            return False
        if status == "Failed":
            if noop:
                self._complete(command_id, Outcome(True, NOOP_DIAGNOSTICS))
            else:
                log.warning("%s: the server says it failed already; not running it", name)
            return False
        return True

    def _report(
        self, command_id: str, entry: JournalEntry, outcome: Outcome
    ) -> Mapping[str, Any] | None:
        """Journal the outcome while Complete is sent; forget the command once it is stored.

        The journal write (an fsync) overlaps the request instead of delaying it. An agent
        that dies before the write lands leaves the started-entry, which the next start reports
        as code 7, as one that died just before the write always did; if the completion got
        through first, the server keeps it (the first completion wins).
        """
        journaled = _Background(lambda: self._journal_outcome(entry, outcome))
        if self._stopping:
            # Stopping: take no more work (a command handed with the answer would have to run).
            stored, following = self._complete(command_id, outcome), None
        else:
            stored, following = self._complete_taking_next(command_id, outcome)
        finished = journaled.result()
        if stored:
            self.journal.clear(finished or entry)
        else:
            # Reported from the journal before the next take (``step``).
            self._recovered = False
        return following

    def _journal_outcome(self, entry: JournalEntry, outcome: Outcome) -> JournalEntry | None:
        """Record the outcome, after the hook notes still being written; None if it failed."""
        self._wait_for_hook_notes()
        try:
            return self.journal.finish(entry, outcome.status, outcome.diagnostics)
        except OSError as exc:
            log.error("cannot journal the outcome (a restart would report code 7): %s", exc)
            return None

    def _note_hook(self, entry: JournalEntry, pid: int) -> None:
        """Journal the running hook's process group, for a restarted agent to stop.

        In the background: the hook already runs, and waiting for the fsync would only delay
        reading its output. Notes are written in order, all before the outcome.
        """
        previous = self._hook_note

        def write() -> None:
            if previous is not None:
                previous.result()
            try:
                self.journal.note_hook(entry, pid)
            except OSError as exc:
                log.warning("cannot journal the hook's process group: %s", exc)

        self._hook_note = _Background(write)

    def _wait_for_hook_notes(self) -> None:
        note, self._hook_note = self._hook_note, None
        if note is not None:
            note.result()

    def _execute(
        self, command_id: str, name: str, spec: DeploymentSpec, entry: JournalEntry
    ) -> Outcome | None:
        """Run the command with a heartbeat; None if killed by a second stop request."""
        done = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(command_id, done), name="heartbeat", daemon=True
        )
        heartbeat.start()
        self._executing = True
        started = time.monotonic()
        try:
            outcome = self._wait_for(
                lambda: self.executor.execute(
                    name,
                    spec,
                    host_command_id=command_id,
                    on_hook_start=lambda pid: self._note_hook(entry, pid),
                ),
                stop_on=lambda: self._killed,
            )
        except _Stopped:
            return None
        finally:
            self._executing = False
            done.set()
            heartbeat.join(timeout=5)
        if self._killed:
            return None
        log.info("%s: %s in %.1f s", name, outcome.status, time.monotonic() - started)
        return outcome

    def _heartbeat(self, command_id: str, done: threading.Event) -> None:
        while not done.wait(self.config.heartbeat_interval):
            try:
                self.client.update(command_id)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _complete(self, command_id: str, outcome: Outcome) -> bool:
        """Send Complete; True when the server has it (or refused it for good)."""
        result = self.client.complete(command_id, outcome.status, outcome.diagnostics)
        return self._reported(result, outcome)

    def _complete_taking_next(
        self, command_id: str, outcome: Outcome
    ) -> tuple[bool, Mapping[str, Any] | None]:
        """Complete, asking for the host's next command; as ``_complete``, and that command."""
        result, following = self.client.complete_and_take_next(
            command_id, outcome.status, outcome.diagnostics
        )
        return self._reported(result, outcome), following

    @staticmethod
    def _reported(result: CompleteResult, outcome: Outcome) -> bool:
        if result is CompleteResult.STORED:
            log.info("reported %s (code %s)", outcome.status, outcome.diagnostics.get("error_code"))
        return result is not CompleteResult.ABANDONED
