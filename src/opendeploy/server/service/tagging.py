"""Resource tags: TagResource, UntagResource, ListTagsForResource, and tags given at creation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.configs import predefined_config
from opendeploy.core.errors import ServiceError
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import applications as app_store
from opendeploy.store import configs as config_store
from opendeploy.store import groups as group_store
from opendeploy.store import tags as tag_store

__all__ = [
    "drop_application_tags",
    "list_tags_for_resource",
    "move_application_tags",
    "tag_resource",
    "tags_to_add",
    "untag_resource",
]

MAX_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256
_ARN = re.compile(
    r"arn:(?P<partition>[\w-]+):(?P<service>[\w-]+):(?P<region>[\w-]*):(?P<account>\d*):"
    r"(?P<resource>.+)"
)
_NAME = r"[A-Za-z0-9+=,.@_-]{1,100}"
#: Taggable kind -> the shape of the resource part of its ARN (codedeploy-spec §1.6).
_RESOURCES: dict[str, re.Pattern[str]] = {
    "application": re.compile(rf"application:(?P<name>{_NAME})"),
    "deploymentgroup": re.compile(rf"deploymentgroup:(?P<application>{_NAME})/(?P<name>{_NAME})"),
    "deploymentconfig": re.compile(rf"deploymentconfig:(?P<name>{_NAME})"),
}
_KIND = re.compile(r"[A-Za-z-]+")


def tags_to_add(tags: Sequence[dict[str, Any]] | None, *, error_code: str) -> dict[str, str]:
    """Validated ``[{Key, Value}]`` as a mapping; a key is required, a value may be empty."""
    result: dict[str, str] = {}
    for index, tag in enumerate(tags or []):
        key, value = tag.get("Key"), tag.get("Value") or ""
        if not key:
            raise ServiceError(error_code, f"Tag {index} has no Key; every tag needs one.")
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise ServiceError(
                error_code,
                f"Tag {key!r} is too long: keys take {MAX_KEY} characters, values {MAX_VALUE}.",
            )
        if key.lower().startswith("aws:"):
            raise ServiceError(error_code, f"Tag key {key!r} uses the reserved prefix 'aws:'.")
        result[key] = value
    if len(result) > MAX_TAGS:
        raise ServiceError(
            "TagLimitExceededException", f"{len(result)} tags were given; the limit is {MAX_TAGS}."
        )
    return result


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _group_arn_prefix(ctx: ServiceContext, application: str) -> str:
    return ctx.group_arn(application, "").rstrip("/")


def drop_application_tags(ctx: ServiceContext, connection: Connection, application: str) -> None:
    tag_store.delete_all(connection, ctx.application_arn(application))
    tag_store.delete_all(connection, _group_arn_prefix(ctx, application))


def move_application_tags(ctx: ServiceContext, connection: Connection, old: str, new: str) -> None:
    tag_store.rename(connection, ctx.application_arn(old), ctx.application_arn(new))
    app = app_store.by_name(connection, new)
    if app is None:
        return
    names, _ = group_store.page(connection, app.application_id, None, 10_000)
    for group in names:
        tag_store.rename(connection, ctx.group_arn(old, group), ctx.group_arn(new, group))


def _not_supported(arn: str, what: str) -> ServiceError:
    return ServiceError(
        "ArnNotSupportedException",
        f"{arn} is {what}; tags apply to CodeDeploy applications, deployment groups and "
        "custom deployment configurations.",
    )


def _resolve(ctx: ServiceContext, connection: Connection, arn: object) -> str:
    """Check that ``arn`` names a taggable resource that exists; return it."""
    if arn is None or arn == "":
        raise ServiceError("ResourceArnRequiredException", "ResourceArn is required.")
    match = _ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise ServiceError(
            "InvalidArnException",
            f"{arn} is not an ARN; expected arn:aws:codedeploy:<region>:<account>:<resource>.",
        )
    arn = str(arn)
    if match["service"] != "codedeploy":
        raise _not_supported(arn, f"an ARN of the {match['service']} service")
    if (match["partition"], match["region"], match["account"]) != (
        "aws",
        ctx.region,
        ctx.account_id,
    ):
        raise ServiceError(
            "InvalidArnException",
            f"{arn} names partition {match['partition']!r}, region {match['region']!r} and "
            f"account {match['account']!r}; this server is aws, {ctx.region}, "
            f"account {ctx.account_id}.",
        )
    resource = match["resource"]
    kind = _KIND.match(resource)
    shape = _RESOURCES.get(kind.group() if kind else "")
    if shape is None:
        raise _not_supported(arn, f"the ARN of a {kind.group() if kind else 'unknown'} resource")
    parts = shape.fullmatch(resource)
    if parts is None:
        raise ServiceError(
            "InvalidArnException",
            f"{arn} is not a well-formed ARN: the resource part {resource!r} must look like "
            "application:<name>, deploymentgroup:<application>/<group> or "
            "deploymentconfig:<name>.",
        )
    name = parts["name"]
    if resource.startswith("application:"):
        if app_store.by_name(connection, name) is None:
            raise ServiceError(
                "ApplicationDoesNotExistException", f"No application found for name: {name}"
            )
        return ctx.application_arn(name)
    if resource.startswith("deploymentgroup:"):
        app_name = parts["application"]
        app = app_store.by_name(connection, app_name)
        if app is None:
            raise ServiceError(
                "ApplicationDoesNotExistException", f"No application found for name: {app_name}"
            )
        if group_store.by_name(connection, app.application_id, name) is None:
            raise ServiceError(
                "DeploymentGroupDoesNotExistException",
                f"No deployment group found for name: {name}",
            )
        return ctx.group_arn(app_name, name)
    if predefined_config(name) is not None:
        raise _not_supported(arn, f"the predefined deployment configuration {name}")
    if config_store.by_name(connection, name) is None:
        raise ServiceError(
            "DeploymentConfigDoesNotExistException",
            f"No deployment configuration found for name: {name}",
        )
    return ctx.config_arn(name)


def tag_resource(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    tags = tags_to_add(params.get("Tags"), error_code="InvalidTagsToAddException")
    if not tags:
        raise ServiceError("TagRequiredException", "Tags is required and may not be empty.")
    with ctx.db.write() as connection:
        arn = _resolve(ctx, connection, params.get("ResourceArn"))
        merged = {**tag_store.get(connection, arn), **tags}
        if len(merged) > MAX_TAGS:
            raise ServiceError(
                "TagLimitExceededException",
                f"The resource would have {len(merged)} tags; the limit is {MAX_TAGS}.",
            )
        tag_store.set_many(connection, arn, tags)
    return {}


def untag_resource(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    keys = params.get("TagKeys") or []
    if not keys:
        raise ServiceError("TagRequiredException", "TagKeys is required and may not be empty.")
    with ctx.db.write() as connection:
        arn = _resolve(ctx, connection, params.get("ResourceArn"))
        tag_store.remove(connection, arn, keys)
    return {}


def list_tags_for_resource(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        arn = _resolve(ctx, connection, params.get("ResourceArn"))
        tags = tag_list(tag_store.get(connection, arn))
    scope = "tags:" + arn
    start = decode_token(scope, params.get("NextToken")) or 0
    if not isinstance(start, int) or start < 0:
        raise ServiceError("InvalidNextTokenException", "The NextToken is not valid.")
    result: dict[str, Any] = {"Tags": tags[start : start + ctx.page_size]}
    if start + ctx.page_size < len(tags):
        result["NextToken"] = encode_token(scope, start + ctx.page_size)
    return result
