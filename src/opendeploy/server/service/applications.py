"""Applications: create, read, rename, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.model import Application
from opendeploy.core.names import check_resource_name
from opendeploy.server.service import tagging
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import applications as store
from opendeploy.store import tags as tag_store

__all__ = [
    "batch_get_applications",
    "create_application",
    "delete_application",
    "get_application",
    "list_applications",
    "require_application",
    "update_application",
]

MAX_APPLICATIONS = 1000
BATCH_LIMIT = 100


def check_name(value: object) -> str:
    return check_resource_name(
        value,
        kind="application",
        required_code="ApplicationNameRequiredException",
        invalid_code="InvalidApplicationNameException",
    )


def require_application(connection: Connection, name: object) -> Application:
    """The named application, or ApplicationDoesNotExistException in AWS's words."""
    checked = check_name(name)
    app = store.by_name(connection, checked)
    if app is None:
        raise ServiceError(
            "ApplicationDoesNotExistException", f"No application found for name: {checked}"
        )
    return app


def application_info(app: Application) -> dict[str, Any]:
    info: dict[str, Any] = {
        "applicationId": app.application_id,
        "applicationName": app.name,
        "createTime": app.create_time,
        "linkedToGitHub": app.github_account_name is not None,
        "computePlatform": app.compute_platform,
    }
    if app.github_account_name is not None:
        info["gitHubAccountName"] = app.github_account_name
    return info


def _already_exists(name: str) -> ServiceError:
    return ServiceError(
        "ApplicationAlreadyExistsException", f"An application with name {name} already exists."
    )


def create_application(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    name = check_name(params.get("applicationName"))
    tags = tagging.tags_to_add(params.get("tags"), error_code="InvalidTagsToAddException")
    app = Application(
        application_id=ctx.new_id(),
        name=name,
        compute_platform=params.get("computePlatform") or "Server",
        create_time=ctx.clock(),
    )
    with ctx.db.write() as connection:
        if store.by_name(connection, name) is not None:
            raise _already_exists(name)
        if store.page(connection, None, MAX_APPLICATIONS)[1] is not None:
            raise ServiceError(
                "ApplicationLimitExceededException",
                f"This server already has {MAX_APPLICATIONS} applications.",
            )
        try:
            store.create(connection, app)
        except Conflict as error:
            raise _already_exists(name) from error
        tag_store.set_many(connection, ctx.application_arn(name), tags)
    return {"applicationId": app.application_id}


def get_application(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
    return {"application": application_info(app)}


def batch_get_applications(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    names = [check_name(name) for name in params.get("applicationNames") or []]
    if len(names) > BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(names)} application names were given; the limit is {BATCH_LIMIT}.",
        )
    with ctx.db.read() as connection:
        found = store.names_in(connection, names)
    missing = [name for name in names if name not in found]
    if missing:
        raise ServiceError(
            "ApplicationDoesNotExistException",
            f"No application found for name: {', '.join(missing)}",
        )
    return {"applicationsInfo": [application_info(found[name]) for name in dict.fromkeys(names)]}


def list_applications(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    after = decode_token("applications", params.get("nextToken"))
    if after is not None and not isinstance(after, str):
        # A forged token: comparing a name column with a number fails on PostgreSQL (500).
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    with ctx.db.read() as connection:
        names, last = store.page(connection, after, ctx.page_size)
    result: dict[str, Any] = {"applications": names}
    if last is not None:
        result["nextToken"] = encode_token("applications", last)
    return result


def update_application(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    new_name = params.get("newApplicationName")
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        if new_name is None or new_name == app.name:
            return {}
        new_name = check_name(new_name)
        if store.by_name(connection, new_name) is not None:
            raise _already_exists(new_name)
        try:
            store.rename(connection, app.application_id, new_name)
        except Conflict as error:
            raise _already_exists(new_name) from error
        tagging.move_application_tags(ctx, connection, app.name, new_name)
    return {}


def delete_application(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    """Delete an application with its groups and revisions; deleting a missing one is a no-op."""
    name = check_name(params.get("applicationName"))
    with ctx.db.write() as connection:
        app = store.by_name(connection, name)
        if app is not None:
            tagging.drop_application_tags(ctx, connection, name)
            store.delete_by_name(connection, name)
    return {}
