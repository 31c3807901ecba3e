"""Two server replicas on one PostgreSQL database and one S3 bundle store (SeaweedFS), with real
agents behind a TCP load balancer (a proxy in this process: half the agents' connections go to
replica 1, half to replica 2, and to the other one when theirs is down): any replica serves any
call, long polls wake across replicas (LISTEN/NOTIFY), one replica holds the reconciler lease,
and a replica killed with SIGKILL in the middle of a deployment loses nothing and makes nothing
run twice.

The tests share one cluster and run in file order: the last one kills replica 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import sqlalchemy as sa
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from e2e_support import (
    FIRST_ORDER,
    HOOK_ENVIRONMENT,
    SERVICE_ROLE,
    SeaweedFS,
    hook_lines,
    hook_script,
    tail,
    unique,
    write_bundle,
)

from opendeploy.agent.config import load_config, write_config
from opendeploy.cli.push import push_directory
from opendeploy.core.lifecycle import IN_PLACE_EVENTS
from opendeploy.localfleet import REGION, LocalFleet, LocalServer, start_server
from opendeploy.server.secrets import SecretBox

pytestmark = pytest.mark.e2e

POSTGRES_ENV = "OPENDEPLOY_TEST_POSTGRES_URL"
AGENT_POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"
HOSTS = 4
#: Only a NOTIFY can answer a held poll early: without one it waits this long (its safety-net
#: re-check of the database, every 30 s with replicas, comes later still).
LONG_POLL_SECONDS = 20
#: Every hook sleeps this long, so a OneAtATime deployment stays mid-way for a while.
HOOK_SECONDS = 0.5


# -- a load balancer: a TCP proxy on loopback --------------------------------------------------


class Balancer:
    """A TCP load balancer with one front port per preferred backend (session affinity).

    A connection to ``front(i)`` goes to backend ``i`` if it accepts a connection, otherwise to
    the next one that does (a failed health check, in effect). When either side of a proxied
    connection closes or resets, both are closed, so a client sees its connection drop when
    its backend dies and reconnects through the front. Runs its own event loop in a thread.
    """

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        #: Connections made, by (front, backend).
        self.connections: dict[tuple[int, int], int] = {}
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Future[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def front(self, prefer: int) -> str:
        """A new front port that prefers backend ``prefer``; its endpoint URL."""

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._serve(prefer, reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(accept, "127.0.0.1", 0), self._loop
        )
        server = future.result(timeout=10)
        self._servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def served(self, backend: int) -> int:
        return sum(n for (_, to), n in self.connections.items() if to == backend)

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(
        self, prefer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        count = len(self.backends)
        for index in [(prefer + step) % count for step in range(count)]:
            host, port = self.backends[index]
            try:
                upstream = await asyncio.open_connection(host, port)
            except OSError:
                continue
            key = (prefer, index)
            self.connections[key] = self.connections.get(key, 0) + 1
            break
        if upstream is None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        up_reader, up_writer = upstream
        pipes = {
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        }
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for side in (writer, up_writer):
                side.close()
                with contextlib.suppress(OSError):
                    await side.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    replicas: list[LocalServer]
    balancer: Balancer
    #: The replica (index) each agent's connections go to while it is up, by agent name.
    affinity: dict[str, int]
    fleet: LocalFleet
    database: sa.Engine
    seaweedfs: SeaweedFS
    workdir: Path
    clients: dict[tuple[int, str], Any] = field(default_factory=dict)

    def client(self, replica: int, service: str = "codedeploy") -> Any:
        """An admin client of one replica (no retries: a retry would hide what happened)."""
        key = (replica, service)
        if key not in self.clients:
            server = self.replicas[replica]
            self.clients[key] = boto3.session.Session().client(
                service,
                endpoint_url=server.endpoint,
                region_name=REGION,
                aws_access_key_id=server.access_key_id,
                aws_secret_access_key=server.secret_access_key,
                config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
            )
        return self.clients[key]

    def lease(self) -> dict[str, Any] | None:
        """The reconciler lease as stored: {"holder": "<host>:<pid>:<tag>", "expires": ...}."""
        with self.database.connect() as connection:
            value = connection.execute(
                sa.text("SELECT value FROM meta WHERE key = 'lease:reconciler'")
            ).scalar()
        return None if value is None else dict(json.loads(value))

    def lease_pid(self) -> int | None:
        lease = self.lease()
        return None if lease is None else int(str(lease["holder"]).split(":")[1])

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """A failing check inside gets the replicas' and agents' log tails."""
        try:
            yield
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    def logs(self) -> str:
        parts = [
            f"--- replica {index + 1} log\n{tail(server.log_path, 60)}"
            for index, server in enumerate(self.replicas)
        ]
        for agent in self.fleet.agents:
            parts.append(f"--- agent {agent.name}\n{tail(agent.log_path)}")
        return "\n".join(parts)


@contextlib.contextmanager
def _throwaway_database() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = "od_replicas_" + uuid.uuid4().hex[:12]
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("replicas")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_throwaway_database())
        seaweedfs = SeaweedFS.launch(workdir / "seaweedfs")
        stack.callback(seaweedfs.stop)
        bucket = seaweedfs.wait_ready()
        args = [
            "--database-url",
            url,
            "--bundle-store",
            f"s3://{bucket}/bundles",
            "--s3-endpoint-url",
            seaweedfs.endpoint,
            "--long-poll-seconds",
            str(LONG_POLL_SECONDS),
            "--heartbeat-timeout",
            "30",
        ]
        env = {
            # Replicas sharing a database must share the key that seals secrets at rest.
            "OPENDEPLOY_SECRET_KEY": SecretBox.generate_key(),
            "AWS_ACCESS_KEY_ID": SeaweedFS.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SeaweedFS.SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }
        replicas: list[LocalServer] = []

        def stop_replicas() -> None:
            for server in replicas:
                if server.process.poll() is None:
                    server.process.send_signal(signal.SIGINT)
            for server in replicas:
                server.stop()

        stack.callback(stop_replicas)
        replicas.append(start_server(workdir / "replica-1", args=args, env=env))
        # The first replica made the admin's key; the second finds users and makes none.
        (workdir / "replica-2").mkdir(mode=0o700)
        shutil.copy(replicas[0].credentials_file, workdir / "replica-2" / "admin-credentials")
        replicas.append(start_server(workdir / "replica-2", args=args, env=env))

        balancer = Balancer([("127.0.0.1", _port(server.endpoint)) for server in replicas])
        stack.callback(balancer.stop)
        fronts = [balancer.front(index) for index in range(len(replicas))]

        # Registered through replica 1; then half the agents go through the front that prefers
        # replica 1, half through the one that prefers replica 2.
        fleet = LocalFleet(replicas[0], workdir / "fleet")
        stack.callback(fleet.stop)
        affinity = {}
        added = fleet.add_hosts(HOSTS, hook_environment=HOOK_ENVIRONMENT, start=False)
        for index, agent in enumerate(added):
            affinity[agent.name] = index % len(fronts)
            config = load_config(agent.config_path)
            endpoint = fronts[affinity[agent.name]]
            write_config(agent.config_path, dataclasses.replace(config, endpoint=endpoint))
            agent.start()

        database = sa.create_engine(url)
        stack.callback(database.dispose)
        yield Cluster(replicas, balancer, affinity, fleet, database, seaweedfs, workdir)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- a protocol-level poll ---------------------------------------------------------------------


@dataclass(frozen=True)
class SimHost:
    name: str
    arn: str
    credentials: Credentials


def _register_sim_host(cluster: Cluster, tag: dict[str, str]) -> SimHost:
    iam = cluster.client(0, "iam")
    name = unique("sim")
    arn = iam.create_user(UserName=f"agent-{name}")["User"]["Arn"]
    iam.attach_user_policy(UserName=f"agent-{name}", PolicyArn=AGENT_POLICY)
    key = iam.create_access_key(UserName=f"agent-{name}")["AccessKey"]
    codedeploy = cluster.client(0)
    codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=arn)
    codedeploy.add_tags_to_on_premises_instances(
        instanceNames=[name], tags=[{"Key": tag["Key"], "Value": tag["Value"]}]
    )
    return SimHost(name, arn, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))


def _poll(endpoint: str, host: SimHost) -> dict[str, Any]:
    """One signed PollHostCommand, as an agent sends it."""
    body = json.dumps({"HostIdentifier": host.arn}).encode()
    request = AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "CodeDeployCommandService_v20141006.PollHostCommand",
        },
    )
    SigV4Auth(host.credentials, "codedeploy-commands", REGION).add_auth(request)
    response = httpx.post(
        endpoint + "/",
        content=body,
        headers=dict(request.headers.items()),
        timeout=LONG_POLL_SECONDS + 10,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# -- the tests ---------------------------------------------------------------------------------


def test_a_long_poll_on_replica_2_wakes_when_replica_1_creates_its_command(
    cluster: Cluster, tmp_path: Path
) -> None:
    with cluster.explained():
        _wake_across_replicas(cluster, tmp_path)


def _wake_across_replicas(cluster: Cluster, tmp_path: Path) -> None:
    tag = {"Key": unique("wake"), "Value": "on"}
    host = _register_sim_host(cluster, tag)
    codedeploy = cluster.client(0)
    application = unique("app")
    codedeploy.create_application(applicationName=application)
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName="wake",
        serviceRoleArn=SERVICE_ROLE,
        onPremisesInstanceTagFilters=[{**tag, "Type": "KEY_AND_VALUE"}],
    )
    revision = _push(cluster, application, write_bundle(tmp_path / "b", destination="/srv/w"))

    answered: dict[str, Any] = {}

    def poll() -> None:
        answered["started"] = time.monotonic()
        answered["response"] = _poll(cluster.replicas[1].endpoint, host)
        answered["at"] = time.monotonic()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # Let replica 2 hold the poll (its first look finds nothing).
    time.sleep(0.5)
    deployment_id = codedeploy.create_deployment(
        applicationName=application, deploymentGroupName="wake", revision=revision
    )["deploymentId"]
    created = time.monotonic()
    poller.join(timeout=LONG_POLL_SECONDS + 15)
    assert "at" in answered, "the poll on replica 2 never answered"
    command = answered["response"].get("HostCommand")
    assert command is not None, answered
    assert command["DeploymentExecutionId"].endswith(deployment_id)
    assert command["CommandName"] == IN_PLACE_EVENTS[0]
    latency = answered["at"] - created
    # Without NOTIFY the poll would answer empty when its 20 s are up.
    assert latency < 1.5, f"the poll on replica 2 answered {latency:.2f} s after CreateDeployment"
    cluster.client(1).stop_deployment(deploymentId=deployment_id)


def test_one_replica_holds_the_reconciler_lease(cluster: Cluster) -> None:
    pids = [server.process.pid for server in cluster.replicas]
    # Replica 1 started first, so its reconciler's first pass (5 s after start) came first.
    until = time.monotonic() + 15
    while cluster.lease() is None and time.monotonic() < until:
        time.sleep(0.2)
    first = cluster.lease()
    assert first is not None, "no replica took the reconciler lease"
    assert cluster.lease_pid() == pids[0], (first, pids)
    # Over more than a reconciler interval both replicas try; the holder renews, the other
    # never takes it.
    holders = set()
    until = time.monotonic() + 6
    while time.monotonic() < until:
        lease = cluster.lease()
        assert lease is not None
        holders.add(lease["holder"])
        time.sleep(0.2)
    last = cluster.lease()
    assert last is not None
    assert holders == {first["holder"]}, holders
    assert float(last["expires"]) > float(first["expires"]), "the holder did not renew"


def test_a_replica_killed_mid_deployment_loses_nothing_and_repeats_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    with cluster.explained():
        _kill_replica_1_mid_deployment(cluster, tmp_path)


def _kill_replica_1_mid_deployment(cluster: Cluster, tmp_path: Path) -> None:
    agents = cluster.fleet.agents
    codedeploy = cluster.client(0)
    application = unique("app")
    codedeploy.create_application(applicationName=application)
    tag = unique("replicas")
    codedeploy.add_tags_to_on_premises_instances(
        tags=[{"Key": tag, "Value": "on"}], instanceNames=[agent.name for agent in agents]
    )
    codedeploy.create_deployment_group(
        applicationName=application,
        deploymentGroupName="prod",
        serviceRoleArn=SERVICE_ROLE,
        deploymentConfigName="CodeDeployDefault.OneAtATime",
        onPremisesInstanceTagFilters=[{"Key": tag, "Value": "on", "Type": "KEY_AND_VALUE"}],
    )
    destination = f"/srv/{unique('site')}"
    bundle = write_bundle(
        tmp_path / "bundle",
        destination=destination,
        content="replicated\n",
        scripts={
            f"scripts/{name}.sh": hook_script(name, f"sleep {HOOK_SECONDS}\n")
            for name in ("before_install", "after_install", "start", "validate")
        },
    )
    revision = _push(cluster, application, bundle)
    assert revision["s3Location"]["bucket"] != "opendeploy-local", revision
    deployment_id = codedeploy.create_deployment(
        applicationName=application, deploymentGroupName="prod", revision=revision
    )["deploymentId"]

    # Kill replica 1 the moment a hook starts on a host whose agent talks to replica 1, once
    # an earlier host has finished: that agent is between its acknowledgement and its
    # completion (the hook sleeps), so no command is claimed on replica 1 and unanswered.
    seen = {agent.name: 0 for agent in agents}
    victim = None
    until = time.monotonic() + 30
    while victim is None:
        assert time.monotonic() < until, "no hook started on a host served by replica 1"
        counts = {agent.name: len(hook_lines(agent, deployment_id)) for agent in agents}
        finished = any(count == len(FIRST_ORDER) for count in counts.values())
        for name, count in counts.items():
            started_hook = count > seen[name] and count < len(FIRST_ORDER)
            if finished and started_hook and cluster.affinity[name] == 0:
                victim = name
        seen = counts
        if victim is None:
            time.sleep(0.005)
    cluster.replicas[0].process.kill()
    cluster.replicas[0].process.wait(timeout=10)
    killed_at = time.monotonic()
    served_before = [cluster.balancer.served(0), cluster.balancer.served(1)]
    assert all(served_before), f"a replica served no agent connection: {served_before}"
    failed_over = cluster.balancer.connections.get((0, 1), 0)

    survivor = cluster.client(1)
    until = time.monotonic() + 45
    while True:
        info = survivor.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
        if info["status"] in ("Succeeded", "Failed", "Stopped"):
            break
        assert time.monotonic() < until, f"{deployment_id} still {info['status']}"
        time.sleep(0.1)
    assert info["status"] == "Succeeded", info
    assert info["deploymentOverview"]["Succeeded"] == HOSTS, info["deploymentOverview"]
    # The agents of replica 1 reached replica 2 through the balancer.
    assert cluster.balancer.connections.get((0, 1), 0) > failed_over, cluster.balancer.connections

    # The API (through replica 2): every host went through every event, each Succeeded.
    ids = survivor.list_deployment_targets(deploymentId=deployment_id)["targetIds"]
    found = survivor.batch_get_deployment_targets(deploymentId=deployment_id, targetIds=ids)
    for target in found["deploymentTargets"]:
        events = target["instanceTarget"]["lifecycleEvents"]
        assert [e["lifecycleEventName"] for e in events] == list(IN_PLACE_EVENTS), target
        assert {e["status"] for e in events} == {"Succeeded"}, target

    # The store: one command per host and event, each completed once, successfully.
    with cluster.database.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT instance_name, event, status, acked_time, completed_time "
                "FROM host_commands WHERE deployment_id = :id"
            ),
            {"id": deployment_id},
        ).all()
    by_host: dict[str, list[str]] = {}
    for row in rows:
        assert row.status == "Succeeded", row
        assert row.acked_time is not None and row.completed_time is not None, row
        by_host.setdefault(row.instance_name, []).append(row.event)
    assert sorted(by_host) == sorted(agent.name for agent in agents)
    for name, events in by_host.items():
        assert sorted(events) == sorted(IN_PLACE_EVENTS), (name, events)

    # The hosts: every hook ran exactly once, in order, and the files are in place.
    for agent in agents:
        lines = hook_lines(agent, deployment_id)
        assert [line.event for line in lines] == FIRST_ORDER, (agent.name, lines)
        installed = agent.destination_root / destination.lstrip("/") / "index.html"
        assert installed.read_text() == "replicated\n", agent.name

    # The reconciler lease passes to replica 2 once replica 1's expires (15 s, renewed every
    # 5 s, looked at every 5 s by replica 2).
    until = killed_at + 25
    while cluster.lease_pid() != cluster.replicas[1].process.pid:
        assert time.monotonic() < until, f"the lease stayed with {cluster.lease()}"
        time.sleep(0.2)


def _push(cluster: Cluster, application: str, directory: Path) -> dict[str, Any]:
    """``opendeploy push`` through replica 1, with the admin's credentials."""
    saved = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(cluster.replicas[0].credentials_file)
    try:
        return push_directory(
            directory,
            application=application,
            description=None,
            endpoint=cluster.replicas[0].endpoint,
            region=REGION,
        )
    finally:
        if saved is None:
            os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
        else:
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = saved
