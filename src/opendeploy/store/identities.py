"""IAM users, their access keys and attached policies, and the audit log.

Servers keep who a key stands for in memory (``server.auth``), so every change that can take a
permission away or give one (deleting a key or a user, attaching or detaching a policy) is
announced: :data:`changes` learns it in this process once the transaction commits, and on
PostgreSQL a NOTIFY on :data:`CHANNEL` tells the other replicas, whose listener calls
``changes.user_changed``. Creating a user or a key needs no announcement: nothing unknown is
kept in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from opendeploy.core.errors import Conflict
from opendeploy.core.model import AccessKey, User
from opendeploy.store.database import after_commit, notify_on_commit
from opendeploy.store.paging import page_after
from opendeploy.store.tables import access_keys, audit_log, user_policies, users

__all__ = [
    "CHANNEL",
    "IdentityChanges",
    "attach_policy",
    "audit_entries",
    "changes",
    "create_access_key",
    "create_user",
    "delete_access_key",
    "delete_user",
    "detach_policy",
    "key_with_secret",
    "keys_of",
    "policies_of",
    "record_audit",
    "user_by_name",
    "users_page",
]

#: The PostgreSQL NOTIFY channel of identity changes; the payload is the user name.
CHANNEL = "opendeploy_identities"


class IdentityChanges:
    """Change counters, for caches of identities: one per user, and one for everything.

    ``version(user)`` grows whenever that user (or everything) changes; a cache entry read
    when it was ``v`` is still good while it is ``v``. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._everything = 0
        self._users: dict[str, int] = {}

    @property
    def count(self) -> int:
        """How many changes so far: take it before reading what a cache will keep."""
        return self._count

    def version(self, user_name: str) -> int:
        return max(self._users.get(user_name, 0), self._everything)

    def user_changed(self, user_name: str) -> None:
        with self._lock:
            self._count += 1
            self._users[user_name] = self._count

    def everything_changed(self) -> None:
        """Changes may have been missed (another replica's, while not listening)."""
        with self._lock:
            self._count += 1
            self._everything = self._count
            self._users.clear()


#: This process's identity changes.
changes = IdentityChanges()


def _announce(connection: Connection, user_name: str) -> None:
    """Tell caches that ``user_name``'s keys or policies change with this transaction: now (a
    cache must not keep what it reads meanwhile), once it commits, and to other replicas."""
    changes.user_changed(user_name)
    after_commit(connection, lambda: changes.user_changed(user_name))
    notify_on_commit(connection, CHANNEL, user_name)


# Built once: what a cache miss of the authenticator reads (building a statement costs more
# than running it).
_KEY_BY_ID = select(access_keys).where(access_keys.c.access_key_id == bindparam("key_id"))
_USER_BY_NAME = select(users).where(users.c.name == bindparam("user_name"))
_POLICIES_OF = (
    select(user_policies.c.policy_arn)
    .where(user_policies.c.user_name == bindparam("user_name"))
    .order_by(user_policies.c.policy_arn)
)


def _user(row: Row[Any]) -> User:
    return User(
        name=row.name, user_id=row.user_id, arn=row.arn, path=row.path, create_time=row.create_time
    )


def _key(row: Row[Any]) -> AccessKey:
    return AccessKey(
        access_key_id=row.access_key_id,
        user_name=row.user_name,
        status=row.status,
        create_time=row.create_time,
    )


def create_user(connection: Connection, user: User) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                insert(users).values(
                    name=user.name,
                    user_id=user.user_id,
                    arn=user.arn,
                    path=user.path,
                    create_time=user.create_time,
                )
            )
    except IntegrityError as error:
        raise Conflict(user.name) from error


def user_by_name(connection: Connection, name: str) -> User | None:
    row = connection.execute(_USER_BY_NAME, {"user_name": name}).first()
    return None if row is None else _user(row)


def users_page(
    connection: Connection, path_prefix: str, after: str | None, limit: int
) -> tuple[list[User], str | None]:
    statement = select(users).where(users.c.path.startswith(path_prefix, autoescape=True))
    rows, last = page_after(connection, statement, users.c.name, after, limit)
    return [_user(row) for row in rows], last


def delete_user(connection: Connection, name: str) -> None:
    _announce(connection, name)
    connection.execute(delete(users).where(users.c.name == name))


def create_access_key(connection: Connection, key: AccessKey, sealed_secret: str) -> None:
    connection.execute(
        insert(access_keys).values(
            access_key_id=key.access_key_id,
            user_name=key.user_name,
            sealed_secret=sealed_secret,
            status=key.status,
            create_time=key.create_time,
        )
    )


def keys_of(connection: Connection, user_name: str) -> list[AccessKey]:
    rows = connection.execute(
        select(access_keys)
        .where(access_keys.c.user_name == user_name)
        .order_by(access_keys.c.create_time)
    ).all()
    return [_key(row) for row in rows]


def key_with_secret(connection: Connection, access_key_id: str) -> tuple[AccessKey, str] | None:
    """The key and its sealed secret, for signature checks."""
    row = connection.execute(_KEY_BY_ID, {"key_id": access_key_id}).first()
    return None if row is None else (_key(row), row.sealed_secret)


def delete_access_key(connection: Connection, user_name: str, access_key_id: str) -> bool:
    _announce(connection, user_name)
    result = connection.execute(
        delete(access_keys).where(
            access_keys.c.user_name == user_name, access_keys.c.access_key_id == access_key_id
        )
    )
    return bool(result.rowcount)


def attach_policy(connection: Connection, user_name: str, policy_arn: str) -> None:
    if policy_arn not in policies_of(connection, user_name):
        _announce(connection, user_name)
        connection.execute(insert(user_policies).values(user_name=user_name, policy_arn=policy_arn))


def detach_policy(connection: Connection, user_name: str, policy_arn: str) -> bool:
    _announce(connection, user_name)
    result = connection.execute(
        delete(user_policies).where(
            user_policies.c.user_name == user_name, user_policies.c.policy_arn == policy_arn
        )
    )
    return bool(result.rowcount)


def policies_of(connection: Connection, user_name: str) -> list[str]:
    return list(connection.execute(_POLICIES_OF, {"user_name": user_name}).scalars())


def record_audit(
    connection: Connection,
    *,
    time: float,
    principal: str,
    operation: str,
    request_id: str,
    outcome: str,
) -> None:
    connection.execute(
        insert(audit_log).values(
            time=time,
            principal=principal,
            operation=operation,
            request_id=request_id,
            outcome=outcome,
        )
    )


def audit_entries(connection: Connection, limit: int = 100) -> Sequence[Row[Any]]:
    return connection.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).all()
