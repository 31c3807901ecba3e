"""Fleet benchmark: N simulated agents (protocol level, instant hooks) against one real server.

For every N it starts a real ``opendeploy server`` process on a fresh database (SQLite in a
temporary data dir, or a throwaway database on the PostgreSQL server --database-url names),
registers N hosts through the API (IAM user, agent policy, access key,
RegisterOnPremisesInstance; a thread pool of boto3 clients), then runs N simulated agents in
this process: asyncio + aiohttp, every request SigV4-signed by the agent's own signer
(``opendeploy.agent.transport.Signer``, as real agents sign), hooks instant. Real agents run on
hosts of their own; the simulator shares this machine's cores with the server, so it is kept
cheap (its CPU is printed beside the server's). Each agent speaks as OpenDeploy's agent does:
TakeHostCommand (the long poll, whose command comes with the deployment's specification) ->
PutHostCommandAcknowledgement, then for every event PutHostCommandCompleteAndTakeNext, whose
answer carries the host's next command of the deployment already acknowledged (one request per
lifecycle event); with ``--stock-protocol`` as the stock CodeDeploy agent does: poll,
acknowledgement and PutHostCommandComplete for every event. The agents start spread over one
long-poll period, so their polls are out of phase as in a real fleet. Measured:

- idle: over --idle-seconds with N agents long-polling: requests/s the agents sent, server CPU
  (% of one core), PostgreSQL's CPU (the backends connected to the bench's database), server
  RSS;
- deploy: CreateDeployment -> Succeeded with AllAtOnce to all N; server CPU-seconds over that
  time, PostgreSQL's, server peak RSS (VmHWM); ``ready_to_received_*``: dispatch latency from
  the moment the server created a command (its ``created_time``, read from the database after
  the run; the simulator runs on the same clock) to the agent receiving it, over all of the
  deployment's commands; and dispatch latency p50/p99 as the agents see it:
  for a deployment's first command, from CreateDeployment's answer to the poll answer
  carrying it (``first_dispatch_*``); for the next ones, from the moment the agent's previous
  event ended (its completion is sent) to the answer carrying the next command (the
  completion's own answer, or with the stock protocol the completion and the next poll:
  ``dispatch_*``); the simulator's own CPU-seconds;
- agent footprint (--agent-footprint): one real ``opendeploy agent run`` process (LocalFleet)
  idle for --idle-seconds: its RSS and CPU%.

The simulator shares the machine's cores with the server (and PostgreSQL): its CPU is printed
beside the server's. Prints one line per measurement:

    fleet backend=sqlite replicas=1 protocol=opendeploy hosts=N phase=register wall_s=...
        hosts_per_s=...
    fleet backend=sqlite replicas=1 protocol=opendeploy hosts=N phase=idle window_s=30
        requests_per_s=... server_cpu_pct=... db_cpu_pct=... sim_cpu_pct=... server_rss_mb=...
    fleet backend=sqlite replicas=1 protocol=opendeploy hosts=N phase=deploy config=AllAtOnce
        status=Succeeded wall_s=... hosts_succeeded=N completions_answered=.../7N commands_per_s=...
        server_cpu_s=... server_peak_rss_mb=...
        dispatch_p50_ms=... dispatch_p99_ms=... first_dispatch_p50_ms=... ...
    agent footprint idle_s=30 rss_mb=... cpu_pct=...

(each on one line). A deployment still running after --deploy-timeout is reported with
``status=Unfinished`` and what it did by then. ``--replicas 2`` runs two servers on one
PostgreSQL database and splits the agents between them (their CPU and RSS are added up).
``--verbose`` adds ``#`` lines: request durations by operation and dispatch latency by event.

Usage: python bench/fleet.py [--hosts 500,1000,2000] [--database-url postgresql+psycopg://...]
       [--replicas 1] [--idle-seconds 30] [--long-poll-seconds 45] [--deploy-timeout 1800]
       [--verbose] [--stock-protocol] [--agent-footprint] [--no-fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from botocore.credentials import Credentials

from opendeploy.agent.transport import Signer
from opendeploy.localfleet import REGION, LocalFleet, LocalServer, start_server
from opendeploy.store.database import make_sqlite_url

AGENT_POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"
SERVICE_ROLE = "arn:aws:iam::000000000000:role/bench"
TARGET_PREFIX = "CodeDeployCommandService_v20141006."
EXTENSIONS_PREFIX = "OpenDeployAgent_20261126."
JSON_TYPE = "application/x-amz-json-1.1"
SUCCESS = json.dumps({"error_code": 0, "script_name": "", "message": "Succeeded", "log": ""})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The server processes running now (a SIGTERM stops them first, so nothing waits on them).
RUNNING: list[LocalServer] = []


# -- process figures from /proc ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def database_cpu_seconds(database_url: str) -> dict[int, float]:
    """CPU-seconds of each PostgreSQL backend process now connected to the database."""
    if not database_url:
        return {}
    url = sa.engine.make_url(database_url)
    engine = sa.create_engine(url.set(database="postgres"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            pids = connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                {"name": url.database},
            ).scalars()
            found = {}
            for pid in pids:
                with contextlib.suppress(OSError):
                    found[int(pid)] = cpu_seconds(int(pid))
            return found
    finally:
        engine.dispose()


@dataclass
class Meter:
    """CPU of the servers, their PostgreSQL backends and this process between ``start`` and
    ``stop`` (a backend that exits in between is not counted)."""

    pids: Sequence[int]
    database_url: str
    started: float = 0.0
    server_cpu: float = 0.0
    db_cpu: float = 0.0
    own_cpu: float = 0.0
    wall: float = 0.0
    _db_start: dict[int, float] = field(default_factory=dict)

    def start(self) -> Meter:
        self.started = time.monotonic()
        self.server_cpu = -sum(cpu_seconds(pid) for pid in self.pids)
        self._db_start = database_cpu_seconds(self.database_url)
        self.own_cpu = -time.process_time()
        return self

    def stop(self) -> Meter:
        self.wall = time.monotonic() - self.started
        self.server_cpu += sum(cpu_seconds(pid) for pid in self.pids)
        now = database_cpu_seconds(self.database_url)
        self.db_cpu = sum(cpu - self._db_start.get(pid, 0.0) for pid, cpu in now.items())
        self.own_cpu += time.process_time()
        return self


# -- registration through the API ---------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    arn: str
    credentials: Credentials


def register_hosts(server: LocalServer, count: int, tag: str, threads: int = 8) -> list[Host]:
    """``count`` hosts, each with its agent user and key, tagged ``tag=on`` (in batches)."""
    local = threading.local()

    def clients() -> tuple[Any, Any]:
        if not hasattr(local, "iam"):
            local.iam = server.client("iam", max_pool_connections=2)
            local.codedeploy = server.client("codedeploy", max_pool_connections=2)
        return local.iam, local.codedeploy

    def one(index: int) -> Host:
        iam, codedeploy = clients()
        name = f"sim-{index:05d}"
        user = f"agent-{name}"
        arn = iam.create_user(UserName=user)["User"]["Arn"]
        iam.attach_user_policy(UserName=user, PolicyArn=AGENT_POLICY)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=arn)
        return Host(name, arn, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))

    def tag_batch(names: list[str]) -> None:
        _, codedeploy = clients()
        codedeploy.add_tags_to_on_premises_instances(
            instanceNames=names, tags=[{"Key": tag, "Value": "on"}]
        )

    with ThreadPoolExecutor(threads) as pool:
        hosts = list(pool.map(one, range(count)))
        names = [host.name for host in hosts]
        list(pool.map(tag_batch, [names[i : i + 100] for i in range(0, len(names), 100)]))
    return hosts


# -- the simulated agents -----------------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    errors: int = 0
    #: When the current deployment's CreateDeployment returned (monotonic), if any.
    created_at: float | None = None
    #: When each host received a deployment's first command (monotonic): the dispatch
    #: latency is counted from CreateDeployment's answer, which may come later.
    first_received: list[float] = field(default_factory=list)
    #: Dispatch latencies (s) of every later command.
    later: list[float] = field(default_factory=list)
    #: When each command was received (wall clock, the server's clock: same machine).
    received_at: dict[str, float] = field(default_factory=dict)
    #: The same, by command name.
    by_event: dict[str, list[float]] = field(default_factory=dict)
    #: Request durations (s) by operation, polls that carried a command only.
    by_operation: dict[str, list[float]] = field(default_factory=dict)
    #: Hosts that completed each deployment's last command; commands completed.
    completed: int = 0
    completes: int = 0
    first_polls: int = 0
    #: Error messages seen, with how often.
    kinds: Counter[str] = field(default_factory=Counter)

    def error(self, error: BaseException) -> None:
        self.errors += 1
        self.kinds[f"{type(error).__name__}: {str(error)[:160]}"] += 1


class SimAgent:
    def __init__(
        self, host: Host, endpoint: str, http: aiohttp.ClientSession, stats: Stats, *, stock: bool
    ) -> None:
        self.host = host
        #: Speak only the stock agent's operations (else take each next command with the
        #: completion, as OpenDeploy's agent does).
        self.stock = stock
        self.url = endpoint + "/"
        self.http = http
        self.stats = stats
        self.signer = Signer(
            host.credentials.access_key, host.credentials.secret_key, REGION, "codedeploy-commands"
        )
        self.netloc = endpoint.partition("://")[2]
        self.specs: set[str] = set()

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        *,
        attempts: int = 1,
        prefix: str = TARGET_PREFIX,
    ) -> dict[str, Any]:
        """One signed request; retried (1 s apart) on errors when ``attempts`` > 1, as the
        agent retries its acknowledgements and completions."""
        for attempt in range(1, attempts + 1):
            try:
                return await self._call(operation, params, prefix)
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as error:
                if attempt == attempts:
                    raise
                self.stats.error(error)
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _call(self, operation: str, params: dict[str, Any], prefix: str) -> dict[str, Any]:
        body = json.dumps(params).encode()
        headers = {
            "Host": self.netloc,
            "Content-Type": JSON_TYPE,
            "X-Amz-Target": prefix + operation,
        }
        self.signer.sign("POST", "/", headers, hashlib.sha256(body).hexdigest())
        self.stats.requests += 1
        started = time.monotonic()
        async with self.http.post(self.url, data=body, headers=headers) as response:
            content = await response.read()
        is_poll = operation in ("PollHostCommand", "TakeHostCommand")
        if not is_poll or b"HostCommand" in content:
            elapsed = time.monotonic() - started
            self.stats.by_operation.setdefault(operation, []).append(elapsed)
        if response.status != 200:
            raise RuntimeError(f"{operation}: HTTP {response.status} {content[:200]!r}")
        result: dict[str, Any] = json.loads(content)
        return result

    async def run(self, delay: float, last_event: str) -> None:
        await asyncio.sleep(delay)
        stats = self.stats
        reported_at: float | None = None  # when the agent reported its previous event, if any
        previous_execution = ""
        first_poll = True
        #: A command handed with the previous completion (acknowledged already), if any.
        taken: dict[str, Any] | None = None
        while True:
            try:
                command = taken
                taken = None
                if command is None:
                    if first_poll:
                        first_poll = False
                        stats.first_polls += 1
                    if self.stock:
                        response = await self.call(
                            "PollHostCommand", {"HostIdentifier": self.host.arn}
                        )
                    else:
                        response = await self.call(
                            "TakeHostCommand",
                            {"HostIdentifier": self.host.arn},
                            prefix=EXTENSIONS_PREFIX,
                        )
                    command = response.get("HostCommand")
                    if not command:
                        continue
                    acknowledged = False
                    if "DeploymentSpecification" in response:
                        self.specs.add(command["DeploymentExecutionId"])
                else:
                    acknowledged = True
                received = time.monotonic()
                stats.received_at[command["HostCommandIdentifier"]] = time.time()
                execution = command["DeploymentExecutionId"]
                if execution == previous_execution and reported_at is not None:
                    latency = received - reported_at
                    stats.later.append(latency)
                    stats.by_event.setdefault(command["CommandName"], []).append(latency)
                else:
                    stats.first_received.append(received)
                previous_execution = execution
                command_id = command["HostCommandIdentifier"]
                if execution not in self.specs:
                    await self.call(
                        "GetDeploymentSpecification",
                        {"DeploymentExecutionId": execution, "HostIdentifier": self.host.arn},
                    )
                    self.specs.add(execution)
                if not acknowledged:
                    await self.call(
                        "PutHostCommandAcknowledgement",
                        {
                            "HostCommandIdentifier": command_id,
                            "Diagnostics": {
                                "Format": "JSON",
                                "Payload": '{"IsCommandNoop":false}',
                            },
                        },
                        attempts=5,
                    )
                # The hook ran (instantly): from here the host waits for its next command.
                reported_at = time.monotonic()
                completion = {
                    "HostCommandIdentifier": command_id,
                    "CommandStatus": "Succeeded",
                    "Diagnostics": {"Format": "JSON", "Payload": SUCCESS},
                }
                if self.stock:
                    await self.call("PutHostCommandComplete", completion, attempts=60)
                else:
                    answer = await self.call(
                        "PutHostCommandCompleteAndTakeNext",
                        {**completion, "HostIdentifier": self.host.arn},
                        attempts=60,
                        prefix=EXTENSIONS_PREFIX,
                    )
                    taken = answer.get("HostCommand") or None
                stats.completes += 1
                if command["CommandName"] == last_event:
                    stats.completed += 1
                    reported_at = None
            except asyncio.CancelledError:
                raise
            except Exception as error:
                stats.error(error)
                taken = None
                await asyncio.sleep(1.0)


# -- one run -------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@contextlib.contextmanager
def fresh_database(base_url: str) -> Iterator[str]:
    """A throwaway database on the PostgreSQL server ``base_url`` names; "" for SQLite."""
    if not base_url:
        yield ""
        return
    name = "od_bench_fleet_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def servers(
    work: Path, database_url: str, replicas: int, long_poll: float
) -> Iterator[list[LocalServer]]:
    """``replicas`` server processes on one database (they share the secret-sealing key)."""
    from opendeploy.server.secrets import SecretBox

    # AWS's default ceiling is 1000 targets per deployment; the fleet runs go past it.
    args = ["--long-poll-seconds", str(long_poll), "--max-instances-per-deployment", "100000"]
    if database_url:
        args += ["--database-url", database_url]
    env = {"OPENDEPLOY_SECRET_KEY": SecretBox.generate_key()}
    started: list[LocalServer] = []
    logs = Path(tempfile.gettempdir()) / "od-bench-fleet-logs"
    logs.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    try:
        for index in range(1, replicas + 1):
            data_dir = work / f"server-{index}"
            if started:
                data_dir.mkdir(mode=0o700)
                shutil.copy(started[0].credentials_file, data_dir / "admin-credentials")
            log = logs / f"{tag}-server-{index}.log"
            started.append(start_server(data_dir, args=args, env=env, log_path=log))
            RUNNING.append(started[-1])
            print(f"# server {index} log: {log}", flush=True)
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGINT)
        for server in started:
            server.stop()
            RUNNING.remove(server)


def ready_to_received(
    database_url: str, deployment_id: str, received_at: Mapping[str, float]
) -> list[float]:
    """Dispatch latency as the server defines a command ready: from the command's creation
    (``host_commands.created_time``, written in the transaction that decided it) to the
    agent receiving it, for every command of the deployment an agent received."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT id, created_time FROM host_commands WHERE deployment_id = :d"),
                {"d": deployment_id},
            ).all()
    finally:
        engine.dispose()
    return [max(0.0, received_at[id_] - created) for id_, created in rows if id_ in received_at]


def wait_deployment(
    codedeploy: Any, deployment_id: str, timeout: float, done: Callable[[], bool]
) -> dict[str, Any]:
    """GetDeployment until the deployment is over: every 20 ms once ``done()`` (every host
    reported its last event), every second before (GetDeployment reads every target: asking
    often would load the server being measured)."""
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        if info["status"] in ("Succeeded", "Failed", "Stopped"):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"{deployment_id} still {info['status']} after {timeout:.0f} s")
        pause = 0.02 if done() else 1.0
        while pause > 0 and not done():
            time.sleep(0.02)
            pause -= 0.02


async def run_fleet(
    label: str,
    hosts: int,
    database_url: str,
    replicas: int,
    idle_seconds: float,
    long_poll: float,
    emit: Callable[[str], None],
    verbose: bool = False,
    deploy_timeout: float = 1800.0,
    stock: bool = False,
) -> None:
    backend = "postgresql" if database_url else "sqlite"
    protocol = "stock" if stock else "opendeploy"
    prefix = f"fleet backend={backend} replicas={replicas} protocol={protocol} hosts={hosts}"
    with (
        tempfile.TemporaryDirectory(prefix="od-bench-fleet-") as temp,
        fresh_database(database_url) as url,
        servers(Path(temp), url, replicas, long_poll) as started,
    ):
        pids = [server.process.pid for server in started]
        admin = started[0]
        tag = f"fleet-{label}"
        begin = time.monotonic()
        fleet = await asyncio.to_thread(register_hosts, admin, hosts, tag)
        wall = time.monotonic() - begin
        emit(f"{prefix} phase=register wall_s={wall:.1f} hosts_per_s={hosts / wall:.0f}")

        # An overloaded server may take minutes to answer GetDeployment: wait for it.
        codedeploy = admin.client("codedeploy", read_timeout=600, connect_timeout=60)
        await asyncio.to_thread(codedeploy.create_application, applicationName="bench")
        await asyncio.to_thread(
            codedeploy.create_deployment_group,
            applicationName="bench",
            deploymentGroupName="fleet",
            serviceRoleArn=SERVICE_ROLE,
            deploymentConfigName="CodeDeployDefault.AllAtOnce",
            onPremisesInstanceTagFilters=[{"Key": tag, "Value": "on", "Type": "KEY_AND_VALUE"}],
        )
        stats = Stats()
        # One session (one connection) per agent, as real agents have. Idle connections are
        # dropped before the server's 5 s keep-alive timeout would: a request sent as the server
        # closes the connection fails.
        timeout = aiohttp.ClientTimeout(total=long_poll + 30, connect=30)
        async with contextlib.AsyncExitStack() as clients:
            agents = [
                SimAgent(
                    host,
                    started[index % len(started)].endpoint,
                    await clients.enter_async_context(
                        aiohttp.ClientSession(
                            connector=aiohttp.TCPConnector(limit=2, keepalive_timeout=3.0),
                            timeout=timeout,
                            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                        )
                    ),
                    stats,
                    stock=stock,
                )
                for index, host in enumerate(fleet)
            ]
            # Spread over one long-poll period: the polls are out of phase, as in a real fleet.
            ramp = long_poll
            tasks = [
                asyncio.create_task(agent.run(random.uniform(0, ramp), "ValidateService"))
                for agent in agents
            ]
            try:
                await asyncio.sleep(ramp + 2)
                if stats.first_polls < hosts:
                    raise RuntimeError(f"only {stats.first_polls} of {hosts} agents polled")
                rss_before = sum(status_kb(pid, "VmRSS") for pid in pids)
                requests = stats.requests
                meter = Meter(pids, url).start()
                await asyncio.sleep(idle_seconds)
                meter.stop()
                idle_requests = stats.requests - requests
                emit(
                    f"{prefix} phase=idle window_s={meter.wall:.0f} "
                    f"requests_per_s={idle_requests / meter.wall:.1f} "
                    f"server_cpu_pct={100 * meter.server_cpu / meter.wall:.2f} "
                    f"db_cpu_pct={100 * meter.db_cpu / meter.wall:.2f} "
                    f"sim_cpu_pct={100 * meter.own_cpu / meter.wall:.2f} "
                    f"server_rss_mb={rss_before / 1024:.0f} errors={stats.errors}"
                )

                requests = stats.requests
                errors = stats.errors
                completes = stats.completes
                stats.first_received.clear()
                stats.later.clear()
                stats.received_at.clear()
                meter = Meter(pids, url).start()
                deployment_id = await asyncio.to_thread(
                    lambda: codedeploy.create_deployment(
                        applicationName="bench",
                        deploymentGroupName="fleet",
                        revision={
                            "revisionType": "S3",
                            "s3Location": {
                                "bucket": "releases",
                                "key": "app.tgz",
                                "bundleType": "tgz",
                            },
                        },
                    )["deploymentId"]
                )
                stats.created_at = time.monotonic()
                try:
                    info = await asyncio.to_thread(
                        wait_deployment,
                        codedeploy,
                        deployment_id,
                        deploy_timeout,
                        lambda: stats.completed >= hosts,
                    )
                except TimeoutError:
                    info = {"status": "Unfinished"}
                meter.stop()
                # The server's count (a completion it stored may not have been answered yet).
                overview = (
                    await asyncio.to_thread(codedeploy.get_deployment, deploymentId=deployment_id)
                )["deploymentInfo"].get("deploymentOverview", {})
                peak = sum(status_kb(pid, "VmHWM") for pid in pids)
                later = stats.later
                # A poll may be answered before CreateDeployment has answered: that is 0.
                first = [max(0.0, at - stats.created_at) for at in stats.first_received]
                ready = await asyncio.to_thread(
                    ready_to_received,
                    url or make_sqlite_url(Path(temp) / "server-1"),
                    deployment_id,
                    stats.received_at,
                )
                done = stats.completes - completes
                stored = hosts * 7 if info["status"] == "Succeeded" else done
                line = (
                    f"{prefix} phase=deploy config=AllAtOnce status={info['status']} "
                    f"wall_s={meter.wall:.2f} hosts_succeeded={overview.get('Succeeded', 0)} "
                    f"completions_answered={done}/{hosts * 7} "
                    f"commands_per_s={stored / meter.wall:.1f} "
                    f"requests={stats.requests - requests} "
                    f"server_cpu_s={meter.server_cpu:.1f} db_cpu_s={meter.db_cpu:.1f} "
                    f"sim_cpu_s={meter.own_cpu:.1f} server_peak_rss_mb={peak / 1024:.0f} "
                    f"dispatch_p50_ms={1000 * percentile(later, 0.5):.1f} "
                    f"dispatch_p99_ms={1000 * percentile(later, 0.99):.1f} "
                    f"first_dispatch_p50_ms={1000 * percentile(first, 0.5):.0f} "
                    f"first_dispatch_p99_ms={1000 * percentile(first, 0.99):.0f} "
                    f"ready_to_received_p50_ms={1000 * percentile(ready, 0.5):.1f} "
                    f"ready_to_received_p99_ms={1000 * percentile(ready, 0.99):.1f} "
                    f"errors={stats.errors - errors}"
                )
                emit(line)
                if info["status"] not in ("Succeeded", "Unfinished"):
                    raise RuntimeError(f"{deployment_id} ended {info['status']}: {info}")
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for kind, count in stats.kinds.most_common(5):
                    emit(f"# {count} x {kind}")
                if verbose:
                    for operation, values in stats.by_operation.items():
                        emit(
                            f"# request {operation}: n={len(values)} "
                            f"p50_ms={1000 * percentile(values, 0.5):.0f} "
                            f"p99_ms={1000 * percentile(values, 0.99):.0f}"
                        )
                    for event, values in stats.by_event.items():
                        emit(
                            f"# dispatch {event}: n={len(values)} "
                            f"p50_ms={1000 * percentile(values, 0.5):.0f} "
                            f"p99_ms={1000 * percentile(values, 0.99):.0f} "
                            f"max_ms={1000 * max(values):.0f}"
                        )


def agent_footprint(idle_seconds: float, long_poll: float, emit: Callable[[str], None]) -> None:
    """One real agent process, registered with a real server, idle: its RSS and CPU%.

    The window spans at least two of the server's long polls, so the cost of re-polling is in
    it (CPU is counted in 10 ms ticks: over 95 s that resolves 0.01 %)."""
    idle_seconds = max(idle_seconds, 2 * long_poll + 5)
    with tempfile.TemporaryDirectory(prefix="od-bench-agent-") as temp:
        server = start_server(Path(temp) / "server", args=["--long-poll-seconds", str(long_poll)])
        fleet = LocalFleet(server, Path(temp) / "hosts")
        try:
            [agent] = fleet.add_hosts(1, prefix="footprint")
            assert agent.process is not None
            pid = agent.process.pid
            time.sleep(5.0)  # imports done, first poll held
            begin_cpu = cpu_seconds(pid)
            begin = time.monotonic()
            time.sleep(idle_seconds)
            wall = time.monotonic() - begin
            cpu = cpu_seconds(pid) - begin_cpu
            emit(
                f"agent footprint idle_s={wall:.0f} rss_mb={status_kb(pid, 'VmRSS') / 1024:.1f} "
                f"peak_rss_mb={status_kb(pid, 'VmHWM') / 1024:.1f} "
                f"cpu_pct={100 * cpu / wall:.3f} threads={_threads(pid)}"
            )
        finally:
            fleet.stop()
            server.stop()


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="500,1000,2000")
    parser.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server URL: each run makes (and drops) a throwaway database on it; "
        "empty: SQLite",
    )
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--long-poll-seconds", type=float, default=45.0, help="the server's (default 45)"
    )
    parser.add_argument("--agent-footprint", action="store_true")
    parser.add_argument("--no-fleet", action="store_true", help="only the agent footprint")
    parser.add_argument("--verbose", action="store_true", help="dispatch latency by event")
    parser.add_argument(
        "--stock-protocol",
        action="store_true",
        help="simulate the stock agent (poll, ack, complete per event) instead of ours",
    )
    parser.add_argument(
        "--deploy-timeout",
        type=float,
        default=1800.0,
        help="report the deployment as status=Unfinished (with what it did) after this",
    )
    args = parser.parse_args()

    def emit(line: str) -> None:
        print(line, flush=True)

    def terminate(*_: object) -> None:
        # Servers first: a call waiting on a saturated server then fails at once.
        for server in RUNNING:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGINT)
        raise SystemExit(143)  # clean up: servers stopped, throwaway databases dropped

    signal.signal(signal.SIGTERM, terminate)

    if not args.no_fleet:
        for count in sorted({int(n) for n in args.hosts.split(",")}):
            label = uuid.uuid4().hex[:6]
            asyncio.run(
                run_fleet(
                    label,
                    count,
                    args.database_url,
                    args.replicas,
                    args.idle_seconds,
                    args.long_poll_seconds,
                    emit,
                    args.verbose,
                    args.deploy_timeout,
                    args.stock_protocol,
                )
            )
    if args.agent_footprint:
        agent_footprint(args.idle_seconds, args.long_poll_seconds, emit)


if __name__ == "__main__":
    main()
