"""The IAM subset that manages OpenDeploy's users, access keys and role policies.

Answers in IAM's own shapes (PascalCase) so ``aws iam ...`` and boto3's IAM client work.
A deployer may manage agent users only: create a user, attach the agent policy, and create
or delete keys of users whose only policy is the agent's.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.model import AccessKey, User
from opendeploy.core.policies import POLICY_ARNS, Role, role_for_policy, roles_of
from opendeploy.server.service.context import ServiceContext
from opendeploy.store import identities as store

__all__ = [
    "attach_user_policy",
    "create_access_key",
    "create_user",
    "delete_access_key",
    "delete_user",
    "detach_user_policy",
    "get_user",
    "issue_access_key",
    "list_access_keys",
    "list_attached_user_policies",
    "list_users",
    "new_user",
]

MAX_KEYS_PER_USER = 2
_UPPER_DIGITS = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
_USER_NAME = re.compile(r"[\w+=,.@-]{1,64}")


def _when(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _no_such_user(name: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"The user with name {name} cannot be found.", status=404)


def _denied(message: str) -> ServiceError:
    return ServiceError("AccessDenied", message, status=403)


def _user_name(ctx: ServiceContext, params: dict[str, Any]) -> str:
    """The user named in the request, or the caller when none is named (as IAM does)."""
    name = params.get("UserName")
    if name:
        if not _USER_NAME.fullmatch(name):
            raise ServiceError("ValidationError", f"UserName {name!r} is not a valid user name.")
        return str(name)
    if ctx.caller is None:
        raise ServiceError("ValidationError", "UserName is required.")
    return ctx.caller.user_name


def _require_user(connection: Connection, name: str) -> User:
    user = store.user_by_name(connection, name)
    if user is None:
        raise _no_such_user(name)
    return user


def _caller_roles(ctx: ServiceContext) -> frozenset[Role]:
    return roles_of(ctx.caller.policies) if ctx.caller else frozenset({Role.ADMIN})


def _manages_freely(ctx: ServiceContext, user: User) -> bool:
    """Admins manage everyone; every user manages themselves."""
    if Role.ADMIN in _caller_roles(ctx):
        return True
    return ctx.caller is not None and ctx.caller.user_name == user.name


def _check_may_manage_keys(ctx: ServiceContext, connection: Connection, user: User) -> None:
    """A deployer manages only the keys of agent users: users whose only policy is the agent's.

    A user without any policy yet is not one: keys outlive policy changes, so a key minted
    before an admin attaches a stronger policy would become that stronger key.
    """
    if _manages_freely(ctx, user):
        return
    if set(store.policies_of(connection, user.name)) != {POLICY_ARNS[Role.AGENT]}:
        raise _denied(f"Only an admin may manage the keys of {user.name}: it is not an agent user.")


def _check_may_attach(ctx: ServiceContext, connection: Connection, user: User) -> None:
    """A deployer attaches (the agent policy) only to users with no policy but the agent's."""
    if _manages_freely(ctx, user):
        return
    if not roles_of(store.policies_of(connection, user.name)) <= {Role.AGENT}:
        raise _denied(f"Only an admin may change the policies of {user.name}.")


def _user_shape(user: User) -> dict[str, Any]:
    return {
        "Path": user.path,
        "UserName": user.name,
        "UserId": user.user_id,
        "Arn": user.arn,
        "CreateDate": _when(user.create_time),
    }


def new_user(ctx: ServiceContext, name: str, path: str = "/") -> User:
    return User(
        name=name,
        user_id="AIDA" + _random(_UPPER_DIGITS, 17),
        arn=ctx.user_arn(name, path),
        path=path,
        create_time=ctx.clock(),
    )


def create_user(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = params.get("UserName") or ""
    if not _USER_NAME.fullmatch(name):
        raise ServiceError("ValidationError", f"UserName {name!r} is not a valid user name.")
    path = params.get("Path") or "/"
    if not (path.startswith("/") and path.endswith("/")):
        raise ServiceError("ValidationError", f"Path {path!r} must begin and end with '/'.")
    user = new_user(ctx, name, path)
    exists = ServiceError(
        "EntityAlreadyExists", f"User with name {name} already exists.", status=409
    )
    with ctx.db.write() as connection:
        if store.user_by_name(connection, name) is not None:
            raise exists
        try:
            store.create_user(connection, user)
        except Conflict as error:
            raise exists from error
    return {"User": _user_shape(user)}


def get_user(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _user_name(ctx, params)
    roles = _caller_roles(ctx)
    if Role.ADMIN not in roles and ctx.caller is not None and name != ctx.caller.user_name:
        raise _denied("Only an admin may read other users.")
    with ctx.db.read() as connection:
        user = _require_user(connection, name)
    return {"User": _user_shape(user)}


def list_users(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    limit = min(int(params.get("MaxItems") or ctx.page_size), ctx.page_size)
    with ctx.db.read() as connection:
        users, last = store.users_page(
            connection, params.get("PathPrefix") or "/", params.get("Marker"), limit
        )
    result: dict[str, Any] = {
        "Users": [_user_shape(u) for u in users],
        "IsTruncated": last is not None,
    }
    if last is not None:
        result["Marker"] = last
    return result


def delete_user(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _user_name(ctx, params)
    with ctx.db.write() as connection:
        _require_user(connection, name)
        if store.keys_of(connection, name):
            raise ServiceError(
                "DeleteConflict", "Cannot delete entity, must delete access keys first.", status=409
            )
        if store.policies_of(connection, name):
            raise ServiceError(
                "DeleteConflict",
                "Cannot delete entity, must detach all policies first.",
                status=409,
            )
        store.delete_user(connection, name)
    return {}


def issue_access_key(ctx: ServiceContext, connection: Connection, user: User) -> dict[str, Any]:
    """Create a key for ``user``; the only time its secret is ever returned."""
    if len(store.keys_of(connection, user.name)) >= MAX_KEYS_PER_USER:
        raise ServiceError(
            "LimitExceeded",
            f"Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}",
            status=409,
        )
    key = AccessKey(
        access_key_id="AKIA" + _random(_UPPER_DIGITS, 16),
        user_name=user.name,
        status="Active",
        create_time=ctx.clock(),
    )
    secret = _random(_SECRET_ALPHABET, 40)
    store.create_access_key(connection, key, ctx.secrets.seal(secret))
    return {
        "UserName": user.name,
        "AccessKeyId": key.access_key_id,
        "Status": key.status,
        "SecretAccessKey": secret,
        "CreateDate": _when(key.create_time),
    }


def create_access_key(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _user_name(ctx, params)
    with ctx.db.write() as connection:
        user = _require_user(connection, name)
        _check_may_manage_keys(ctx, connection, user)
        return {"AccessKey": issue_access_key(ctx, connection, user)}


def list_access_keys(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _user_name(ctx, params)
    with ctx.db.read() as connection:
        user = _require_user(connection, name)
        _check_may_manage_keys(ctx, connection, user)
        keys = store.keys_of(connection, name)
    return {
        "AccessKeyMetadata": [
            {
                "UserName": key.user_name,
                "AccessKeyId": key.access_key_id,
                "Status": key.status,
                "CreateDate": _when(key.create_time),
            }
            for key in keys
        ],
        "IsTruncated": False,
    }


def delete_access_key(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = _user_name(ctx, params)
    key_id = params.get("AccessKeyId") or ""
    with ctx.db.write() as connection:
        user = _require_user(connection, name)
        _check_may_manage_keys(ctx, connection, user)
        if not store.delete_access_key(connection, name, key_id):
            raise ServiceError(
                "NoSuchEntity",
                f"The Access Key with id {key_id} cannot be found.",
                status=404,
            )
    return {}


def _policy(params: dict[str, Any]) -> tuple[str, Role]:
    arn = params.get("PolicyArn") or ""
    role = role_for_policy(arn)
    if role is None:
        known = ", ".join(POLICY_ARNS.values())
        raise ServiceError(
            "NoSuchEntity",
            f"Policy {arn} does not exist or is not attachable. OpenDeploy knows: {known}.",
            status=404,
        )
    return arn, role


def attach_user_policy(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    arn, role = _policy(params)
    if Role.ADMIN not in _caller_roles(ctx) and role is not Role.AGENT:
        raise _denied("A deployer may attach only the agent policy.")
    with ctx.db.write() as connection:
        user = _require_user(connection, params.get("UserName") or "")
        _check_may_attach(ctx, connection, user)
        store.attach_policy(connection, user.name, arn)
    return {}


def detach_user_policy(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    arn, _ = _policy(params)
    with ctx.db.write() as connection:
        user = _require_user(connection, params.get("UserName") or "")
        if not store.detach_policy(connection, user.name, arn):
            raise ServiceError(
                "NoSuchEntity", f"Policy {arn} is not attached to {user.name}.", status=404
            )
    return {}


def list_attached_user_policies(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        user = _require_user(connection, params.get("UserName") or "")
        arns = store.policies_of(connection, user.name)
    return {
        "AttachedPolicies": [
            {"PolicyName": arn.rsplit("/", 1)[-1], "PolicyArn": arn} for arn in arns
        ],
        "IsTruncated": False,
    }
