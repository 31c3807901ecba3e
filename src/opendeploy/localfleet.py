"""A whole fleet on one machine: a real server process and real agent processes.

Each agent has its own deployment root and destination root, so many can share the machine.
``opendeploy demo``, the deployment benchmarks and the end-to-end tests all run on this.
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from opendeploy.agent.config import write_config
from opendeploy.agent.registration import Registration, fetch_signer_certificate, register_host

__all__ = ["LocalAgent", "LocalFleet", "LocalServer", "free_port", "start_server"]

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "opendeploy", *args]


def _clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without AWS settings that would leak into child processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra or {})
    return env


@dataclass
class LocalServer:
    endpoint: str
    data_dir: Path
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    #: The CA certificates (PEM) its HTTPS certificate chains to; None when it serves HTTP.
    ca_bundle: Path | None = None

    def client(self, service: str, **config: Any) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"total_max_attempts": 3, "mode": "standard"}, **config),
            verify=str(self.ca_bundle) if self.ca_bundle else None,
        )

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "admin-credentials"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 60.0,
    tls: tuple[Path, Path] | None = None,
    ca_bundle: Path | None = None,
) -> LocalServer:
    """Start ``opendeploy server`` and wait until it answers; it must be a fresh data dir
    (or one whose admin-credentials file is still there).

    ``tls`` (certificate, key) makes it serve HTTPS on ``https://127.0.0.1:<port>``; the
    certificate must chain to ``ca_bundle`` and name 127.0.0.1."""
    port = port or free_port()
    tls_args: list[str] = []
    if tls is not None:
        tls_args = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _command(
                "server",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--log-level",
                "warning",
                *tls_args,
                *args,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_clean_environment(env),
            start_new_session=True,
        )
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}); see {log_path}")
        try:
            if httpx.get(endpoint + "/readyz", timeout=2, verify=verify).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(0.05)
    credentials = configparser.ConfigParser()
    credentials.read(data_dir / "admin-credentials")
    return LocalServer(
        endpoint=endpoint,
        data_dir=data_dir,
        access_key_id=credentials["default"]["aws_access_key_id"],
        secret_access_key=credentials["default"]["aws_secret_access_key"],
        process=process,
        log_path=log_path,
        ca_bundle=ca_bundle,
    )


@dataclass
class LocalAgent:
    name: str
    config_path: Path
    root: Path
    destination_root: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: A stop signal went to the running process: another one would kill its running hook.
    _stopping: bool = field(default=False, repr=False)

    def start(self) -> None:
        self._stopping = False
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                _command("agent", "run", "--config", str(self.config_path)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_environment(),
                start_new_session=True,
            )

    def signal(self, sig: int) -> None:
        """Send ``sig`` as is (a second SIGTERM or SIGINT kills the agent's running hook)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._stopping = True

    def terminate(self) -> None:
        """SIGTERM unless one was sent already: stop polling, finish the current command.

        Only once: the agent takes a second SIGTERM as "kill the running hook now".
        """
        if not self._stopping:
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (finish the current command), then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class LocalFleet:
    """Agents registered with ``server``, each in ``workdir/<name>/``."""

    server: LocalServer
    workdir: Path
    agents: list[LocalAgent] = field(default_factory=list)

    def add_hosts(
        self,
        count: int,
        *,
        prefix: str = "host",
        tags: Mapping[str, str] | None = None,
        hook_environment: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> list[LocalAgent]:
        """Register ``count`` hosts (tags plus ``Name=<name>``) and start their agents."""
        iam = self.server.client("iam")
        codedeploy = self.server.client("codedeploy")
        certificate = fetch_signer_certificate(self.server.endpoint, self.server.ca_bundle)
        added = []
        first = len(self.agents)
        for index in range(first, first + count):
            name = f"{prefix}-{index + 1:02d}"
            home = self.workdir / name
            environment = {
                key: value.replace("{host}", name).replace("{home}", str(home))
                for key, value in (hook_environment or {}).items()
            }
            config = register_host(
                iam,
                codedeploy,
                Registration(
                    endpoint=self.server.endpoint,
                    instance_name=name,
                    root=home / "deployment-root",
                    destination_root=home / "fs",
                    tags={**(tags or {}), "Name": name},
                    hook_environment=environment,
                    ca_bundle=self.server.ca_bundle,
                ),
                certificate=certificate,
            )
            config_path = home / "agent.yml"
            write_config(config_path, config)
            agent = LocalAgent(
                name=name,
                config_path=config_path,
                root=config.root_dir,
                destination_root=config.destination_root,
                log_path=home / "agent.log",
            )
            added.append(agent)
        self.agents.extend(added)
        if start:
            for agent in added:
                agent.start()
        return added

    def stop(self) -> None:
        """Stop every agent gracefully: one SIGTERM each, so running commands finish."""
        for agent in self.agents:
            agent.terminate()
        for agent in self.agents:
            agent.stop()
