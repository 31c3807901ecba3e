"""Who a key stands for is kept in memory, and forgotten as soon as it changes."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from sqlalchemy import event

from opendeploy.core.errors import AuthError
from opendeploy.core.model import AccessKey, User
from opendeploy.server.auth import Authenticator
from opendeploy.server.secrets import SecretBox
from opendeploy.store import identities
from opendeploy.store.database import Database

SERVICE = "codedeploy-commands"
POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Site:
    """A database with one user and key, an authenticator, and a count of its reads."""

    def __init__(self, db: Database, secrets: SecretBox) -> None:
        self.db = db
        self.clock = Clock()
        self.authenticator = Authenticator(db, secrets, cache_seconds=300.0, clock=self.clock)
        self.user = f"agent-{uuid.uuid4().hex[:8]}"
        self.key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
        self.secret = uuid.uuid4().hex
        self.statements = 0
        with db.write() as connection:
            identities.create_user(
                connection,
                User(
                    name=self.user,
                    user_id=uuid.uuid4().hex[:20],
                    arn=f"arn:aws:iam::123456789012:user/{self.user}",
                    path="/",
                    create_time=1.0,
                ),
            )
            identities.create_access_key(
                connection,
                AccessKey(self.key_id, self.user, "Active", 2.0),
                secrets.seal(self.secret),
            )
            identities.attach_policy(connection, self.user, POLICY)

    def count(self, *_: Any) -> None:
        self.statements += 1

    def request(self) -> dict[str, Any]:
        body = json.dumps({"HostIdentifier": "x"}).encode()
        request = AWSRequest(
            method="POST",
            url="http://127.0.0.1:8080/",
            data=body,
            headers={"X-Amz-Target": "CodeDeployCommandService_v20141006.PollHostCommand"},
        )
        SigV4Auth(Credentials(self.key_id, self.secret), SERVICE, "us-east-1").add_auth(request)
        headers = {name.lower(): value for name, value in request.headers.items()}
        headers["host"] = "127.0.0.1:8080"
        return {
            "method": "POST",
            "path": "/",
            "query": "",
            "headers": headers,
            "body": body,
            "services": (SERVICE,),
            "now": dt.datetime.now(dt.UTC),
        }

    def authenticate(self) -> str:
        caller, _ = self.authenticator.authenticate(**self.request())
        return caller.user_name

    def reads(self) -> int:
        """Statements run by the next ``authenticate``."""
        before = self.statements
        self.authenticate()
        return self.statements - before


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    db = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    db.upgrade()
    opened = Site(db, SecretBox.from_key(SecretBox.generate_key()))
    event.listen(db.engine, "before_cursor_execute", opened.count)
    yield opened
    db.dispose()


def test_a_known_key_is_verified_without_reading_the_database(site: Site) -> None:
    assert site.authenticator.authenticate_cached(**site.request()) is None
    assert site.reads() > 0

    assert site.reads() == 0
    cached = site.authenticator.authenticate_cached(**site.request())
    assert cached is not None and cached[0].user_name == site.user
    assert POLICY in cached[0].policies


def test_a_cached_key_still_needs_a_good_signature(site: Site) -> None:
    site.authenticate()
    request = site.request()
    request["body"] = b'{"HostIdentifier":"y"}'
    with pytest.raises(AuthError) as caught:
        site.authenticator.authenticate_cached(**request)
    assert caught.value.code == "InvalidSignatureException"


def test_the_cache_expires(site: Site) -> None:
    site.authenticate()
    site.clock.now += 299
    assert site.reads() == 0
    site.clock.now += 2
    assert site.reads() > 0


def test_a_deleted_key_is_refused_at_once(site: Site) -> None:
    site.authenticate()
    with site.db.write() as connection:
        identities.delete_access_key(connection, site.user, site.key_id)

    with pytest.raises(AuthError) as caught:
        site.authenticate()
    assert caught.value.code == "UnrecognizedClientException"


def test_a_detached_policy_is_gone_at_once(site: Site) -> None:
    site.authenticate()
    with site.db.write() as connection:
        identities.detach_policy(connection, site.user, POLICY)

    assert site.authenticator.authenticate_cached(**site.request()) is None
    caller, _ = site.authenticator.authenticate(**site.request())
    assert caller.policies == frozenset()


def test_a_change_committed_while_reading_is_not_kept(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read saw the user before another thread's change committed: it serves the request
    it was made for, and the next request reads again."""
    real = identities.policies_of

    def changed_meanwhile(connection: Any, user_name: str) -> list[str]:
        policies = real(connection, user_name)
        identities.changes.user_changed(user_name)
        return policies

    monkeypatch.setattr(identities, "policies_of", changed_meanwhile)
    site.authenticate()
    monkeypatch.setattr(identities, "policies_of", real)

    assert site.reads() > 0
    assert site.reads() == 0


def test_another_replica_s_change_reaches_the_cache_through_notify(postgres_url: str) -> None:
    """On PostgreSQL the LISTEN connection hears another replica's key deletion: this
    process's caches forget the user."""
    from opendeploy.store.wakeups import CommandChannel

    db = Database(postgres_url)
    db.upgrade()
    site = Site(db, SecretBox.from_key(SecretBox.generate_key()))
    channel = CommandChannel(db, lambda _: None)
    before_listening = identities.changes.version(site.user)
    channel.start()
    try:
        # Connecting empties the caches (changes may have been missed): it is listening now.
        _wait_until(lambda: identities.changes.version(site.user) > before_listening)
        listening = identities.changes.version(site.user)

        # What another replica's commit looks like here: only the NOTIFY arrives.
        with db.engine.begin() as connection:
            connection.exec_driver_sql(f"SELECT pg_notify('{identities.CHANNEL}', '{site.user}')")

        _wait_until(lambda: identities.changes.version(site.user) > listening)
    finally:
        channel.stop()
        db.dispose()


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
