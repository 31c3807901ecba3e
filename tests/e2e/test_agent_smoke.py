"""A real ``opendeploy server`` and a real ``opendeploy agent run``: register, poll, deploy."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from opendeploy.agent.config import load_config, write_config

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
APPSPEC = """version: 0.0
os: linux
files:
  - source: app
    destination: /srv/shop
hooks:
  ApplicationStart:
    - location: scripts/start.sh
      timeout: 30
"""


def _cli(*args: str) -> list[str]:
    """How to run ``opendeploy <args>`` (the agent group may not be in the main CLI yet)."""
    from opendeploy.cli.main import cli

    if args[0] == "agent" and "agent" not in cli.commands:
        code = "import sys; from opendeploy.cli.agent import agent; agent(sys.argv[1:])"
        return [sys.executable, "-c", code, *args[1:]]
    return [sys.executable, "-m", "opendeploy", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    endpoint: str
    credentials: Path
    process: subprocess.Popen[bytes]

    def client(self, service: str) -> Any:
        parser = configparser.ConfigParser()
        parser.read(self.credentials)
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=parser["default"]["aws_access_key_id"],
            aws_secret_access_key=parser["default"]["aws_secret_access_key"],
            config=Config(retries={"total_max_attempts": 2, "mode": "standard"}),
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data_dir = tmp_path / "server"
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        _cli("server", "--data-dir", str(data_dir), "--port", str(port), "--log-level", "warning"),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OPENDEPLOY_LONG_POLL_SECONDS": "3"},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(endpoint + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise RuntimeError(
                "the server did not start:\n" + (tmp_path / "server.log").read_text()
            )
        time.sleep(0.1)
    yield Server(endpoint, data_dir / "admin-credentials", process)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _git_repository(path: Path, marker: Path) -> str:
    files = {
        "appspec.yml": APPSPEC,
        "app/index.html": "<h1>shop</h1>\n",
        "scripts/start.sh": f'#!/bin/sh\necho "started $DEPLOYMENT_ID" >> {marker}\n'
        'echo "secret=${AWS_SECRET_ACCESS_KEY:-none}"\n',
    }
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (path / "scripts/start.sh").chmod(0o755)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for argv in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "one"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_register_poll_and_deploy_with_a_real_agent(server: Server, tmp_path: Path) -> None:
    config_path = tmp_path / "etc" / "agent.yml"
    root = tmp_path / "agent-root"
    destination = tmp_path / "dest"
    registered = subprocess.run(
        _cli(
            "agent", "register",
            "--endpoint", server.endpoint,
            "--instance-name", "web-1",
            "--tag", "env=smoke",
            "--root", str(root),
            "--destination-root", str(destination),
            "--config", str(config_path),
        ),
        env={**os.environ, "AWS_SHARED_CREDENTIALS_FILE": str(server.credentials)},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr + registered.stdout
    assert "registered on-premises instance web-1" in registered.stdout
    config = load_config(config_path)
    assert config_path.stat().st_mode & 0o777 == 0o600
    assert config.secret_access_key not in registered.stdout + registered.stderr
    assert config.host_identifier.endswith(":user/opendeploy-agent-web-1")
    assert "BEGIN CERTIFICATE" in config.spec_signer_certificate

    codedeploy = server.client("codedeploy")
    [instance] = codedeploy.batch_get_on_premises_instances(instanceNames=["web-1"])[
        "instanceInfos"
    ]
    assert instance["iamUserArn"] == config.host_identifier
    assert {"Key": "env", "Value": "smoke"} in instance["tags"]

    marker = tmp_path / "started.txt"
    repository = tmp_path / "git" / "acme" / "shop"
    commit = _git_repository(repository, marker)
    write_config(config_path, replace(config, git_base_url=f"file://{tmp_path / 'git'}"))

    codedeploy.create_application(applicationName="shop")
    codedeploy.create_deployment_group(
        applicationName="shop",
        deploymentGroupName="smoke",
        serviceRoleArn="arn:aws:iam::000000000000:role/opendeploy",
        deploymentConfigName="CodeDeployDefault.AllAtOnce",
        onPremisesInstanceTagFilters=[{"Key": "env", "Value": "smoke", "Type": "KEY_AND_VALUE"}],
    )

    agent_log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        _cli("agent", "run", "--config", str(config_path)),
        stdout=agent_log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": "agent-env-secret"},
    )
    try:
        deployment_id = codedeploy.create_deployment(
            applicationName="shop",
            deploymentGroupName="smoke",
            revision={
                "revisionType": "GitHub",
                "gitHubLocation": {"repository": "acme/shop", "commitId": commit},
            },
        )["deploymentId"]
        deadline = time.monotonic() + 90
        while True:
            info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
            if info["status"] in ("Succeeded", "Failed", "Stopped"):
                break
            assert agent.poll() is None, "the agent exited"
            assert time.monotonic() < deadline, f"deployment still {info['status']}"
            time.sleep(0.2)
        log_text = (tmp_path / "agent.log").read_text()
        assert info["status"] == "Succeeded", (info.get("errorInformation"), log_text)
        assert (destination / "srv/shop/index.html").read_text() == "<h1>shop</h1>\n"
        assert marker.read_text() == f"started {deployment_id}\n"
        scripts_log = next(root.glob("*/*/logs/scripts.log")).read_text()
        assert "secret=none" in scripts_log  # the agent's environment never reaches hooks
        assert f"[{deployment_id}]" in log_text
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            status = agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            status = agent.wait()
        agent_log.close()
    assert status == 0, (tmp_path / "agent.log").read_text()
    assert config.secret_access_key not in (tmp_path / "agent.log").read_text()
