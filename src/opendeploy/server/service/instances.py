"""On-premises instances: registration, tags, listing (codedeploy-spec §3.10)."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.model import OnPremisesInstance
from opendeploy.core.targeting import check_tag_filters, matches_any
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import instances as store

__all__ = [
    "add_tags_to_on_premises_instances",
    "batch_get_on_premises_instances",
    "deregister_on_premises_instance",
    "get_on_premises_instance",
    "instance_info",
    "list_on_premises_instances",
    "register_on_premises_instance",
    "remove_tags_from_on_premises_instances",
]

BATCH_LIMIT = 100
MAX_TAG_INSTANCES = 100
MAX_INSTANCE_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,100}")
_USER_ARN = re.compile(r"arn:aws:iam::\d{12}:user/(?:[\w+=,.@-]+/)*[\w+=,.@-]+")
_SESSION_ARN = re.compile(r"arn:aws:sts::\d{12}:assumed-role/[\w+=,.@-]+/[\w+=,.@-]+")


def check_instance_name(value: object) -> str:
    if not value:
        raise ServiceError("InstanceNameRequiredException", "instanceName is required.")
    if not isinstance(value, str) or not _INSTANCE_NAME.fullmatch(value):
        raise ServiceError(
            "InvalidInstanceNameException",
            f"The instance name {value!r} must be 1-100 letters, digits or + = , . @ _ -.",
        )
    return value


def instance_info(instance: OnPremisesInstance) -> dict[str, Any]:
    info: dict[str, Any] = {
        "instanceName": instance.name,
        "instanceArn": instance.instance_arn,
        "registerTime": instance.register_time,
        "tags": [{"Key": k, "Value": v} for k, v in sorted(instance.tags.items())],
    }
    if instance.iam_user_arn:
        info["iamUserArn"] = instance.iam_user_arn
    if instance.iam_session_arn:
        info["iamSessionArn"] = instance.iam_session_arn
    if instance.deregister_time is not None:
        info["deregisterTime"] = instance.deregister_time
    return info


def _not_registered(name: str) -> ServiceError:
    return ServiceError(
        "InstanceNotRegisteredException", f"The on-premises instance {name} is not registered."
    )


def _name_taken(name: str) -> ServiceError:
    return ServiceError(
        "InstanceNameAlreadyRegisteredException",
        f"The on-premises instance name {name} is already registered.",
    )


def _registered(connection: Connection, name: str) -> OnPremisesInstance:
    instance = store.by_name(connection, name)
    if instance is None or not instance.registered:
        raise _not_registered(name)
    return instance


def register_on_premises_instance(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_instance_name(params.get("instanceName"))
    user_arn, session_arn = params.get("iamUserArn"), params.get("iamSessionArn")
    if user_arn and session_arn:
        raise ServiceError(
            "MultipleIamArnsProvidedException", "Give iamUserArn or iamSessionArn, not both."
        )
    if not user_arn and not session_arn:
        raise ServiceError("IamArnRequiredException", "iamUserArn or iamSessionArn is required.")
    if user_arn and not _USER_ARN.fullmatch(user_arn):
        raise ServiceError("InvalidIamUserArnException", f"{user_arn!r} is not an IAM user ARN.")
    if session_arn and not _SESSION_ARN.fullmatch(session_arn):
        raise ServiceError(
            "InvalidIamSessionArnException", f"{session_arn!r} is not an IAM session ARN."
        )
    suffix = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))
    with ctx.db.write() as connection:
        store.lock_registrations(connection)
        existing = store.by_name(connection, name)
        if existing is not None and existing.registered:
            raise _name_taken(name)
        bound = store.find_by_arn(connection, user_arn=user_arn, session_arn=session_arn)
        if bound is not None:
            code = (
                "IamUserArnAlreadyRegisteredException"
                if user_arn
                else "IamSessionArnAlreadyRegisteredException"
            )
            raise ServiceError(
                code, f"{user_arn or session_arn} is already registered to {bound.name}."
            )
        try:
            store.register(
                connection,
                OnPremisesInstance(
                    name=name,
                    instance_arn=ctx.instance_arn(name, suffix),
                    register_time=ctx.clock(),
                    iam_user_arn=user_arn,
                    iam_session_arn=session_arn,
                ),
            )
        except Conflict as error:
            raise _name_taken(name) from error
    return {}


def deregister_on_premises_instance(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_instance_name(params.get("instanceName"))
    with ctx.db.write() as connection:
        _registered(connection, name)
        store.deregister(connection, name, ctx.clock())
    return {}


def get_on_premises_instance(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_instance_name(params.get("instanceName"))
    with ctx.db.read() as connection:
        instance = store.by_name(connection, name)
    if instance is None:
        raise _not_registered(name)
    return {"instanceInfo": instance_info(instance)}


def batch_get_on_premises_instances(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    names = [check_instance_name(name) for name in params.get("instanceNames") or []]
    if len(names) > BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(names)} instance names were given; the limit is {BATCH_LIMIT}.",
        )
    with ctx.db.read() as connection:
        found = {instance.name: instance for instance in store.by_names(connection, names)}
    return {"instanceInfos": [instance_info(found[n]) for n in dict.fromkeys(names) if n in found]}


def list_on_premises_instances(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    status = params.get("registrationStatus")
    filters = params.get("tagFilters") or []
    check_tag_filters(filters, field="tagFilters", error_code="InvalidTagFilterException")
    scope = f"instances:{status}:{filters!r}"
    after = decode_token(scope, params.get("nextToken"))
    if after is not None and not isinstance(after, str):
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    registered = None if status is None else status == "Registered"
    with ctx.db.read() as connection:
        every = store.listing(connection, registered)
    matching = [
        instance.name
        for instance in every
        if (not filters or matches_any(instance.tags, filters))
        and (after is None or instance.name > after)
    ]
    page = matching[: ctx.page_size]
    result: dict[str, Any] = {"instanceNames": page}
    if len(matching) > ctx.page_size:
        result["nextToken"] = encode_token(scope, page[-1])
    return result


def _tag_targets(params: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    names = [check_instance_name(name) for name in params.get("instanceNames") or []]
    tags: Sequence[dict[str, Any]] = params.get("tags") or []
    if not names:
        raise ServiceError("InstanceNameRequiredException", "instanceNames is required.")
    if not tags:
        raise ServiceError("TagRequiredException", "tags is required and may not be empty.")
    if len(names) > MAX_TAG_INSTANCES:
        raise ServiceError(
            "InstanceLimitExceededException",
            f"{len(names)} instances were given; the limit is {MAX_TAG_INSTANCES}.",
        )
    for index, tag in enumerate(tags):
        key, value = tag.get("Key"), tag.get("Value") or ""
        if not key:
            raise ServiceError("InvalidTagException", f"tags[{index}] has no Key.")
        if len(key) > MAX_TAG_KEY:
            raise ServiceError(
                "InvalidTagException",
                f"tags[{index}].Key is {len(key)} characters long; the limit is {MAX_TAG_KEY}.",
            )
        if len(value) > MAX_TAG_VALUE:
            raise ServiceError(
                "InvalidTagException",
                f"tags[{index}].Value is {len(value)} characters long; the limit is "
                f"{MAX_TAG_VALUE}.",
            )
    return names, list(tags)


def add_tags_to_on_premises_instances(
    ctx: ServiceContext, params: dict[str, Any]
) -> dict[str, Any]:
    names, tags = _tag_targets(params)
    new = {tag["Key"]: tag.get("Value") or "" for tag in tags}
    with ctx.db.write() as connection:
        for name in names:
            instance = _registered(connection, name)
            if len({**instance.tags, **new}) > MAX_INSTANCE_TAGS:
                raise ServiceError(
                    "TagLimitExceededException",
                    f"The instance {name} would have more than {MAX_INSTANCE_TAGS} tags.",
                )
        store.add_tags(connection, names, new)
    return {}


def remove_tags_from_on_premises_instances(
    ctx: ServiceContext, params: dict[str, Any]
) -> dict[str, Any]:
    names, tags = _tag_targets(params)
    with ctx.db.write() as connection:
        for name in names:
            _registered(connection, name)
        store.remove_tags(connection, names, {tag["Key"]: tag.get("Value") for tag in tags})
    return {}
