"""Protocol-level simulated agents for tests against a real server (docs/agent-protocol.md).

A ``SimAgent`` is a daemon thread that speaks the host command service the way the stock agent
does, through a botocore client built from the wire model in ``opendeploy.wire``: PollHostCommand
-> GetDeploymentSpecification -> PutHostCommandAcknowledgement -> PutHostCommandComplete. Per
lifecycle event it can fail with a stock error code (``Failure``), pause after the
acknowledgement until released, or go silent (stop all contact, like a dead host).

``Site`` is a server (``start_server`` of tests/conftest.py) on a fresh database of one backend
(``open_site``; ``shared_site`` keeps one per backend and settings for the session); ``Fleet``
registers agent hosts on it (IAM user with the agent policy, access key, on-premises instance
registered with the user's ARN, tags) and runs agents for them. ``Fleet.stop`` only signals its
agents, which leave at the end of their current long poll (give the server a short
``long_poll_seconds``); the site joins them before its server stops.

Import it from tests in this directory as ``import agentsim`` (pytest's default ``prepend``
import mode puts the test file's directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import botocore.session
import httpx
import pytest
import sqlalchemy as sa
from asn1crypto import cms, pem
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from opendeploy.store.database import make_sqlite_url
from opendeploy.wire import COMMANDS_SERVICE, DATA_PATH, EXTENSIONS_SERVICE

__all__ = [
    "ADMIN_POLICY",
    "AGENT_POLICY",
    "DEPLOYER_POLICY",
    "EVENTS",
    "READER_POLICY",
    "SUCCESS_PAYLOAD",
    "TERMINAL",
    "Concurrency",
    "Failure",
    "Fleet",
    "Group",
    "Handled",
    "Host",
    "SimAgent",
    "Site",
    "agent_client",
    "event_statuses",
    "extensions_client",
    "open_envelope",
    "open_site",
    "s3_revision",
    "shared_site",
    "signed_request",
    "targets",
    "wait_for",
    "wait_for_deployment",
]

AGENT_POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"
ADMIN_POLICY = "arn:aws:iam::aws:policy/AWSCodeDeployFullAccess"
DEPLOYER_POLICY = "arn:aws:iam::aws:policy/AWSCodeDeployDeployerAccess"
READER_POLICY = "arn:aws:iam::aws:policy/AWSCodeDeployReadOnlyAccess"
SERVICE_ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
#: The in-place lifecycle of a Server deployment without a load balancer (codedeploy-spec §7.2).
EVENTS = (
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
)
TERMINAL = frozenset({"Succeeded", "Failed", "Stopped"})


def _root_conftest() -> ModuleType:
    """tests/conftest.py, loaded by path: without packages, pytest imports every conftest.py as
    module ``conftest`` and drops the previous one from ``sys.modules``, so ``import conftest``
    may find another directory's (tests/e2e/conftest.py, say)."""
    name = "_opendeploy_root_conftest"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).resolve().parents[1] / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_conftest = _root_conftest()
POSTGRES_ENV: str = _conftest.POSTGRES_ENV
REGION: str = _conftest.REGION
RunningServer = _conftest.RunningServer
start_server = _conftest.start_server

_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def _botocore_session() -> Any:
    """One botocore session that knows the agent wire models (a session costs ~70 ms)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            session = botocore.session.get_session()
            loader = session.get_component("data_loader")
            if str(DATA_PATH) not in loader.search_paths:
                loader.search_paths.append(str(DATA_PATH))
            _SESSION = session
        return _SESSION


def s3_revision(key: str = "releases/app.tgz", bucket: str = "releases") -> dict[str, Any]:
    return {
        "revisionType": "S3",
        "s3Location": {"bucket": bucket, "key": key, "bundleType": "tgz"},
    }


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


# -- hosts and clients -------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """A registered on-premises instance and its agent user's credentials."""

    name: str
    user_name: str
    arn: str
    access_key_id: str
    secret_access_key: str

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.access_key_id, self.secret_access_key)


def agent_client(
    server: RunningServer,
    host: Host | None = None,
    *,
    service: str = COMMANDS_SERVICE,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    read_timeout: float = 60.0,
) -> Any:
    """A botocore client for the agent API (``codedeploy-commands`` or ``opendeploy-agent``)."""
    return _botocore_session().create_client(
        service,
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=access_key_id or (host.access_key_id if host else None),
        aws_secret_access_key=secret_access_key or (host.secret_access_key if host else None),
        config=Config(
            read_timeout=read_timeout,
            connect_timeout=5,
            retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )


def extensions_client(server: RunningServer, host: Host) -> Any:
    return agent_client(server, host, service=EXTENSIONS_SERVICE)


def signed_request(
    method: str,
    url: str,
    credentials: Credentials,
    service: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> httpx.Request:
    """An httpx request SigV4-signed with botocore (``headers`` are signed as given)."""
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    SigV4Auth(credentials, service, REGION).add_auth(request)
    return httpx.Request(method, url, headers=dict(request.headers.items()), content=body)


def open_envelope(payload: str) -> tuple[str, dict[str, Any], bytes]:
    """(PEM label, embedded JSON, embedded certificate DER) of a ``PKCS7/JSON`` envelope."""
    label, _, der = pem.unarmor(payload.encode("ascii"))
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    document = json.loads(signed["encap_content_info"]["content"].native)
    certificates = signed["certificates"]
    assert len(certificates) == 1
    return label, document, certificates[0].chosen.dump()


# -- what the agents did ------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """How a lifecycle event fails: the diagnostics payload of a Failed completion.

    ``error_code`` is the stock agent's: 1 ScriptMissing, 2 ScriptNotExecutable, 3 ScriptTimedOut,
    4 ScriptFailed, 5 UnknownError, 6 outputs left open, 7 failed after an agent restart.
    """

    error_code: int = 4
    script_name: str = "scripts/fail.sh"
    message: str = "Script at specified location: scripts/fail.sh failed with exit code 1"
    log: str = "[stdout]starting\n[stderr]boom\n"

    def payload(self) -> str:
        return json.dumps(
            {
                "error_code": self.error_code,
                "script_name": self.script_name,
                "message": self.message,
                "log": self.log,
            }
        )


SUCCESS_PAYLOAD = json.dumps(
    {"error_code": 0, "script_name": "", "message": "Succeeded", "log": ""}
)


@dataclass
class Handled:
    """One host command an agent received."""

    host: str
    deployment_id: str
    event: str
    command_id: str
    received: float
    ack_status: str | None = None
    status: str | None = None


class Concurrency:
    """Hosts deploying at once, as the agents see it.

    A host counts from the moment its agent receives its first command of a deployment until
    just before it reports the outcome of its last one (the final event, or a failure); that
    window lies inside the server's, so the maximum seen here never exceeds the server's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[tuple[str, str]] = set()
        self.maximum = 0

    def begin(self, host: str, deployment_id: str) -> None:
        with self._lock:
            self._active.add((host, deployment_id))
            self.maximum = max(self.maximum, len(self._active))

    def end(self, host: str, deployment_id: str) -> None:
        with self._lock:
            self._active.discard((host, deployment_id))


class SimAgent:
    """A simulated agent for one host, in a daemon thread.

    failures: event name -> Failure to report for it (changeable between deployments).
    silent_on: event name at which the agent stops all contact, after acknowledging the
        command when ``ack_before_silence``; the thread then ends.
    pause_on: event names after whose acknowledgement the agent waits for ``release()``.
    delay: seconds each event "runs" between acknowledgement and completion.
    spec_every_command: fetch the specification for every command, as the stock agent does;
        by default only for a deployment's first command (each request costs the in-process
        server and agents ~8 ms of CPU under one GIL, and most tests need speed).
    """

    def __init__(
        self,
        server: RunningServer,
        host: Host,
        *,
        failures: Mapping[str, Failure] | None = None,
        silent_on: str | None = None,
        ack_before_silence: bool = True,
        pause_on: Iterable[str] = (),
        delay: float = 0.0,
        concurrency: Concurrency | None = None,
        spec_every_command: bool = False,
    ) -> None:
        self.server = server
        self.host = host
        self.failures: dict[str, Failure] = dict(failures or {})
        self.silent_on = silent_on
        self.ack_before_silence = ack_before_silence
        self.pause_on = frozenset(pause_on)
        self.delay = delay
        self.concurrency = concurrency
        self.spec_every_command = spec_every_command
        self._spec_of: dict[str, dict[str, Any]] = {}
        self.client = agent_client(server, host)
        self.handled: list[Handled] = []
        self.specs: dict[str, dict[str, Any]] = {}
        self.errors: list[BaseException] = []
        self.polls = 0
        self.paused = threading.Event()
        self.silenced = threading.Event()
        self._release = threading.Event()
        self._stop = threading.Event()
        self._begun: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"agent-{host.name}", daemon=True)

    def __repr__(self) -> str:
        return f"SimAgent({self.host.name})"

    def start(self) -> SimAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Leave after the current long poll; does not wait."""
        self._stop.set()
        self._release.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def release(self) -> None:
        """Let a paused agent complete its command."""
        self.paused.clear()
        self._release.set()

    def events(self, deployment_id: str) -> list[str]:
        return [h.event for h in self.handled if h.deployment_id == deployment_id]

    def first_received(self, deployment_id: str) -> float | None:
        times = [h.received for h in self.handled if h.deployment_id == deployment_id]
        return min(times) if times else None

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.polls += 1
                response = self.client.poll_host_command(HostIdentifier=self.host.arn)
                command = response.get("HostCommand")
                if command and not self._handle(command):
                    return
            except Exception as error:
                if self._stop.is_set():
                    return
                self.errors.append(error)
                time.sleep(0.1)

    def _handle(self, command: Mapping[str, Any]) -> bool:
        """Run one command; False when the agent went silent."""
        event = command["CommandName"]
        command_id = command["HostCommandIdentifier"]
        execution_id = command["DeploymentExecutionId"]
        document = self._spec_of.get(execution_id)
        if document is None or self.spec_every_command:
            spec = self.client.get_deployment_specification(
                DeploymentExecutionId=execution_id, HostIdentifier=self.host.arn
            )
            _, document, _ = open_envelope(
                spec["DeploymentSpecification"]["GenericEnvelope"]["Payload"]
            )
            self._spec_of[execution_id] = document
        deployment_id = document["DeploymentId"]
        self.specs[deployment_id] = document
        record = Handled(self.host.name, deployment_id, event, command_id, time.monotonic())
        self.handled.append(record)
        if self.concurrency is not None and deployment_id not in self._begun:
            self._begun.add(deployment_id)
            self.concurrency.begin(self.host.name, deployment_id)
        if event == self.silent_on and not self.ack_before_silence:
            self.silenced.set()
            return False
        ack = self.client.put_host_command_acknowledgement(
            HostCommandIdentifier=command_id,
            Diagnostics={"Format": "JSON", "Payload": '{"IsCommandNoop":false}'},
        )
        record.ack_status = ack.get("CommandStatus")
        if event == self.silent_on:
            self.silenced.set()
            return False
        if record.ack_status in ("Succeeded", "Failed"):
            return True
        if event in self.pause_on:
            self._release.clear()
            self.paused.set()
            self._release.wait()
        if self.delay:
            time.sleep(self.delay)
        failure = self.failures.get(event)
        if self.concurrency is not None and (failure is not None or event == EVENTS[-1]):
            self.concurrency.end(self.host.name, deployment_id)
        status = "Failed" if failure else "Succeeded"
        self.client.put_host_command_complete(
            HostCommandIdentifier=command_id,
            CommandStatus=status,
            Diagnostics={
                "Format": "JSON",
                "Payload": failure.payload() if failure else SUCCESS_PAYLOAD,
            },
        )
        record.status = status
        return True


# -- a server on a fresh database, and fleets of agent hosts on it ------------------------------


@dataclass
class Site:
    """A dedicated server of one backend, with the admin's clients."""

    backend: str
    server: RunningServer
    database_url: str
    codedeploy: Any
    iam: Any
    agents: list[SimAgent] = field(default_factory=list)

    def client(self, service: str = "codedeploy", **keys: Any) -> Any:
        return self.server.client(service, **keys)

    def user(self, policy: str, *, prefix: str = "user", path: str = "/") -> tuple[str, str, str]:
        """A new IAM user with ``policy``: (ARN, access key id, secret access key)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        arn = self.iam.create_user(UserName=name, Path=path)["User"]["Arn"]
        self.iam.attach_user_policy(UserName=name, PolicyArn=policy)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return arn, key["AccessKeyId"], key["SecretAccessKey"]

    def register_host(self, name: str, tags: Mapping[str, str], *, path: str = "/") -> Host:
        """Agent user (policy OpenDeployAgentAccess) + key, instance registered with its ARN."""
        arn, key_id, secret = self.user(AGENT_POLICY, prefix=f"agent-{name}", path=path)
        self.codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=arn)
        if tags:
            self.codedeploy.add_tags_to_on_premises_instances(
                instanceNames=[name], tags=[{"Key": k, "Value": v} for k, v in tags.items()]
            )
        return Host(name, arn.rpartition("/")[2], arn, key_id, secret)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        deadline = time.monotonic() + 15
        for agent in self.agents:
            agent.join(max(0.0, deadline - time.monotonic()))
        self.server.stop()


@contextlib.contextmanager
def _database(backend: str, data_dir: Path) -> Iterator[str]:
    """An empty database: SQLite in ``data_dir``, or a throwaway PostgreSQL database."""
    if backend == "sqlite":
        yield ""
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = "od_agentsim_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
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


@contextlib.contextmanager
def open_site(backend: str, data_dir: Path, **settings: Any) -> Iterator[Site]:
    """A dedicated server (``start_server`` settings such as ``long_poll_seconds``)."""
    with _database(backend, data_dir) as url:
        server = start_server(data_dir, url, **settings)
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


_SHARED: dict[tuple[str, tuple[tuple[str, Any], ...]], Site] = {}


def shared_site(request: pytest.FixtureRequest, backend: str, **settings: Any) -> Site:
    """A site shared by every test module that asks for the same backend and settings, closed
    when the test session ends (a PostgreSQL site costs ~1.5 s to set up)."""
    key = (backend, tuple(sorted(settings.items())))
    site = _SHARED.get(key)
    if site is None:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        stack = contextlib.ExitStack()
        site = stack.enter_context(
            open_site(backend, factory.mktemp(f"site-{backend}"), **settings)
        )
        request.config.add_cleanup(stack.close)
        _SHARED[key] = site
    return site


@dataclass
class Group:
    """An application with one deployment group selecting the hosts tagged ``tag``."""

    site: Site
    application: str
    name: str
    tag: dict[str, str]

    def deploy(self, revision: Mapping[str, Any] | None = None, **params: Any) -> str:
        if revision is not None:
            params["revision"] = revision
        response = self.site.codedeploy.create_deployment(
            applicationName=self.application, deploymentGroupName=self.name, **params
        )
        deployment_id: str = response["deploymentId"]
        return deployment_id

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.site.codedeploy.get_deployment_group(
            applicationName=self.application, deploymentGroupName=self.name
        )["deploymentGroupInfo"]
        return info


class Fleet:
    """Groups, hosts and running agents of one test; ``stop`` signals its agents."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.agents: list[SimAgent] = []
        self.prefix = uuid.uuid4().hex[:6]

    def group(self, config: str = "CodeDeployDefault.AllAtOnce", **params: Any) -> Group:
        application = f"app-{self.prefix}-{uuid.uuid4().hex[:4]}"
        name = "prod"
        tag = {"Key": "fleet", "Value": f"{application}"}
        self.site.codedeploy.create_application(applicationName=application)
        self.site.codedeploy.create_deployment_group(
            applicationName=application,
            deploymentGroupName=name,
            serviceRoleArn=SERVICE_ROLE,
            deploymentConfigName=config,
            onPremisesInstanceTagFilters=[{**tag, "Type": "KEY_AND_VALUE"}],
            **params,
        )
        return Group(self.site, application, name, tag)

    def hosts(self, group: Group | None, count: int, *, path: str = "/") -> list[Host]:
        """``count`` hosts named ``<prefix>-h<i>`` (sorted by index), tagged for ``group``."""
        tags = {group.tag["Key"]: group.tag["Value"]} if group else {}
        base = f"h{uuid.uuid4().hex[:6]}"
        return [self.site.register_host(f"{base}-{i}", tags, path=path) for i in range(count)]

    def run(self, host: Host, **behaviour: Any) -> SimAgent:
        agent = SimAgent(self.site.server, host, **behaviour).start()
        self.agents.append(agent)
        self.site.agents.append(agent)
        return agent

    def run_all(self, hosts: Iterable[Host], **behaviour: Any) -> list[SimAgent]:
        return [self.run(host, **behaviour) for host in hosts]

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def errors(self) -> list[BaseException]:
        return [error for agent in self.agents for error in agent.errors]


# -- reading deployments back ------------------------------------------------------------------


def wait_for_deployment(
    codedeploy: Any,
    deployment_id: str,
    *,
    statuses: Iterable[str] = TERMINAL,
    timeout: float = 20.0,
    interval: float = 0.1,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """GetDeployment until its status is one of ``statuses``; ``check`` sees every answer."""
    wanted = frozenset(statuses)

    def done() -> dict[str, Any] | None:
        info: dict[str, Any] = codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        if check is not None:
            check(info)
        return info if info["status"] in wanted else None

    result: dict[str, Any] = wait_for(
        done, timeout=timeout, interval=interval, what=f"{deployment_id} {wanted}"
    )
    return result


def targets(codedeploy: Any, deployment_id: str) -> dict[str, dict[str, Any]]:
    """Every instance target of a deployment, by name."""
    names = [
        name
        for page in codedeploy.get_paginator("list_deployment_targets").paginate(
            deploymentId=deployment_id
        )
        for name in page["targetIds"]
    ]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), 25):
        batch = codedeploy.batch_get_deployment_targets(
            deploymentId=deployment_id, targetIds=names[start : start + 25]
        )["deploymentTargets"]
        for target in batch:
            found[target["instanceTarget"]["targetId"]] = target["instanceTarget"]
    return found


def event_statuses(target: Mapping[str, Any]) -> dict[str, str]:
    return {e["lifecycleEventName"]: e["status"] for e in target["lifecycleEvents"]}
