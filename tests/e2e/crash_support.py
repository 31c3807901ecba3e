"""What the failure and crash end-to-end tests share.

``CrashBed`` is an ``Environment`` (so the e2e conftest attaches its logs to a failing test's
report) whose server listens on a fixed port and can be killed and started again on the same
data dir, with other settings if a test needs them: the agents keep talking to the same URL.
Its agents send a heartbeat every half second, so a short server heartbeat timeout fails only
agents that really went silent.

``labelled_bundle`` makes a revision whose five standard hooks record themselves as
``<script>@<label>`` (``stop@A``, ``validate@B``...), so the hooks' own record says which
revision's script ran for which event.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config
from e2e_support import STANDARD_HOOKS, Environment, HookLine, hook_lines, hook_script, write_bundle

from opendeploy.agent.config import load_config, write_config
from opendeploy.agent.layout import BUNDLE_FILE
from opendeploy.localfleet import REGION, LocalAgent, LocalFleet, LocalServer, free_port
from opendeploy.localfleet import start_server as launch_server

__all__ = [
    "AGENT_HEARTBEAT",
    "CrashBed",
    "HostCommandRow",
    "deployments_of",
    "downloaded",
    "group_of",
    "labelled_bundle",
    "lines_of",
    "wait_until",
]

#: Seconds between an agent's heartbeats (PostHostCommandUpdate) while it runs a command.
AGENT_HEARTBEAT = 0.5
LONG_POLL = 5.0
DEFAULT_HEARTBEAT_TIMEOUT = 30.0


def labelled_bundle(
    directory: Path,
    *,
    destination: str,
    label: str,
    extra: Mapping[str, str] | None = None,
    hooks: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    scripts: Mapping[str, str] | None = None,
) -> Path:
    """A bundle installing ``app/index.html`` = ``"<label>\\n"`` to ``destination``, whose
    standard hooks record ``<name>@<label>``; ``extra`` maps a standard script name (``stop``,
    ``validate``...) to shell appended to that script (``exit 1``, ``sleep 0.5``...)."""
    standard = {
        f"scripts/{name}.sh": hook_script(f"{name}@{label}", (extra or {}).get(name, ""))
        for name in STANDARD_HOOKS.values()
    }
    return write_bundle(
        directory,
        destination=destination,
        content=f"{label}\n",
        scripts={**standard, **(scripts or {})},
        hooks=hooks,
    )


def group_of(
    environment: Environment,
    application: str,
    agents: Sequence[LocalAgent],
    *,
    config: str = "CodeDeployDefault.AllAtOnce",
    rollback: Mapping[str, Any] | None = None,
) -> str:
    """``Environment.group`` (a group of exactly ``agents``), with an
    autoRollbackConfiguration if given."""
    group = environment.group(application, agents, config)
    if rollback is not None:
        environment.codedeploy.update_deployment_group(
            applicationName=application,
            currentDeploymentGroupName=group,
            autoRollbackConfiguration=dict(rollback),
        )
    return group


def lines_of(agent: LocalAgent, deployment_id: str) -> list[tuple[str, str]]:
    """``(script, event)`` of each hook ``agent`` ran for the deployment, in order."""
    found: list[HookLine] = hook_lines(agent, deployment_id)
    return [(line.script, line.event) for line in found]


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> Any:
    """``condition()``'s first truthy value; AssertionError (with ``explain()``) after
    ``timeout`` seconds."""
    until = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > until:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{explain()}")
        time.sleep(interval)


def deployments_of(codedeploy: Any, application: str, group: str) -> set[str]:
    """Every deployment id of the group."""
    found: set[str] = set()
    arguments = {"applicationName": application, "deploymentGroupName": group}
    while True:
        page = codedeploy.list_deployments(**arguments)
        found.update(page.get("deployments", []))
        if not page.get("nextToken"):
            return found
        arguments["nextToken"] = page["nextToken"]


def downloaded(agent: LocalAgent, group_id: str, deployment_id: str) -> bool:
    """Whether the agent wrote a downloaded bundle in the deployment's directory."""
    return (agent.root / group_id / deployment_id / BUNDLE_FILE).exists()


@dataclass(frozen=True)
class HostCommandRow:
    instance_name: str
    event: str
    status: str
    dispatched_time: float | None


@dataclass
class CrashBed(Environment):
    """An ``Environment`` whose server can be killed and restarted on its port and data dir."""

    port: int = 0
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    restarts: int = 0

    @classmethod
    def launch(
        cls, workdir: Path, *, hosts: int, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    ) -> CrashBed:
        port = free_port()
        server = _start(workdir / "server", port, heartbeat_timeout)
        codedeploy = boto3.session.Session().client(
            "codedeploy",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id=server.access_key_id,
            aws_secret_access_key=server.secret_access_key,
            # One attempt for CreateDeployment (see Environment.start); reads retry below.
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        bed = cls(
            server,
            LocalFleet(server, workdir / "fleet"),
            workdir,
            codedeploy,
            port=port,
            heartbeat_timeout=heartbeat_timeout,
        )
        try:
            bed.add_hosts(hosts, configure=_fast_heartbeat)
        except BaseException:
            bed.stop()
            raise
        return bed

    # -- the server's life -------------------------------------------------------------------

    def kill_server(self) -> None:
        """SIGKILL the server process: no shutdown, no flush, held long polls cut."""
        process = self.server.process
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def server_is_down(self) -> bool:
        """Whether the server's port refuses connections (it is down)."""
        try:
            httpx.get(self.server.endpoint + "/healthz", timeout=2)
        except httpx.TransportError:
            return True
        return False

    def start_server(self, *, heartbeat_timeout: float | None = None) -> None:
        """Start the server again on the same port and data dir (it must not be running)."""
        assert self.server.process.poll() is not None, "the server is still running"
        if heartbeat_timeout is not None:
            self.heartbeat_timeout = heartbeat_timeout
        self.server = _start(self.server.data_dir, self.port, self.heartbeat_timeout)
        self.fleet.server = self.server
        self.restarts += 1

    def restart_server(self, *, heartbeat_timeout: float | None = None) -> None:
        self.kill_server()
        self.start_server(heartbeat_timeout=heartbeat_timeout)

    def ensure_heartbeat_timeout(self, seconds: float) -> None:
        """Run the server with this heartbeat timeout (restarting it if it has another)."""
        if self.heartbeat_timeout != seconds or self.server.process.poll() is not None:
            self.restart_server(heartbeat_timeout=seconds)

    # -- reading -----------------------------------------------------------------------------

    def agent(self, name: str) -> LocalAgent:
        [found] = [agent for agent in self.agents if agent.name == name]
        return found

    def group_id(self, application: str, group: str) -> str:
        info = self.codedeploy.get_deployment_group(
            applicationName=application, deploymentGroupName=group
        )["deploymentGroupInfo"]
        return str(info["deploymentGroupId"])

    def host_commands(self, deployment_id: str) -> list[HostCommandRow]:
        """The deployment's rows of the server's ``host_commands`` table, read from its
        SQLite file directly."""
        database = self.server.data_dir / "opendeploy.db"
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            rows = connection.execute(
                "SELECT instance_name, event, status, dispatched_time FROM host_commands"
                " WHERE deployment_id = ? ORDER BY created_time",
                (deployment_id,),
            ).fetchall()
        finally:
            connection.close()
        return [HostCommandRow(*row) for row in rows]

    def info(self, deployment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        return found

    def restart_agent(self, agent: LocalAgent) -> None:
        """SIGKILL the agent (its hooks live on in their own sessions) and start it again."""
        assert agent.process is not None
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(timeout=10)
        agent.start()

    def stop(self) -> None:
        for agent in self.fleet.agents:
            agent.signal(signal.SIGCONT)  # a test that failed while one was frozen
        super().stop()


def _fast_heartbeat(agent: LocalAgent) -> None:
    config = load_config(agent.config_path)
    write_config(agent.config_path, replace(config, heartbeat_interval=AGENT_HEARTBEAT))


def _start(data_dir: Path, port: int, heartbeat_timeout: float) -> LocalServer:
    args = [
        "--long-poll-seconds",
        str(LONG_POLL),
        "--heartbeat-timeout",
        str(heartbeat_timeout),
    ]
    deadline = time.monotonic() + 30
    while True:
        try:
            return launch_server(data_dir, port=port, args=args)
        except RuntimeError:
            # The port may linger for a moment after a kill; anything else shows in the log.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
