"""How trigger deliveries behave when targets misbehave, and with several server replicas.

A real server (``triggerkit.trigger_site``: retries after 0.2 s, then 0.4 s; three attempts)
delivers to a real webhook receiver on loopback that answers as each test scripts it. The
claim tests run the store's claims against SQLite and PostgreSQL directly, and several trigger
workers against one server's database at once.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import agentsim
import pytest
import triggerkit
from agentsim import Fleet, Site
from triggerkit import Receiver

from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.triggers import TriggerOptions, TriggerWorker
from opendeploy.store import deployments as deployment_store
from opendeploy.store import triggers as store
from opendeploy.store.database import Database, make_sqlite_url

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
OPTIONS = TriggerOptions(interval=0.05, retry_base=0.2, timeout=15.0, max_attempts=3, concurrency=6)
ALL_EVENTS = ("DeploymentStart", "InstanceStart", "InstanceSuccess", "DeploymentSuccess")


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with triggerkit.trigger_site(
        request.param, tmp_path_factory.mktemp(f"delivery-{request.param}"), OPTIONS
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    opened = Receiver()
    yield opened
    opened.close()


@pytest.fixture
def fleet(site: Site) -> Iterator[Fleet]:
    fleet = Fleet(site)
    yield fleet
    fleet.stop()
    assert not fleet.errors(), fleet.errors()


def _deploy(fleet: Fleet, hosts: int, **triggers: tuple[str, tuple[str, ...]]) -> str:
    """A group with ``triggers`` (name -> (target, events)) deploying to ``hosts`` agents."""
    group = fleet.group(
        triggerConfigurations=[
            {"triggerName": name, "triggerTargetArn": target, "triggerEvents": list(events)}
            for name, (target, events) in triggers.items()
        ]
    )
    fleet.run_all(fleet.hosts(group, hosts))
    deployment_id = group.deploy(agentsim.s3_revision())
    assert agentsim.wait_for_deployment(fleet.site.codedeploy, deployment_id)["status"] == (
        "Succeeded"
    )
    return deployment_id


def test_backoff_spreads_eight_attempts_over_about_ten_minutes() -> None:
    options = TriggerOptions()
    delays = [options.retry_delay(n) for n in range(1, options.max_attempts)]
    assert delays == [5, 10, 20, 40, 80, 160, 300]
    assert 9 * 60 <= sum(delays) <= 11 * 60


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_a_500_is_retried_with_the_same_delivery_until_it_succeeds(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    url = receiver.script(f"/{fleet.prefix}/flaky", 500, 503)
    deployment_id = _deploy(fleet, 1, flaky=(url, ("DeploymentSuccess",)))
    client = triggerkit.extensions(site.server)
    (record,) = triggerkit.wait_for_deliveries(client, deployment_id, 1)
    assert record["status"] == "Delivered", record
    assert record["attempts"] == 3
    assert record["lastHttpStatus"] == 200
    assert "lastError" not in record
    assert record["completeTime"] >= record["lastAttemptTime"] > record["createTime"]
    attempts = receiver.at(f"/{fleet.prefix}/flaky")
    assert [a.status for a in attempts] == [500, 503, 200]
    assert {a.delivery_id for a in attempts} == {record["deliveryId"]}
    assert len({a.body for a in attempts}) == 1
    assert len({a.headers["x-opendeploy-signature"] for a in attempts}) == 1
    gaps = [later.started - earlier.started for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_a_404_fails_for_good_and_the_record_says_so(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    url = receiver.script(f"/{fleet.prefix}/gone", 404, 404, 404)
    deployment_id = _deploy(fleet, 1, gone=(url, ("DeploymentStart", "DeploymentSuccess")))
    client = triggerkit.extensions(site.server)
    records = triggerkit.wait_for_deliveries(client, deployment_id, 2)
    for record in records:
        assert record["status"] == "Failed", record
        assert record["attempts"] == 1
        assert record["lastHttpStatus"] == 404
        assert record["lastError"].startswith("HTTP 404 Not Found")
        assert "scripted answer" in record["lastError"]
        assert "nextAttemptTime" not in record
    time.sleep(0.5)  # past the first retry delay: nothing is tried again
    assert len(receiver.at(f"/{fleet.prefix}/gone")) == 2


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_retries_stop_after_the_last_attempt(site: Site, fleet: Fleet, receiver: Receiver) -> None:
    broken = receiver.script(f"/{fleet.prefix}/broken", *[500] * 10)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    deployment_id = _deploy(
        fleet,
        1,
        broken=(broken, ("DeploymentSuccess",)),
        unreachable=(closed, ("DeploymentSuccess",)),
    )
    client = triggerkit.extensions(site.server)
    records = {
        r["triggerName"]: r for r in triggerkit.wait_for_deliveries(client, deployment_id, 2)
    }
    assert records["broken"]["status"] == "Failed"
    assert records["broken"]["attempts"] == 3
    assert records["broken"]["lastHttpStatus"] == 500
    assert records["broken"]["lastError"].endswith("(gave up after 3 attempts)")
    assert records["unreachable"]["status"] == "Failed"
    assert records["unreachable"]["attempts"] == 3
    assert "lastHttpStatus" not in records["unreachable"]
    assert records["unreachable"]["lastError"].startswith("ConnectError")
    assert len(receiver.at(f"/{fleet.prefix}/broken")) == 3


@pytest.mark.parametrize("site", ["sqlite"], indirect=True)
def test_a_receiver_that_takes_10_s_does_not_slow_the_deployment(
    site: Site, fleet: Fleet, receiver: Receiver
) -> None:
    path = f"/{fleet.prefix}/slow"
    url = receiver.script(path, delay=10.0)
    group = fleet.group(
        triggerConfigurations=[
            {"triggerName": "slow", "triggerTargetArn": url, "triggerEvents": list(ALL_EVENTS)}
        ]
    )
    fleet.run_all(fleet.hosts(group, 2))
    began = time.monotonic()
    deployment_id = group.deploy(agentsim.s3_revision())
    # The receiver is holding the DeploymentStart delivery while the deployment runs.
    agentsim.wait_for(lambda: receiver.in_flight > 0, timeout=5, what="a held delivery")
    info = agentsim.wait_for_deployment(site.codedeploy, deployment_id)
    took = time.monotonic() - began
    assert info["status"] == "Succeeded"
    assert took < 5.0, took
    assert receiver.at(path) == [], "a delivery finished before the deployment did"
    assert receiver.in_flight > 0

    client = triggerkit.extensions(site.server)
    records = triggerkit.wait_for_deliveries(client, deployment_id, 6, timeout=25)
    assert {r["status"] for r in records} == {"Delivered"}
    assert {r["attempts"] for r in records} == {1}
    assert all(r.started - began >= 0 for r in receiver.at(path))


def test_replicas_deliver_each_event_once(
    site: Site, fleet: Fleet, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Two more trigger workers (as other server replicas would run) share the database with
    the server's own; 40 outbox rows are delivered once each, none twice."""
    caplog.set_level(logging.WARNING, logger="opendeploy.server.triggers")
    path = f"/{fleet.prefix}/replicas"
    deployment_id = _deploy(fleet, 1, count=(receiver.url(path), ("DeploymentSuccess",)))
    client = triggerkit.extensions(site.server)
    triggerkit.wait_for_deliveries(client, deployment_id, 1)
    database = Database(site.database_url)
    replicas: list[TriggerWorker] = []
    try:
        with database.read() as connection:
            deployment = deployment_store.by_id(connection, deployment_id)
        assert deployment is not None
        context = ServiceContext(
            db=database,
            secrets=SecretBox.from_file(site.server.data_dir / "secret.key"),
            account_id=site.server.account_id,
            region="us-east-1",
            clock=time.time,
        )
        options = TriggerOptions(interval=0.02, timeout=5.0, concurrency=4)
        replicas = [TriggerWorker(context, options) for _ in range(2)]
        for replica in replicas:
            replica.start()
        with database.write() as connection:
            for _ in range(40):
                deployment_store.add_notification(
                    connection,
                    deployment_id,
                    deployment.group_id,
                    "DeploymentSuccess",
                    now=time.time(),
                )
        records = triggerkit.wait_for_deliveries(client, deployment_id, 41, timeout=20)
    finally:
        for replica in replicas:
            replica.stop()
        database.dispose()
    assert {r["status"] for r in records} == {"Delivered"}
    assert {r["attempts"] for r in records} == {1}
    received = Counter(r.delivery_id for r in receiver.at(path))
    assert set(received) == {r["deliveryId"] for r in records}
    assert set(received.values()) == {1}
    problems = [r for r in caplog.records if r.name == "opendeploy.server.triggers"]
    assert not problems, [r.getMessage() for r in problems]


# -- claims, directly against the store --------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """An empty database for this module's claim tests (SQLite, or a throwaway PostgreSQL
    database); each test works in a time window of its own, so none sees another's claims."""
    directory = tmp_path_factory.mktemp(f"claims-{request.param}")
    with agentsim._database(request.param, directory) as url:
        db = Database(url or make_sqlite_url(directory))
        db.upgrade()
        try:
            yield db
        finally:
            db.dispose()


def _new(notification_id: int, deployment_id: str = "d-CLAIMTEST") -> store.NewDelivery:
    return store.NewDelivery(
        delivery_id=str(uuid.uuid4()),
        notification_id=notification_id,
        deployment_id=deployment_id,
        group_id="g",
        trigger_name="hook",
        target="http://127.0.0.1:9/hook",
        event="DeploymentStart",
        instance_name=None,
        subject=f"IN_PROGRESS: AWS CodeDeploy {deployment_id} in us-east-1 to app",
        body="{}",
    )


def _claim(database: Database, now: float, token: str, limit: int = 10) -> list[store.Delivery]:
    with database.write() as connection:
        return store.claim_due(
            connection, now=now, limit=limit, lease_seconds=10, max_attempts=2, token=token
        )


def test_a_claim_is_a_lease_taken_up_again_only_when_it_runs_out(database: Database) -> None:
    with database.write() as connection:
        store.add_deliveries(connection, [_new(1, "d-LEASETEST")], 1000.0)
    (first,) = _claim(database, 1000.0, "a")
    assert first.attempts == 1 and first.lease_until == 1010.0
    assert _claim(database, 1005.0, "b") == []
    (second,) = _claim(database, 1011.0, "c")
    assert second.delivery_id == first.delivery_id and second.attempts == 2
    with database.write() as connection:
        assert not store.finish(
            connection, first, status=store.DELIVERED, now=1012.0, http_status=200, error=None
        )
    # Its lease runs out too, after the last allowed attempt: it fails, unclaimed.
    assert _claim(database, 1030.0, "d") == []
    with database.read() as connection:
        (record,) = store.for_deployment(connection, "d-LEASETEST", offset=0, limit=10)
    assert record.status == store.FAILED
    assert "lease ran out" in (record.last_error or "")


def test_concurrent_claims_never_share_a_delivery(database: Database) -> None:
    with database.write() as connection:
        store.add_deliveries(connection, [_new(100 + i) for i in range(60)], 5000.0)
    claimed: list[list[store.Delivery]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            while batch := _claim(database, 5000.0, str(uuid.uuid4()), limit=3):
                claimed[index] += batch
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    ids = [d.delivery_id for batch in claimed for d in batch]
    assert len(ids) == 60 and len(set(ids)) == 60
