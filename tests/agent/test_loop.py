"""The agent loop against a fake command service, and the real client against a stub server."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from opendeploy.agent.client import (
    Backoff,
    CommandClient,
    CommandServiceError,
    CompleteResult,
    Polled,
)
from opendeploy.agent.config import AgentConfig
from opendeploy.agent.executor import SUCCESS_DIAGNOSTICS, DeploymentSpec, Executor, Outcome
from opendeploy.agent.journal import Journal
from opendeploy.agent.loop import NOOP_DIAGNOSTICS, Agent, Step

HOST = "arn:aws:iam::000000000000:user/opendeploy-agent-web-1"
GROUP = "0f1e2d3c-4b5a-6978-8899-aabbccddeeff"
SECRET = "agent-secret-key-0000000000000000000000"
FAST = Backoff(base=0.001, cap=0.002)


def _signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opendeploy-spec-signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


KEY, CERT = _signer()


def sign(
    document: dict[str, Any], key: rsa.RSAPrivateKey = KEY, cert: x509.Certificate = CERT
) -> str:
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(json.dumps(document).encode())
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
        .decode()
    )


def spec_document(deployment_id: str = "d-LOOP00001") -> dict[str, Any]:
    return {
        "DeploymentId": deployment_id,
        "DeploymentGroupId": GROUP,
        "DeploymentGroupName": "web",
        "ApplicationName": "shop",
        "DeploymentCreator": "user",
        "DeploymentType": "IN_PLACE",
        "AgentActionOverrides": {"AgentOverrides": {"FileExistsBehavior": "DISALLOW"}},
    }


def host_command(
    name: str, command_id: str = "hc-1", deployment_id: str = "d-LOOP00001"
) -> dict[str, Any]:
    return {
        "HostCommandIdentifier": command_id,
        "HostIdentifier": HOST,
        "DeploymentExecutionId": f"CodeDeploy/us-east-1/000000000000/arn:aws:sds:us-east-1:"
        f"000000000000:deployment/{deployment_id}",
        "CommandName": name,
        "Nonce": 1,
    }


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        endpoint="http://127.0.0.1:1",
        region="us-east-1",
        instance_name="web-1",
        host_identifier=HOST,
        access_key_id="AKIAAGENT",
        secret_access_key=SECRET,
        root_dir=tmp_path / "root",
        spec_signer_certificate=CERT.public_bytes(serialization.Encoding.PEM).decode(),
        destination_root=tmp_path / "dest",
        heartbeat_interval=0.05,
    )


class FakeClient:
    """Records every call in order; answers from queues."""

    def __init__(self) -> None:
        self.host_identifier = HOST
        self.abort = threading.Event()
        self.calls: list[tuple[Any, ...]] = []
        self.polls: list[Any] = []
        self.spec_answer: Any = None
        self.ack_answer: Any = "InProgress"
        self.complete_answers: list[CompleteResult] = []
        #: Commands handed with completions that ask for the next one, in order.
        self.next_commands: list[dict[str, Any] | None] = []
        #: For each completion sent, whether it asked for the next command.
        self.took_next: list[bool] = []
        self.updates = 0
        #: Polls answer as TakeHostCommand does: with ``taken_spec``.
        self.takes = False
        self.taken_spec: dict[str, Any] | Literal[False] | None = None

    def poll(self) -> dict[str, Any] | None:
        self.calls.append(("poll",))
        answer = self.polls.pop(0) if self.polls else None
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()  # type: ignore[no-any-return]
        return answer  # type: ignore[no-any-return]

    def take(self) -> Polled | None:
        """``poll``'s command, as the stock service hands it; with ``takes``, with
        ``taken_spec`` (the default specification when it is None, none when False)."""
        command = self.poll()
        if command is None:
            return None
        if not self.takes:
            return Polled(command)
        given = self.taken_spec
        if given is None:
            given = self.specification()
        return Polled(command, given or None)

    def get_deployment_specification(self, execution_id: str) -> dict[str, Any]:
        self.calls.append(("spec", execution_id))
        if callable(self.spec_answer):
            return self.spec_answer(execution_id)  # type: ignore[no-any-return]
        if isinstance(self.spec_answer, BaseException):
            raise self.spec_answer
        if self.spec_answer is not None:
            return self.spec_answer  # type: ignore[no-any-return]
        return self.specification()

    @staticmethod
    def specification() -> dict[str, Any]:
        return {
            "DeploymentSystem": "CodeDeploy",
            "DeploymentSpecification": {
                "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": sign(spec_document())}
            },
        }

    def acknowledge(self, command_id: str, *, is_noop: bool) -> str | None:
        self.calls.append(("ack", command_id, is_noop))
        if isinstance(self.ack_answer, BaseException):
            raise self.ack_answer
        return self.ack_answer  # type: ignore[no-any-return]

    def complete(
        self, command_id: str, status: str, diagnostics: Any, *, retry_seconds: float | None = None
    ) -> CompleteResult:
        self.calls.append(("complete", command_id, status, dict(diagnostics)))
        self.took_next.append(False)
        return self.complete_answers.pop(0) if self.complete_answers else CompleteResult.STORED

    def complete_and_take_next(
        self, command_id: str, status: str, diagnostics: Any
    ) -> tuple[CompleteResult, dict[str, Any] | None]:
        result = self.complete(command_id, status, diagnostics)
        self.took_next[-1] = True
        following = self.next_commands.pop(0) if self.next_commands else None
        return result, following if result is CompleteResult.STORED else None

    def update(self, command_id: str) -> str | None:
        self.updates += 1
        return "InProgress"

    def put_log(self, command_id: str, offset: int, text: str) -> None:
        self.calls.append(("log", command_id, offset))

    def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None:
        raise AssertionError("no downloads in these tests")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def completes(self) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == "complete"]


class FakeExecutor:
    def __init__(self, journal_dir: Path, *, noop: bool = False) -> None:
        self.noop = noop
        self.executed: list[str] = []
        self.journal_seen: list[bool] = []
        self.outcome = Outcome(True, SUCCESS_DIAGNOSTICS)
        self.delay = 0.0
        self.block: threading.Event | None = None
        self.aborted = False
        self.journal_dir = journal_dir

    def is_noop(self, name: str, spec: DeploymentSpec) -> bool:
        return self.noop

    def execute(
        self,
        name: str,
        spec: DeploymentSpec,
        *,
        host_command_id: str,
        on_hook_start: Callable[[int], None] | None = None,
    ) -> Outcome:
        self.executed.append(name)
        self.journal_seen.append((self.journal_dir / spec.deployment_id).exists())
        if self.delay:
            time.sleep(self.delay)
        if self.block is not None:
            self.block.wait(10)
        return self.outcome

    def drain_logs(self, timeout: float | None = None) -> None:
        self.drained = True

    def abort(self) -> None:
        self.aborted = True


def _error(retryable: bool, message: str = "boom") -> CommandServiceError:
    return CommandServiceError(
        "Op", message, code="X", status=500 if retryable else 400, retryable=retryable
    )


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def executor(config: AgentConfig) -> FakeExecutor:
    return FakeExecutor(config.root_dir / "ongoing-deployment")


def make_agent(config: AgentConfig, client: FakeClient, executor: Any = None) -> Agent:
    return Agent(config, client, executor, poll_backoff=FAST, min_poll_interval=0)  # type: ignore[arg-type]


# -- the per-command sequence --------------------------------------------------------------


def test_one_command_goes_spec_ack_execute_complete(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("AfterInstall")]
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.COMMAND
    assert client.names() == ["poll", "spec", "ack", "complete"]
    assert client.calls[1][1].endswith("deployment/d-LOOP00001")
    assert client.calls[2] == ("ack", "hc-1", False)
    assert client.completes() == [("hc-1", "Succeeded", dict(SUCCESS_DIAGNOSTICS))]
    assert executor.executed == ["AfterInstall"]
    assert executor.journal_seen == [True]  # written before execution...
    assert Journal(config.root_dir).entries() == []  # ...and removed after Complete


def test_a_command_handed_with_the_completion_runs_without_poll_spec_or_ack(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("BeforeInstall")]
    client.next_commands = [host_command("AfterInstall", "hc-2"), None]
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.COMMAND
    assert client.names() == ["poll", "spec", "ack", "complete", "complete"]
    assert [c[0] for c in client.completes()] == ["hc-1", "hc-2"]
    assert client.took_next == [True, True]
    assert executor.executed == ["BeforeInstall", "AfterInstall"]
    assert executor.journal_seen == [True, True], "journaled before it runs, as any command"
    assert Journal(config.root_dir).entries() == []


def test_a_handed_command_of_another_deployment_fetches_its_spec_and_a_failure_is_reported(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("BeforeInstall")]
    client.next_commands = [host_command("AfterInstall", "hc-2", deployment_id="d-OTHER0001")]

    def spec_answer(execution_id: str) -> dict[str, Any]:
        if execution_id.endswith("d-OTHER0001"):
            raise _error(retryable=True)
        return {
            "DeploymentSystem": "CodeDeploy",
            "DeploymentSpecification": {
                "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": sign(spec_document())}
            },
        }

    client.spec_answer = spec_answer
    make_agent(config, client, executor).step()
    assert client.names() == ["poll", "spec", "ack", "complete", "spec", "complete"]
    assert client.completes()[1][:2] == ("hc-2", "Failed"), (
        "the server will not hand an acknowledged command out again: say it failed"
    )
    assert executor.executed == ["BeforeInstall"]


def test_a_command_taken_with_its_spec_runs_without_a_spec_fetch(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    """TakeHostCommand's answer: the command with its verified specification, acknowledged
    as any polled command (the answer says whether it is still to run)."""
    client.takes = True
    client.polls = [host_command("ApplicationStop")]
    client.next_commands = [host_command("DownloadBundle", "hc-2"), None]
    make_agent(config, client, executor).step()
    assert client.names() == ["poll", "ack", "complete", "complete"]
    assert executor.executed == ["ApplicationStop", "DownloadBundle"]
    assert executor.journal_seen == [True, True]


def test_a_command_taken_without_its_spec_fetches_it(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.takes, client.taken_spec = True, False
    client.polls = [host_command("ApplicationStop")]
    make_agent(config, client, executor).step()
    assert client.names() == ["poll", "spec", "ack", "complete"]
    assert executor.executed == ["ApplicationStop"]


def test_a_taken_command_whose_spec_does_not_verify_fails_without_running(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.takes = True
    client.taken_spec = {
        "DeploymentSystem": "CodeDeploy",
        "DeploymentSpecification": {
            "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": "-----BEGIN PKCS7-----"}
        },
    }
    client.polls = [host_command("ApplicationStop")]
    make_agent(config, client, executor).step()
    assert client.names() == ["poll", "complete"]
    [(command_id, status, diagnostics)] = client.completes()
    assert (command_id, status, diagnostics["error_code"]) == ("hc-1", "Failed", 5)
    assert "Invalid deployment specification" in diagnostics["message"]
    assert executor.executed == []


def test_a_stopping_agent_takes_no_next_command(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    executor.block = threading.Event()
    client.polls = [host_command("BeforeInstall")]
    client.next_commands = [host_command("AfterInstall", "hc-2")]
    agent = make_agent(config, client, executor)
    runner = threading.Thread(target=agent.run_forever)
    runner.start()
    _wait(lambda: executor.executed)
    agent.request_stop()
    executor.block.set()
    runner.join(5)
    assert client.took_next == [False]
    assert executor.executed == ["BeforeInstall"]


@pytest.mark.parametrize("status", [None, "Pending", "InProgress"])
def test_ack_answers_that_mean_go_ahead(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor, status: str | None
) -> None:
    client.polls = [host_command("AfterInstall")]
    client.ack_answer = status
    make_agent(config, client, executor).step()
    assert executor.executed == ["AfterInstall"]
    assert [c[1] for c in client.completes()] == ["Succeeded"]


def test_ack_answered_succeeded_stops_silently(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("AfterInstall")]
    client.ack_answer = "Succeeded"
    make_agent(config, client, executor).step()
    assert executor.executed == []
    assert client.completes() == []


@pytest.mark.parametrize("noop", [True, False])
def test_ack_answered_failed(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor, noop: bool
) -> None:
    client.polls = [host_command("ValidateService")]
    client.ack_answer = "Failed"
    executor.noop = noop
    make_agent(config, client, executor).step()
    assert executor.executed == []
    if noop:
        assert client.completes() == [("hc-1", "Succeeded", dict(NOOP_DIAGNOSTICS))]
        assert NOOP_DIAGNOSTICS["message"] == "Succeeded: CompletedNoopCommand"
    else:
        assert client.completes() == []
    assert Journal(config.root_dir).entries() == []


def test_noop_commands_are_acked_as_noop_and_complete(
    config: AgentConfig, client: FakeClient, tmp_path: Path
) -> None:
    client.polls = [host_command("ApplicationStop")]
    agent = make_agent(config, client, Executor(config, client))
    agent.step()
    assert client.calls[2] == ("ack", "hc-1", True)
    assert client.completes() == [("hc-1", "Succeeded", dict(SUCCESS_DIAGNOSTICS))]


def test_an_unknown_command_is_acked_as_noop_then_fails_with_code_5(
    config: AgentConfig, client: FakeClient
) -> None:
    client.polls = [host_command("FooBar")]
    make_agent(config, client, Executor(config, client)).step()
    assert client.names() == ["poll", "spec", "ack", "complete"]
    assert client.calls[2] == ("ack", "hc-1", True)
    assert client.completes() == [
        (
            "hc-1",
            "Failed",
            {
                "error_code": 5,
                "script_name": "",
                "message": "Unsupported command type: FooBar.",
                "log": "",
            },
        )
    ]


def test_a_noop_check_that_fails_reports_once_without_an_ack(
    config: AgentConfig, client: FakeClient
) -> None:
    client.polls = [host_command("BeforeInstall")]  # no DownloadBundle ran: no appspec
    make_agent(config, client, Executor(config, client)).step()
    assert client.names() == ["poll", "spec", "complete"]
    [(command_id, status, diagnostics)] = client.completes()
    assert (command_id, status, diagnostics["error_code"]) == ("hc-1", "Failed", 5)
    assert "not unpacked" in diagnostics["message"]


def test_a_spec_signed_by_someone_else_is_refused(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    other_key, other_cert = _signer()
    client.polls = [host_command("AfterInstall")]
    client.spec_answer = {
        "DeploymentSystem": "CodeDeploy",
        "DeploymentSpecification": {
            "GenericEnvelope": {
                "Format": "PKCS7/JSON",
                "Payload": sign(spec_document(), other_key, other_cert),
            }
        },
    }
    make_agent(config, client, executor).step()
    assert client.names() == ["poll", "spec", "complete"]
    [(_, status, diagnostics)] = client.completes()
    assert status == "Failed" and diagnostics["error_code"] == 5
    assert "pinned" in diagnostics["message"]
    assert executor.executed == []


def test_a_deployment_system_mismatch_is_refused(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("AfterInstall")]
    client.spec_answer = {"DeploymentSystem": "NotCodeDeploy"}
    make_agent(config, client, executor).step()
    [(_, status, diagnostics)] = client.completes()
    assert status == "Failed"
    assert diagnostics["message"] == "Deployment System mismatch: CodeDeploy != NotCodeDeploy"
    assert "ack" not in client.names()


@pytest.mark.parametrize("where", ["spec", "ack"])
def test_a_refused_spec_or_ack_fails_the_command_but_a_transient_error_does_not(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor, where: str
) -> None:
    client.polls = [host_command("AfterInstall"), host_command("AfterInstall", "hc-2")]
    agent = make_agent(config, client, executor)
    setattr(client, f"{where}_answer", _error(retryable=False, message="no such execution"))
    agent.step()
    assert client.completes() == [
        (
            "hc-1",
            "Failed",
            {"error_code": 5, "script_name": "", "message": "no such execution", "log": ""},
        )
    ]
    setattr(client, f"{where}_answer", _error(retryable=True))
    agent.step()
    assert len(client.completes()) == 1  # the server will hand hc-2 out again
    assert executor.executed == []


def test_a_command_for_another_host_is_ignored(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    command = host_command("AfterInstall")
    command["HostIdentifier"] = "arn:aws:iam::000000000000:user/other"
    client.polls = [command]
    make_agent(config, client, executor).step()
    assert client.names() == ["poll"]


def test_a_failed_command_reports_its_diagnostics_once(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    failure = {"error_code": 4, "script_name": "s.sh", "message": "exit 1", "log": "[stdout]x\n"}
    executor.outcome = Outcome(False, failure)
    client.polls = [host_command("AfterInstall")]
    make_agent(config, client, executor).step()
    assert client.completes() == [("hc-1", "Failed", failure)]  # no generic code-5 duplicate


# -- journal recovery ----------------------------------------------------------------------


def test_recovery_reports_code_7_before_polling_and_never_reruns(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    Journal(config.root_dir).begin("d-CRASH0001", "hc-crashed", "AfterInstall")
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.IDLE
    assert client.names() == ["complete", "poll"]
    assert client.completes() == [
        (
            "hc-crashed",
            "Failed",
            {
                "error_code": 7,
                "script_name": "",
                "message": "Failed: Failing in-progress lifecycle event after an agent restart.",
                "log": "",
            },
        )
    ]
    assert executor.executed == []
    assert Journal(config.root_dir).entries() == []
    agent.step()
    assert len(client.completes()) == 1  # recovery runs once


def test_recovery_is_retried_until_the_completion_gets_through(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    Journal(config.root_dir).begin("d-CRASH0002", "hc-crashed", "AfterInstall")
    client.complete_answers = [CompleteResult.ABANDONED]
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.ERROR
    assert len(Journal(config.root_dir).entries()) == 1
    assert client.names() == ["complete"], "no poll while a begun event is unreported"
    agent.step()
    assert Journal(config.root_dir).entries() == []
    assert [c[0] for c in client.completes()] == ["hc-crashed", "hc-crashed"]
    assert client.names() == ["complete", "complete", "poll"]


def test_a_completion_abandoned_while_running_is_resent_before_the_next_poll(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    """The server keeps the event acknowledged until it hears the outcome; a take would tell
    it the agent lost the event, so the outcome goes first, from the journal."""
    client.polls = [host_command("Install")]
    client.complete_answers = [CompleteResult.ABANDONED]
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.COMMAND
    assert len(Journal(config.root_dir).entries()) == 1
    assert agent.step() is Step.IDLE
    assert client.names()[-2:] == ["complete", "poll"]
    assert client.completes() == [("hc-1", "Succeeded", dict(SUCCESS_DIAGNOSTICS))] * 2
    assert Journal(config.root_dir).entries() == []
    assert executor.executed == ["Install"]


def test_a_success_whose_complete_was_abandoned_is_resent_as_a_success(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [host_command("Install")]
    client.complete_answers = [CompleteResult.ABANDONED]
    make_agent(config, client, executor).step()
    assert len(Journal(config.root_dir).entries()) == 1
    restarted = FakeClient()
    make_agent(config, restarted, executor).step()
    assert restarted.completes() == [("hc-1", "Succeeded", dict(SUCCESS_DIAGNOSTICS))]
    assert Journal(config.root_dir).entries() == []


# -- polling, heartbeat, stopping ----------------------------------------------------------


def test_poll_errors_back_off_and_recover(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [_error(True), _error(False), None]
    agent = make_agent(config, client, executor)
    assert agent.step() is Step.ERROR
    assert agent.step() is Step.ERROR
    assert agent.poll_errors == 2
    assert agent.step() is Step.IDLE
    assert agent.poll_errors == 0


def test_an_instant_empty_poll_does_not_spin(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    agent = Agent(config, client, executor, min_poll_interval=0.2)  # type: ignore[arg-type]
    started = time.monotonic()
    agent.step()
    agent.step()
    assert time.monotonic() - started >= 0.38


def test_heartbeats_while_a_command_runs_and_stop_after(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    executor.delay = 0.4
    client.polls = [host_command("AfterInstall")]
    make_agent(config, client, executor).step()
    beats = client.updates
    assert beats >= 3
    time.sleep(0.2)
    assert client.updates == beats


def test_first_stop_lets_the_running_command_finish_and_report(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    executor.block = threading.Event()
    client.polls = [host_command("AfterInstall")]
    agent = make_agent(config, client, executor)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(agent.run_forever()))
    runner.start()
    _wait(lambda: executor.executed)
    agent.request_stop()
    time.sleep(0.1)
    assert runner.is_alive()  # still running the command
    executor.block.set()
    runner.join(5)
    assert result == [0]
    assert client.completes() == [("hc-1", "Succeeded", dict(SUCCESS_DIAGNOSTICS))]
    assert client.names().count("poll") == 1
    assert Journal(config.root_dir).entries() == []


def test_second_stop_kills_the_command_and_leaves_the_journal(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    executor.block = threading.Event()
    client.polls = [host_command("AfterInstall")]
    agent = make_agent(config, client, executor)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(agent.run_forever()))
    runner.start()
    _wait(lambda: executor.executed)
    agent.request_stop()
    agent.request_stop()
    runner.join(2)
    assert result == [2]
    assert executor.aborted and client.abort.is_set()
    assert client.completes() == []
    assert [e.host_command_id for e in Journal(config.root_dir).entries()] == ["hc-1"]
    executor.block.set()


def test_stopping_an_idle_agent_does_not_wait_for_the_long_poll(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    client.polls = [lambda: time.sleep(5)]
    exit_code, took = _stop_once_busy(make_agent(config, client, executor), client)
    assert exit_code == 0
    assert took < 1


def _stop_once_busy(agent: Agent, client: FakeClient) -> tuple[int | None, float]:
    """Run the agent until its first call to the server, then ask it to stop: its exit code
    (None if it did not exit within 2 s) and how long it took to stop."""
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(agent.run_forever()))
    runner.start()
    _wait(lambda: client.calls)
    started = time.monotonic()
    agent.request_stop()
    runner.join(2)
    return (result[0] if result else None), time.monotonic() - started


def test_stopping_does_not_wait_for_the_report_of_an_earlier_event(
    config: AgentConfig, client: FakeClient, executor: FakeExecutor
) -> None:
    """Reporting the journal retries for as long as the completion window; a first stop
    request ends the agent at once all the same (the entry is reported at the next start)."""
    Journal(config.root_dir).begin("d-CRASH0003", "hc-crashed", "AfterInstall")
    release = threading.Event()

    def unreachable(*args: Any, **kwargs: Any) -> CompleteResult:
        client.calls.append(("complete",))
        release.wait(10)
        return CompleteResult.ABANDONED

    client.complete = unreachable  # type: ignore[method-assign]
    exit_code, took = _stop_once_busy(make_agent(config, client, executor), client)
    release.set()
    assert exit_code == 0
    assert took < 1
    assert client.names() == ["complete"], "no poll"
    assert len(Journal(config.root_dir).entries()) == 1


def _wait(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.01)


# -- the real client against a stub server -------------------------------------------------


class StubServer:
    """Answers scripted responses and checks every request's SigV4 signature."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self, body: bytes) -> None:
                from opendeploy.server.sigv4 import verify_request

                signed = verify_request(
                    method=self.command,
                    path=self.path,
                    query="",
                    headers=dict(self.headers.items()),
                    body=body,
                    secret_for=lambda key: SECRET if key == "AKIAAGENT" else None,
                    now=dt.datetime.now(dt.UTC),
                    services={"codedeploy-commands"},
                )
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body) if body else None,
                        "signed": signed,
                    }
                )

            def _answer(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _scripted(self) -> bool:
                action = stub.script.pop(0) if stub.script else None
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return True
                if isinstance(action, dict):
                    self._answer(200, json.dumps(action).encode())
                    return True
                if isinstance(action, tuple):
                    status, error_type = action
                    self._answer(status, json.dumps({"__type": error_type}).encode())
                    return True
                if isinstance(action, int):
                    self._answer(
                        action,
                        json.dumps(
                            {
                                "__type": "ServerException" if action >= 500 else "ClientException",
                                "message": f"injected {action}",
                            }
                        ).encode(),
                    )
                    return True
                return False

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                if not self._scripted():
                    self._answer(200, b"{}")

            def do_GET(self) -> None:
                self._record(b"")
                if self._scripted():
                    return
                data = stub.files[self.path]
                wanted = self.headers.get("Range")
                if wanted:
                    first = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self._answer(
                        206,
                        data[first:],
                        {"Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}"},
                    )
                else:
                    self._answer(200, data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def targets(self) -> list[str]:
        return [r["headers"].get("X-Amz-Target", "") for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def real_client(config: AgentConfig, stub: StubServer) -> Iterator[CommandClient]:
    from dataclasses import replace

    client = CommandClient(
        replace(config, endpoint=stub.endpoint, poll_read_timeout=5),
        backoff=FAST,
        complete_backoff=FAST,
    )
    yield client
    client.close()


def test_complete_is_retried_through_5xx_and_dropped_connections_and_stays_a_success(
    real_client: CommandClient, stub: StubServer
) -> None:
    stub.script = [500, "drop", 503, 500]
    result = real_client.complete("hc-1", "Succeeded", SUCCESS_DIAGNOSTICS)
    assert result is CompleteResult.STORED
    assert len(stub.requests) == 5
    for request in stub.requests:
        assert request["headers"]["X-Amz-Target"] == (
            "CodeDeployCommandService_v20141006.PutHostCommandComplete"
        )
        assert request["body"]["CommandStatus"] == "Succeeded"
        assert json.loads(request["body"]["Diagnostics"]["Payload"]) == SUCCESS_DIAGNOSTICS
        assert request["signed"].service == "codedeploy-commands"
        assert request["headers"]["X-Amz-Codedeploy-Agent-Version"].startswith("OPENDEPLOY_")
        assert SECRET not in json.dumps(request["headers"])


def test_complete_refused_with_a_4xx_is_not_retried(
    real_client: CommandClient, stub: StubServer
) -> None:
    stub.script = [400]
    assert real_client.complete("hc-1", "Failed", {"error_code": 4}) is CompleteResult.REJECTED
    assert len(stub.requests) == 1


def test_complete_gives_up_after_its_window(real_client: CommandClient, stub: StubServer) -> None:
    stub.script = [500] * 1000
    started = time.monotonic()
    result = real_client.complete("hc-1", "Succeeded", SUCCESS_DIAGNOSTICS, retry_seconds=0.3)
    assert result is CompleteResult.ABANDONED
    assert time.monotonic() - started < 2
    assert len(stub.requests) > 3


def test_other_calls_retry_5xx_but_not_4xx(real_client: CommandClient, stub: StubServer) -> None:
    stub.script = [500, 500]
    assert real_client.acknowledge("hc-1", is_noop=True) is None
    assert len(stub.requests) == 3
    assert json.loads(stub.requests[-1]["body"]["Diagnostics"]["Payload"]) == {
        "IsCommandNoop": True
    }
    stub.script = [400]
    with pytest.raises(CommandServiceError) as caught:
        real_client.acknowledge("hc-2", is_noop=False)
    assert caught.value.retryable is False and caught.value.status == 400
    assert "injected 400" in str(caught.value)
    assert len(stub.requests) == 4


@pytest.mark.parametrize("method", ["poll", "take"])
def test_polls_are_not_retried_inside_the_client(
    real_client: CommandClient, stub: StubServer, method: str
) -> None:
    """The loop backs off between polls; a TakeHostCommand that fails for another reason
    than being unknown does not turn the agent to stock polls."""
    stub.script = [500]
    with pytest.raises(CommandServiceError) as caught:
        getattr(real_client, method)()
    assert caught.value.retryable
    assert len(stub.requests) == 1
    assert getattr(real_client, method)() is None
    assert stub.requests[-1]["body"] == {"HostIdentifier": HOST}
    assert real_client.takes_polls


def test_take_asks_for_a_command_with_its_specification(
    real_client: CommandClient, stub: StubServer
) -> None:
    command = host_command("ApplicationStop")
    specification = FakeClient.specification()
    taken = {"HostCommand": command}
    stub.script = [{}, {**taken, **specification}, taken]
    assert real_client.take() is None, "an empty answer: nothing to do"
    assert real_client.take() == Polled(command, specification)
    assert real_client.take() == Polled(command, None)
    assert set(stub.targets()) == {"OpenDeployAgent_20261126.TakeHostCommand"}
    assert stub.requests[-1]["body"] == {"HostIdentifier": HOST}


def test_a_server_without_take_gets_stock_polls_from_then_on(
    real_client: CommandClient, stub: StubServer
) -> None:
    command = host_command("ApplicationStop")
    stub.script = [(400, "UnknownOperationException"), {"HostCommand": command}]
    assert real_client.take() == Polled(command)
    assert real_client.take() is None
    assert [t.rpartition(".")[2] for t in stub.targets()] == [
        "TakeHostCommand",
        "PollHostCommand",
        "PollHostCommand",
    ]


def test_log_upload_uses_the_extension_target(real_client: CommandClient, stub: StubServer) -> None:
    real_client.put_log("hc-1", 12, "more output\n")
    [request] = stub.requests
    assert request["headers"]["X-Amz-Target"] == "OpenDeployAgent_20261126.PutHostCommandLog"
    assert request["body"] == {
        "HostCommandIdentifier": "hc-1",
        "Offset": 12,
        "Log": "more output\n",
    }


def test_a_completion_taking_the_next_command_uses_the_extension_and_is_retried(
    real_client: CommandClient, stub: StubServer
) -> None:
    following = host_command("AfterInstall", "hc-2")
    stub.script = [500, "drop", {"HostCommand": following}]
    result = real_client.complete_and_take_next("hc-1", "Succeeded", SUCCESS_DIAGNOSTICS)
    assert result == (CompleteResult.STORED, following)
    assert len(stub.requests) == 3
    for request in stub.requests:
        assert request["headers"]["X-Amz-Target"] == (
            "OpenDeployAgent_20261126.PutHostCommandCompleteAndTakeNext"
        )
        assert request["body"]["HostIdentifier"] == HOST
        assert request["body"]["HostCommandIdentifier"] == "hc-1"
    assert real_client.complete_and_take_next("hc-2", "Succeeded", SUCCESS_DIAGNOSTICS) == (
        CompleteResult.STORED,
        None,
    ), "nothing more for the host: an empty answer"


def test_a_server_without_the_extension_gets_plain_completions_from_then_on(
    real_client: CommandClient, stub: StubServer
) -> None:
    stub.script = [(400, "UnknownOperationException")]
    result = real_client.complete_and_take_next("hc-1", "Succeeded", SUCCESS_DIAGNOSTICS)
    assert result == (CompleteResult.STORED, None)
    real_client.complete_and_take_next("hc-2", "Succeeded", SUCCESS_DIAGNOSTICS)
    assert [t.rpartition(".")[2] for t in stub.targets()] == [
        "PutHostCommandCompleteAndTakeNext",
        "PutHostCommandComplete",
        "PutHostCommandComplete",
    ]
    assert [r["body"]["HostCommandIdentifier"] for r in stub.requests] == ["hc-1", "hc-1", "hc-2"]


def test_a_refused_completion_taking_the_next_command_is_not_retried(
    real_client: CommandClient, stub: StubServer
) -> None:
    stub.script = [(400, "ClientException")]
    result = real_client.complete_and_take_next("hc-1", "Failed", {"error_code": 4})
    assert result == (CompleteResult.REJECTED, None)
    assert len(stub.requests) == 1 and real_client.takes_next


def test_bundle_download_is_signed_retried_and_resumed(
    real_client: CommandClient, stub: StubServer, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 64
    sha = hashlib.sha256(data).hexdigest()
    path = f"/agent/bundles/{sha}"
    stub.files[path] = data
    dest = tmp_path / "bundle.tar"
    dest.write_bytes(data[:1000])  # an earlier, interrupted download
    stub.script = [503]
    real_client.download_bundle(path, dest, sha256=sha, size=len(data))
    assert dest.read_bytes() == data
    assert [r["method"] for r in stub.requests] == ["GET", "GET"]
    final = stub.requests[-1]
    assert final["headers"]["Range"] == "bytes=1000-"
    assert "range" in final["signed"].signed_headers
    assert final["headers"]["X-Amz-Content-Sha256"] == hashlib.sha256(b"").hexdigest()


def test_bundle_paths_outside_the_store_are_refused(real_client: CommandClient) -> None:
    for path in ("/agent/bundles/", "/agent/bundles/../../etc/passwd", "https://evil/x", "/other"):
        with pytest.raises(ValueError):
            real_client.bundle_url(path)


def test_the_client_repr_hides_the_secret(real_client: CommandClient) -> None:
    assert SECRET not in repr(real_client)
    assert SECRET not in repr(real_client.config)


def test_the_client_ignores_the_aws_environment_of_its_user(
    config: AgentConfig, stub: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dataclasses import replace

    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = eu-west-3\nca_bundle = /nonexistent/ca.pem\n")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    monkeypatch.setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
    client = CommandClient(replace(config, endpoint=stub.endpoint), backoff=FAST)
    try:
        assert client.poll() is None
    finally:
        client.close()
    assert stub.requests[0]["signed"].region == "us-east-1"


def test_diagnostics_are_cut_to_the_models_limit_keeping_the_newest_log() -> None:
    from opendeploy.agent.client import fit_diagnostics

    log = "".join(f"line {n}\n" for n in range(5000))
    payload = fit_diagnostics({"error_code": 4, "script_name": "s", "message": "m", "log": log})
    assert len(payload) <= 8192
    document = json.loads(payload)
    assert document["log"].endswith("line 4999\n")
    assert document["message"] == "m"
    small = {"error_code": 0, "script_name": "", "message": "Succeeded: ", "log": ""}
    assert json.loads(fit_diagnostics(small)) == small
