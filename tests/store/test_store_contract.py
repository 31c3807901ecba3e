"""One contract, every backend: the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from opendeploy.core.configs import DeploymentConfig
from opendeploy.core.errors import Conflict
from opendeploy.core.model import AccessKey, Application, DeploymentGroup, OnPremisesInstance, User
from opendeploy.store import applications, configs, groups, identities, instances, meta, tags
from opendeploy.store.database import Database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _app(name: str) -> Application:
    return Application(
        application_id=str(uuid.uuid4()), name=name, compute_platform="Server", create_time=1.5
    )


def test_upgrade_is_repeatable(db: Database) -> None:
    db.upgrade()
    with db.read() as connection:
        assert applications.by_name(connection, _name("none")) is None


def test_application_round_trip_and_unique_name(db: Database) -> None:
    app = _app(_name("app"))
    with db.write() as connection:
        applications.create(connection, app)
    with db.read() as connection:
        assert applications.by_name(connection, app.name) == app
        assert applications.by_id(connection, app.application_id) == app
    with pytest.raises(Conflict), db.write() as connection:
        applications.create(connection, _app(app.name))


def test_failed_transaction_leaves_nothing(db: Database) -> None:
    app = _app(_name("app"))
    with pytest.raises(RuntimeError), db.write() as connection:
        applications.create(connection, app)
        raise RuntimeError("boom")
    with db.read() as connection:
        assert applications.by_name(connection, app.name) is None


def test_keyset_pages_cover_everything_once(db: Database) -> None:
    prefix = _name("page")
    names = [f"{prefix}-{index:03d}" for index in range(7)]
    with db.write() as connection:
        for name in reversed(names):
            applications.create(connection, _app(name))
    seen: list[str] = []
    after: str | None = f"{prefix}-"
    with db.read() as connection:
        while True:
            page, after = applications.page(connection, after, 3)
            seen.extend(name for name in page if name.startswith(prefix))
            if after is None or not page[-1].startswith(prefix):
                break
    assert seen == names


def test_deleting_an_application_cascades_to_groups(db: Database) -> None:
    app = _app(_name("app"))
    group = DeploymentGroup(
        group_id=str(uuid.uuid4()),
        application_id=app.application_id,
        application_name=app.name,
        compute_platform="Server",
        name="prod",
        config_name="CodeDeployDefault.OneAtATime",
        service_role_arn="arn:aws:iam::1:role/r",
        spec={
            "onPremisesInstanceTagFilters": [
                {"Key": "env", "Value": "prod", "Type": "KEY_AND_VALUE"}
            ]
        },
        create_time=2.0,
    )
    with db.write() as connection:
        applications.create(connection, app)
        groups.create(connection, group)
    with db.read() as connection:
        assert groups.by_name(connection, app.application_id, "prod") == group
    with db.write() as connection:
        assert applications.delete_by_name(connection, app.name)
    with db.read() as connection:
        assert groups.by_name(connection, app.application_id, "prod") is None


def test_config_in_use_and_json_members(db: Database) -> None:
    config = DeploymentConfig(
        config_id=str(uuid.uuid4()),
        name=_name("cfg"),
        compute_platform="Server",
        create_time=3.0,
        minimum_healthy_hosts={"type": "HOST_COUNT", "value": 2},
        zonal={"monitorDurationInSeconds": 30},
    )
    app = _app(_name("app"))
    with db.write() as connection:
        configs.create(connection, config)
        applications.create(connection, app)
        assert not configs.is_in_use(connection, config.name)
        groups.create(
            connection,
            DeploymentGroup(
                group_id=str(uuid.uuid4()),
                application_id=app.application_id,
                application_name=app.name,
                compute_platform="Server",
                name="g",
                config_name=config.name,
                service_role_arn="arn:aws:iam::1:role/r",
                spec={},
                create_time=3.0,
            ),
        )
    with db.read() as connection:
        assert configs.by_name(connection, config.name) == config
        assert configs.is_in_use(connection, config.name)


def test_instances_tags_and_reregistration(db: Database) -> None:
    name = _name("host")
    first = OnPremisesInstance(
        name=name, instance_arn=f"arn:x/{name}_1", register_time=1.0, iam_user_arn=f"arn:u/{name}"
    )
    with db.write() as connection:
        instances.register(connection, first)
        instances.add_tags(connection, [name], {"env": "prod", "tier": "web"})
        instances.add_tags(connection, [name], {"env": "staging"})
        instances.remove_tags(connection, [name], {"tier": "other"})
    with db.read() as connection:
        stored = instances.by_name(connection, name)
        assert stored is not None and stored.tags == {"env": "staging", "tier": "web"}
        assert instances.find_by_arn(connection, user_arn=f"arn:u/{name}") == stored
    with db.write() as connection:
        instances.deregister(connection, name, 5.0)
    with db.read() as connection:
        gone = instances.by_name(connection, name)
        assert gone is not None and gone.deregister_time == 5.0
        assert instances.find_by_arn(connection, user_arn=f"arn:u/{name}") is None
        assert name not in [i.name for i in instances.listing(connection, registered=True)]
    with db.write() as connection:
        instances.register(connection, first)
    with db.read() as connection:
        again = instances.by_name(connection, name)
        assert again is not None and again.registered and again.tags == {}


def test_resource_tags_follow_prefix_rules(db: Database) -> None:
    base = "arn:aws:codedeploy:r:1:deploymentgroup:" + _name("app")
    with db.write() as connection:
        tags.set_many(connection, base + "/a", {"k": "1"})
        tags.set_many(connection, base + "x/b", {"k": "2"})
        tags.delete_all(connection, base)
    with db.read() as connection:
        assert tags.get(connection, base + "/a") == {}
        assert tags.get(connection, base + "x/b") == {"k": "2"}


def test_identities_keys_and_policies(db: Database) -> None:
    name = _name("user")
    user = User(
        name=name,
        user_id=uuid.uuid4().hex[:20],
        arn=f"arn:aws:iam::1:user/{name}",
        path="/",
        create_time=1.0,
    )
    key = AccessKey(
        access_key_id="AKIA" + uuid.uuid4().hex[:16].upper(),
        user_name=name,
        status="Active",
        create_time=2.0,
    )
    with db.write() as connection:
        identities.create_user(connection, user)
        identities.create_access_key(connection, key, "sealed")
        identities.attach_policy(connection, name, "arn:p")
        identities.attach_policy(connection, name, "arn:p")
    with db.read() as connection:
        assert identities.key_with_secret(connection, key.access_key_id) == (key, "sealed")
        assert identities.policies_of(connection, name) == ["arn:p"]
    with db.write() as connection:
        identities.delete_user(connection, name)
    with db.read() as connection:
        assert identities.key_with_secret(connection, key.access_key_id) is None


def test_meta_get_or_create_keeps_the_first_value(db: Database) -> None:
    key = _name("k")[:60]
    with db.write() as connection:
        assert meta.get_or_create(connection, key, "first") == "first"
    with db.write() as connection:
        assert meta.get_or_create(connection, key, "second") == "first"


def test_concurrent_writers_do_not_lose_updates(db: Database) -> None:
    """Eight threads each create applications; every one is stored exactly once."""
    prefix = _name("race")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(10):
                with db.write() as connection:
                    applications.create(connection, _app(f"{prefix}-{worker}-{index}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.read() as connection:
        names, _ = applications.page(connection, prefix, 1000)
    assert len([n for n in names if n.startswith(prefix)]) == 80


def test_a_lease_has_one_holder_until_it_expires(db: Database) -> None:
    from opendeploy.store import leases

    name = _name("lease")
    assert leases.acquire(db, name, "replica-a", now=100.0, ttl=10.0)
    assert not leases.acquire(db, name, "replica-b", now=105.0, ttl=10.0)
    assert leases.acquire(db, name, "replica-a", now=108.0, ttl=10.0), "the holder renews"
    assert not leases.acquire(db, name, "replica-b", now=117.0, ttl=10.0)
    assert leases.acquire(db, name, "replica-b", now=118.5, ttl=10.0), "expired: taken over"
    assert not leases.acquire(db, name, "replica-a", now=119.0, ttl=10.0)


def test_concurrent_lease_takers_get_one_winner(db: Database) -> None:
    from opendeploy.store import leases

    name = _name("race")
    winners: list[str] = []

    def take(holder: str) -> None:
        if leases.acquire(db, name, holder, now=50.0, ttl=30.0):
            winners.append(holder)

    threads = [threading.Thread(target=take, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
