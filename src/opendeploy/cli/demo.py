"""``opendeploy demo``: the whole product on one machine, from nothing.

A server in a temporary data directory, local agents each with their own deployment and
destination roots (``opendeploy.localfleet``), the sample web app shipped in
``opendeploy/demo_app``: release 1 deployed HalfAtATime with the live view, then release 2,
whose health check fails on one host, and its rollback. Then it keeps serving (dashboard, API)
until Ctrl-C, and stops the agents and the server cleanly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from opendeploy.cli.deploy import create_deployment, follow
from opendeploy.cli.remote import Remote
from opendeploy.cli.render import make_console
from opendeploy.cli.rollback import find_rollback, start_rollback

__all__ = ["demo"]

APPLICATION: Final = "demo-web"
GROUP: Final = "production"
SERVICE_ROLE: Final = "arn:aws:iam::000000000000:role/opendeploy-demo"
AUTO_ROLLBACK_WAIT: Final = 3.0
_SERVER_MODULES: Final = ("uvicorn", "sqlalchemy", "starlette", "alembic")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _copy_tree(source: Traversable, destination: Path) -> None:
    """Copy package data (a directory, wherever the package is installed from)."""
    destination.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            _copy_tree(entry, destination / entry.name)
        else:
            (destination / entry.name).write_bytes(entry.read_bytes())


def _write_release(destination: Path, release: int, *, break_on: str | None = None) -> Path:
    """A copy of the demo app as release ``release`` (optionally failing on one host)."""
    _copy_tree(resources.files("opendeploy") / "demo_app", destination)
    (destination / "site" / "VERSION").write_text(f"{release}\n")
    index = destination / "site" / "index.html"
    index.write_text(index.read_text().replace("see VERSION", str(release)))
    for script in (destination / "scripts").glob("*.sh"):
        script.chmod(0o644 if script.name == "common.sh" else 0o755)
    if break_on is not None:
        (destination / "config" / "break-on-host").write_text(f"{break_on}\n")
    return destination


@contextlib.contextmanager
def _admin_credentials(server: Any) -> Iterator[None]:
    """Our own clients (push, CreateDeployment) use the demo server's admin key."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID=server.access_key_id,
        AWS_SECRET_ACCESS_KEY=server.secret_access_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(saved)


@dataclass
class _Demo:
    console: Console
    workdir: Path
    hosts: int
    pace: float
    server: Any = None
    fleet: Any = None

    def step(self, text: str) -> None:
        self.console.print()
        self.console.print(Text(f"▸ {text}", style="bold cyan"))

    def start(self, port: int) -> Remote:
        from opendeploy.localfleet import LocalFleet, start_server

        self.step(f"Starting an OpenDeploy server (data in {self.workdir / 'server'})")
        self.server = start_server(
            self.workdir / "server",
            port=port,
            args=["--long-poll-seconds", "10"],
            log_path=self.workdir / "server.log",
        )
        self.console.print(f"  listening on {self.server.endpoint}")
        self.step(f"Registering {self.hosts} hosts and starting their agents")
        self.fleet = LocalFleet(self.server, self.workdir / "fleet")
        self.fleet.add_hosts(
            self.hosts,
            tags={"env": "demo"},
            hook_environment={
                "DEMO_HOST": "{host}",
                "DESTINATION_ROOT": "{home}/fs",
                "DEMO_PACE": f"{self.pace:g}",
            },
        )
        for agent in self.fleet.agents:
            self.console.print(
                f"  {agent.name}: agent pid {agent.process.pid if agent.process else '?'}, "
                f"files under {agent.destination_root}",
                style="dim",
            )
        return Remote(self.server.endpoint, "us-east-1")

    def stop(self) -> None:
        if self.fleet is not None:
            for agent in self.fleet.agents:
                agent.signal(signal.SIGTERM)
        if self.server is not None and self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGINT)
        if self.fleet is not None:
            self.fleet.stop()
        if self.server is not None:
            self.server.stop()

    def kill(self) -> None:
        """A second Ctrl-C: no more waiting."""
        processes = [agent.process for agent in (self.fleet.agents if self.fleet else [])]
        processes.append(self.server.process if self.server is not None else None)
        for process in processes:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _setup_group(remote: Remote) -> None:
    codedeploy = remote.codedeploy_once
    remote.call(
        codedeploy.create_application, applicationName=APPLICATION, computePlatform="Server"
    )
    remote.call(
        codedeploy.create_deployment_group,
        applicationName=APPLICATION,
        deploymentGroupName=GROUP,
        serviceRoleArn=SERVICE_ROLE,
        deploymentConfigName="CodeDeployDefault.HalfAtATime",
        onPremisesInstanceTagFilters=[{"Key": "env", "Value": "demo", "Type": "KEY_AND_VALUE"}],
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE"]},
    )


def _auto_rollback(remote: Remote, failed_id: str) -> str | None:
    """The rollback deployment the server started for ``failed_id``, if it does that."""
    deadline = time.monotonic() + AUTO_ROLLBACK_WAIT
    while True:
        info = remote.deployment(failed_id)
        rollback_id = (info.get("rollbackInfo") or {}).get("rollbackDeploymentId")
        if rollback_id:
            return str(rollback_id)
        active = remote.active_deployment(APPLICATION, GROUP)
        if active and active != failed_id:
            return active
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def _deploy_release(
    demo: _Demo, remote: Remote, release: int, *, config: str | None, break_on: str | None
) -> tuple[str, int]:
    from opendeploy.cli.push import push_directory

    source = _write_release(
        demo.workdir / "releases" / f"release-{release}", release, break_on=break_on
    )
    revision = push_directory(
        source,
        application=APPLICATION,
        description=f"demo release {release}",
        endpoint=remote.endpoint,
        region=remote.region,
    )
    deployment_id = create_deployment(
        remote,
        application=APPLICATION,
        group=GROUP,
        revision=revision,
        config=config,
        description=f"release {release}" + (" (broken on purpose)" if break_on else ""),
    )
    demo.console.print(f"  created deployment [bold]{deployment_id}[/bold]")
    code = follow(remote, deployment_id, console=demo.console, output="text")
    return deployment_id, code


def _explain(demo: _Demo, remote: Remote, failed_id: str, broken_host: str) -> None:
    endpoint = remote.endpoint
    credentials = demo.workdir / "server" / "admin-credentials"
    first = demo.fleet.agents[0]
    site = first.destination_root / "srv" / "opendeploy-demo" / "site" / "index.html"
    text = Text()
    text.append("Dashboard: ", style="bold")
    text.append(f"{endpoint}/ui\n")
    text.append("Admin credentials: ", style="bold")
    text.append(f"{credentials}\n\n")
    text.append("Use them from another terminal:\n", style="bold")
    text.append(
        f"  export AWS_SHARED_CREDENTIALS_FILE={credentials}\n"
        "  export AWS_DEFAULT_REGION=us-east-1\n"
        f"  export OPENDEPLOY_ENDPOINT={endpoint}\n"
        "  opendeploy list\n"
        f"  opendeploy logs {failed_id} --instance {broken_host} --event ValidateService\n"
        f"  opendeploy plan --application {APPLICATION} --deployment-group {GROUP}\n"
        f"  aws deploy list-deployments --endpoint-url {endpoint}\n"
        "  python -c \"import boto3; print(boto3.client('codedeploy',\n"
        f"      endpoint_url='{endpoint}').list_applications())\"\n\n"
    )
    text.append("The site on one host: ", style="bold")
    text.append(f"{site}\n")
    text.append("Everything lives in: ", style="bold")
    text.append(str(demo.workdir))
    demo.console.print()
    demo.console.print(Panel(text, title="OpenDeploy demo is running", title_align="left"))


def run_demo(*, hosts: int, port: int, keep: bool, pace: float, exit_after_deploy: bool) -> int:
    console = make_console()
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"the demo runs a server, which needs {', '.join(missing)}: "
            "pip install 'opendeploy[server]'"
        )
    if port and not _port_free(port):
        console.print(f"port {port} is taken; using a free one instead", style="yellow")
        port = 0
    workdir = Path(tempfile.mkdtemp(prefix="opendeploy-demo-"))
    demo = _Demo(console, workdir, hosts, pace)
    code = 0
    try:
        remote = demo.start(port)
        with _admin_credentials(demo.server):
            demo.step(
                f"Creating application {APPLICATION} and group {GROUP}: HalfAtATime, "
                "hosts tagged env=demo, auto rollback on failure"
            )
            _setup_group(remote)
            demo.step(f"Deploying release 1 to {hosts} hosts, half at a time")
            _, first_code = _deploy_release(demo, remote, 1, config=None, break_on=None)
            if first_code != 0:
                console.print(
                    f"release 1 did not deploy; see {workdir / 'server.log'} and the agents' "
                    f"logs in {workdir / 'fleet'}",
                    style="red",
                )
                keep = True
                return first_code
            broken_host = demo.fleet.agents[1].name
            demo.step(
                f"Deploying release 2, whose health check fails on {broken_host}, one host at "
                "a time (so the first failure stops it)"
            )
            failed_id, _ = _deploy_release(
                demo,
                remote,
                2,
                config="CodeDeployDefault.OneAtATime",
                break_on=broken_host,
            )
            demo.step("Rolling back to release 1")
            rollback_id = _auto_rollback(remote, failed_id)
            if rollback_id is not None:
                console.print(
                    f"  the server rolled back automatically (autoRollbackConfiguration "
                    f"DEPLOYMENT_FAILURE): {rollback_id}"
                )
            else:
                console.print(
                    "  this server does not act on autoRollbackConfiguration yet, so the demo "
                    f"rolls back itself, as `opendeploy rollback {failed_id}` does:"
                )
                plan = find_rollback(remote, deployment_id=failed_id)
                try:
                    rollback_id = start_rollback(remote, plan)
                except click.ClickException:
                    # The server may have started its own rollback after all.
                    late = _auto_rollback(remote, failed_id)
                    if late is None:
                        raise
                    rollback_id = late
                console.print(
                    f"  created deployment [bold]{rollback_id}[/bold]: {plan.description}"
                )
            rollback_code = follow(remote, rollback_id, console=console, output="text")
            console.print(
                f"rollback {rollback_id} "
                + ("succeeded: every host runs release 1 again" if rollback_code == 0 else "failed")
            )
            _explain(demo, remote, failed_id, broken_host)
            code = 0 if rollback_code == 0 else rollback_code
            if exit_after_deploy:
                return code
            console.print("serving until Ctrl-C ...", style="bold")
            while demo.server.process.poll() is None:
                time.sleep(0.5)
            console.print(f"the server exited; see {workdir / 'server.log'}", style="red")
            keep = True
            return 1
    except KeyboardInterrupt:
        console.print()
        return code
    except (RuntimeError, OSError) as error:
        keep = True
        raise click.ClickException(
            f"{error} (the server's log: {workdir / 'server.log'})"
        ) from error
    except BaseException as error:
        if not isinstance(error, SystemExit):  # SystemExit: Ctrl-C while watching
            keep = True  # whatever went wrong, its logs are worth keeping
        raise
    finally:
        console.print("stopping the agents and the server ...", style="dim")
        try:
            demo.stop()
        except KeyboardInterrupt:
            demo.kill()
        if keep:
            console.print(f"kept {workdir}", style="dim")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        console.print("stopped", style="dim")


@click.command(short_help="Try it all on this machine: server, hosts, app.")
@click.option(
    "--hosts",
    type=click.IntRange(2, 50),
    default=5,
    show_default=True,
    help="How many local hosts (agents) to run.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="The server's port (0, or a port in use: any free port).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory (data, logs) at exit.")
@click.option("--pace", type=float, default=0.3, hidden=True, help="Seconds each hook sleeps.")
@click.option("--exit-after-deploy", is_flag=True, hidden=True, help="Exit after the rollback.")
def demo(hosts: int, port: int, keep: bool, pace: float, exit_after_deploy: bool) -> None:
    """See OpenDeploy work on this machine, with no setup: a server, local agents, a sample
    web app deployed half at a time, a broken release that fails and is rolled back.

    Keeps serving the API and the dashboard until Ctrl-C, then stops everything it started
    and removes its temporary directory (unless --keep).
    """
    raise SystemExit(
        run_demo(hosts=hosts, port=port, keep=keep, pace=pace, exit_after_deploy=exit_after_deploy)
    )
