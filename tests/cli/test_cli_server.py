"""``opendeploy server``, ``opendeploy db upgrade`` and ``opendeploy admin`` as real processes,
driven by the real ``aws`` CLI."""

from __future__ import annotations

import configparser
import gc
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import sqlalchemy as sa
from botocore.config import Config

from opendeploy.cli.server import GC_THRESHOLDS, tune_garbage_collector
from opendeploy.settings import ServerSettings

REGION = "us-east-1"
_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = _BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed")
    return found


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for child processes: none of the developer's AWS or OpenDeploy settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENDEPLOY_"))}
    env.update(
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    data_dir: Path
    endpoint: str
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def credentials(self) -> Path:
        return self.data_dir / "admin-credentials"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def launch(
    data_dir: Path, env: dict[str, str], *extra: str, relative_to: Path | None = None
) -> ServerProcess:
    """Start ``opendeploy server`` and wait until /healthz answers (or the process exits).

    With ``relative_to``, the server runs there and is given ``data_dir`` as a relative path.
    """
    port = free_port()
    given = data_dir.relative_to(relative_to) if relative_to is not None else data_dir
    name = f"server-{port}-{uuid.uuid4().hex[:6]}"
    logs = data_dir.parent
    stdout_path, stderr_path = logs / f"{name}.out", logs / f"{name}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [
                _tool("opendeploy"),
                "server",
                "--data-dir",
                str(given),
                "--port",
                str(port),
                *extra,
            ],
            stdout=out,
            stderr=err,
            env=env,
            cwd=relative_to,
        )
    server = ServerProcess(process, data_dir, f"http://127.0.0.1:{port}", stdout_path, stderr_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return server  # exited: the caller looks at why
        try:
            if httpx.get(server.endpoint + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    pytest.fail(f"opendeploy server did not answer in time:\n{server.stderr}")


def admin_boto3(server: ServerProcess, service: str) -> Any:
    credentials = configparser.ConfigParser()
    credentials.read(server.credentials)
    return boto3.session.Session().client(
        service,
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=credentials["default"]["aws_access_key_id"],
        aws_secret_access_key=credentials["default"]["aws_secret_access_key"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def running(module_tmp: Path) -> Iterator[ServerProcess]:
    """One ``opendeploy server`` process on a fresh data directory, for this module."""
    server = launch(module_tmp / "data", clean_env(module_tmp), relative_to=module_tmp)
    assert server.process.poll() is None, server.stderr
    yield server
    server.stop()


def aws(
    server: ServerProcess, tmp: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = clean_env(tmp, AWS_SHARED_CREDENTIALS_FILE=str(server.credentials))
    environment.update(env)
    return run(
        [
            _tool("aws"),
            *args,
            "--endpoint-url",
            server.endpoint,
            "--region",
            REGION,
            "--output",
            "json",
        ],
        environment,
    )


def aws_json(server: ServerProcess, tmp: Path, *args: str, **env: str) -> Any:
    result = aws(server, tmp, *args, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


# --- first start -------------------------------------------------------------------------------


def test_first_start_writes_private_credentials_and_says_where(running: ServerProcess) -> None:
    credentials = running.credentials
    assert f"OpenDeploy server on {running.endpoint}" in running.stdout
    # Given a relative --data-dir, it still names the file so that it can be found from anywhere.
    assert f"admin credentials written to {credentials.resolve()} (mode 0600)" in running.stdout
    assert f"AWS_SHARED_CREDENTIALS_FILE={credentials.resolve()} aws deploy" in running.stdout

    for path in (credentials, running.data_dir / "secret.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(running.data_dir.stat().st_mode) == 0o700

    parsed = configparser.ConfigParser()
    parsed.read(credentials)
    assert parsed.sections() == ["default"]
    assert set(parsed["default"]) == {"aws_access_key_id", "aws_secret_access_key"}
    key = parsed["default"]["aws_access_key_id"]
    secret = parsed["default"]["aws_secret_access_key"]
    assert key.startswith("AKIA") and len(key) == 20
    assert len(secret) == 40
    # The secret lives in the file only: not on the terminal, not in the log.
    assert secret not in running.stdout + running.stderr


def test_the_aws_cli_works_with_the_written_credentials(
    running: ServerProcess, tmp_path: Path
) -> None:
    assert isinstance(
        aws_json(running, tmp_path, "deploy", "list-applications")["applications"], list
    )
    app = "cli-" + uuid.uuid4().hex[:8]
    created = aws_json(running, tmp_path, "deploy", "create-application", "--application-name", app)
    assert len(created["applicationId"]) == 36
    assert app in aws_json(running, tmp_path, "deploy", "list-applications")["applications"]
    got = aws_json(running, tmp_path, "deploy", "get-application", "--application-name", app)
    assert got["application"]["computePlatform"] == "Server"

    users = aws_json(running, tmp_path, "iam", "list-users")["Users"]
    assert "admin" in {user["UserName"] for user in users}

    missing = aws(running, tmp_path, "deploy", "get-application", "--application-name", "nope-x")
    assert missing.returncode != 0
    assert "ApplicationDoesNotExistException" in missing.stderr


def test_admin_cli_makes_a_deployer_who_reads_but_cannot_create(
    running: ServerProcess, tmp_path: Path
) -> None:
    env = clean_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(running.credentials))
    opendeploy = _tool("opendeploy")
    bob = "bob-" + uuid.uuid4().hex[:8]

    made = run(
        [
            opendeploy,
            "admin",
            "create-user",
            bob,
            "--role",
            "deployer",
            "--endpoint",
            running.endpoint,
        ],
        env,
    )
    assert made.returncode == 0, made.stderr
    user = json.loads(made.stdout)
    assert user["UserName"] == bob
    assert user["Role"] == "deployer"
    assert user["Arn"].startswith("arn:aws:iam::") and user["Arn"].endswith(f":user/{bob}")

    again = run(
        [
            opendeploy,
            "admin",
            "create-user",
            bob,
            "--role",
            "reader",
            "--endpoint",
            running.endpoint,
        ],
        env,
    )
    assert again.returncode != 0
    assert "EntityAlreadyExists" in again.stderr

    keyed = run(
        [opendeploy, "admin", "create-access-key", bob, "--endpoint", running.endpoint], env
    )
    assert keyed.returncode == 0, keyed.stderr
    key = json.loads(keyed.stdout)
    assert key["UserName"] == bob
    assert len(key["SecretAccessKey"]) == 40
    assert "cannot be shown again" in keyed.stderr

    # Never again: the listing has the key id only.
    iam = admin_boto3(running, "iam")
    listed = iam.list_access_keys(UserName=bob)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    assert key["SecretAccessKey"] not in repr(listed)
    assert [
        p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=bob)["AttachedPolicies"]
    ] == ["arn:aws:iam::aws:policy/AWSCodeDeployDeployerAccess"]

    as_bob = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    reads = aws(running, tmp_path, "deploy", "list-applications", **as_bob)
    assert reads.returncode == 0, reads.stderr
    assert "applications" in json.loads(reads.stdout)
    writes = aws(
        running, tmp_path, "deploy", "create-application", "--application-name", bob, **as_bob
    )
    assert writes.returncode != 0
    assert "AccessDeniedException" in writes.stderr
    assert f"user/{bob}" in writes.stderr


def test_admin_cli_without_a_server_fails_cleanly(tmp_path: Path) -> None:
    env = clean_env(tmp_path, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="x" * 40)
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(
        [
            _tool("opendeploy"),
            "admin",
            "create-user",
            "x",
            "--role",
            "reader",
            "--endpoint",
            endpoint,
        ],
        env,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 8  # no minute of retries against a closed port
    assert "Error:" in result.stderr
    assert "Traceback" not in result.stderr


# --- restart ---------------------------------------------------------------------------------


def test_a_restart_keeps_the_data_and_the_credentials(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = clean_env(tmp_path)
    first = launch(data, env)
    try:
        assert first.process.poll() is None, first.stderr
        app = "kept-" + uuid.uuid4().hex[:8]
        admin_boto3(first, "codedeploy").create_application(applicationName=app)
    finally:
        first.stop()
    # A clean stop on SIGTERM (uvicorn re-raises the signal once it has shut down).
    assert first.process.returncode in (0, -signal.SIGTERM), first.stderr
    assert "Application shutdown complete" in first.stderr
    credentials = first.credentials.read_bytes()
    credentials_stat = first.credentials.stat()
    secret_key = (data / "secret.key").read_bytes()

    second = launch(data, env)
    try:
        assert second.process.poll() is None, second.stderr
        assert "admin credentials written" not in second.stdout
        assert f"OpenDeploy server on {second.endpoint}" in second.stdout
        codedeploy = admin_boto3(second, "codedeploy")
        assert (
            codedeploy.get_application(applicationName=app)["application"]["applicationName"] == app
        )
        assert [u["UserName"] for u in admin_boto3(second, "iam").list_users()["Users"]] == [
            "admin"
        ]
    finally:
        second.stop()
    assert second.credentials.read_bytes() == credentials
    assert second.credentials.stat().st_mtime_ns == credentials_stat.st_mtime_ns
    assert (data / "secret.key").read_bytes() == secret_key


def test_a_secret_key_others_can_read_stops_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = data / "secret.key"
    key.write_text("not even a key\n")
    key.chmod(0o644)
    server = launch(data, clean_env(tmp_path))
    try:
        assert server.process.wait(timeout=30) == 1
    finally:
        server.stop()
    assert "chmod 600" in server.stderr
    assert "not even a key" not in server.stderr + server.stdout
    assert "Traceback" not in server.stderr
    assert not server.credentials.exists()


# --- db upgrade ------------------------------------------------------------------------------

EXPECTED_TABLES = {"alembic_version", "applications", "users", "access_keys", "audit_log"}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_db_upgrade_on_sqlite(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    command = [_tool("opendeploy"), "db", "upgrade", "--data-dir", str(data)]
    result = run(command, clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    database = data / "opendeploy.db"
    assert f"database sqlite:///{database.resolve()} is up to date" in result.stdout
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert _tables(f"sqlite:///{database}") >= EXPECTED_TABLES
    assert not (data / "admin-credentials").exists()  # only the server makes users

    again = run(command, clean_env(tmp_path))
    assert again.returncode == 0, again.stderr


def test_db_upgrade_on_postgres(fresh_postgres: str, tmp_path: Path) -> None:
    assert _tables(fresh_postgres) == set()
    command = [
        _tool("opendeploy"),
        "db",
        "upgrade",
        "--data-dir",
        str(tmp_path / "d"),
        "--database-url",
        fresh_postgres,
    ]
    result = run(command, clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout
    assert _tables(fresh_postgres) >= EXPECTED_TABLES
    again = run(command, clean_env(tmp_path))
    assert again.returncode == 0, again.stderr


def test_db_upgrade_hides_the_database_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the upgrade fails, but the message must not leak
    url = f"postgresql+psycopg://someone:hunter2-secret@127.0.0.1:{port}/db?connect_timeout=2"
    result = run(
        [_tool("opendeploy"), "db", "upgrade", "--database-url", url, "--data-dir", str(tmp_path)],
        clean_env(tmp_path),
    )
    assert result.returncode != 0
    assert "hunter2-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:8080"),
        ("deploy.example.com", "http://deploy.example.com:8080"),
    ],
)
def test_the_printed_endpoint_is_a_usable_url(host: str, endpoint: str) -> None:
    settings = ServerSettings.from_env({}, data_dir=Path("d"), host=host)
    assert settings.endpoint == endpoint
    assert httpx.URL(settings.endpoint + "/healthz").port == 8080


def test_the_per_deployment_ceiling_reaches_the_engine(tmp_path: Path) -> None:
    from opendeploy.server.bootstrap import bootstrap
    from opendeploy.server.service.engine_runner import started

    env = {"OPENDEPLOY_MAX_INSTANCES_PER_DEPLOYMENT": "2500"}
    assert ServerSettings.from_env(env, data_dir=tmp_path).max_instances_per_deployment == 2500
    settings = ServerSettings.from_env(
        env, data_dir=tmp_path / "data", max_instances_per_deployment=3000
    )
    context = bootstrap(settings).context
    try:
        assert started(context).max_instances == 3000
    finally:
        context.db.dispose()
    assert ServerSettings.from_env({}, data_dir=tmp_path).max_instances_per_deployment == 1000


def test_the_server_collects_garbage_rarely_and_never_walks_start_up_objects_again() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000, "start-up's objects are frozen"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
