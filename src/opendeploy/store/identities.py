"""IAM users, their access keys and attached policies, and the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select
from sqlalchemy.exc import IntegrityError

from opendeploy.core.errors import Conflict
from opendeploy.core.model import AccessKey, User
from opendeploy.store.paging import page_after
from opendeploy.store.tables import access_keys, audit_log, user_policies, users

__all__ = [
    "attach_policy",
    "audit_entries",
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
    row = connection.execute(select(users).where(users.c.name == name)).first()
    return None if row is None else _user(row)


def users_page(
    connection: Connection, path_prefix: str, after: str | None, limit: int
) -> tuple[list[User], str | None]:
    statement = select(users).where(users.c.path.startswith(path_prefix, autoescape=True))
    rows, last = page_after(connection, statement, users.c.name, after, limit)
    return [_user(row) for row in rows], last


def delete_user(connection: Connection, name: str) -> None:
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
    row = connection.execute(
        select(access_keys).where(access_keys.c.access_key_id == access_key_id)
    ).first()
    return None if row is None else (_key(row), row.sealed_secret)


def delete_access_key(connection: Connection, user_name: str, access_key_id: str) -> bool:
    result = connection.execute(
        delete(access_keys).where(
            access_keys.c.user_name == user_name, access_keys.c.access_key_id == access_key_id
        )
    )
    return bool(result.rowcount)


def attach_policy(connection: Connection, user_name: str, policy_arn: str) -> None:
    if policy_arn not in policies_of(connection, user_name):
        connection.execute(insert(user_policies).values(user_name=user_name, policy_arn=policy_arn))


def detach_policy(connection: Connection, user_name: str, policy_arn: str) -> bool:
    result = connection.execute(
        delete(user_policies).where(
            user_policies.c.user_name == user_name, user_policies.c.policy_arn == policy_arn
        )
    )
    return bool(result.rowcount)


def policies_of(connection: Connection, user_name: str) -> list[str]:
    return list(
        connection.execute(
            select(user_policies.c.policy_arn)
            .where(user_policies.c.user_name == user_name)
            .order_by(user_policies.c.policy_arn)
        ).scalars()
    )


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
