"""Application revisions: register, read, list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from opendeploy.core.errors import ServiceError
from opendeploy.core.model import Application, Revision
from opendeploy.core.names import check_description
from opendeploy.core.revisions import check_revision, revision_identity, with_sha256
from opendeploy.server.service.applications import require_application
from opendeploy.server.service.context import ServiceContext, decode_token, encode_token
from opendeploy.store import groups as group_store
from opendeploy.store import revisions as store

__all__ = [
    "batch_get_application_revisions",
    "get_application_revision",
    "list_application_revisions",
    "register_application_revision",
    "register_revision",
]

BATCH_LIMIT = 25
_SORT_KEYS = {
    "registerTime": "register_time",
    "firstUsedTime": "first_used_time",
    "lastUsedTime": "last_used_time",
}


def register_revision(
    ctx: ServiceContext,
    connection: Connection,
    app: Application,
    location: Mapping[str, Any],
    description: str | None,
) -> Revision:
    """Record ``location`` for ``app`` (again) and return what is stored."""
    check_revision(location, compute_platform=app.compute_platform)
    normal = with_sha256(location)
    identity = revision_identity(normal)
    store.register(
        connection,
        Revision(
            application_id=app.application_id,
            identity=identity,
            location=normal,
            register_time=ctx.clock(),
            description=description,
        ),
    )
    stored = store.by_identity(connection, app.application_id, identity)
    assert stored is not None
    return stored


def register_application_revision(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    description = check_description(params.get("description"))
    location = params.get("revision")
    if not location:
        raise ServiceError("RevisionRequiredException", "revision is required.")
    with ctx.db.write() as connection:
        app = require_application(connection, params.get("applicationName"))
        register_revision(ctx, connection, app, location, description)
    return {}


def _targeted_by(connection: Connection, app: Application) -> dict[str, list[str]]:
    """Revision identity -> names of the groups whose target revision it is."""
    result: dict[str, list[str]] = {}
    for group, target in group_store.with_target_revision(connection, app.application_id):
        result.setdefault(revision_identity(with_sha256(target)), []).append(group)
    return result


def _generic_info(revision: Revision, groups: Sequence[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "description": revision.description,
        "deploymentGroups": sorted(groups),
        "registerTime": revision.register_time,
        "firstUsedTime": revision.first_used_time,
        "lastUsedTime": revision.last_used_time,
    }
    return {key: value for key, value in info.items() if value is not None}


def _find(connection: Connection, app: Application, location: Mapping[str, Any]) -> Revision:
    check_revision(location, compute_platform=app.compute_platform)
    revision = store.by_identity(
        connection, app.application_id, revision_identity(with_sha256(location))
    )
    if revision is None:
        raise ServiceError(
            "RevisionDoesNotExistException",
            f"No revision found for application {app.name} at the given location.",
        )
    return revision


def get_application_revision(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        revision = _find(connection, app, params.get("revision") or {})
        groups = _targeted_by(connection, app).get(revision.identity, [])
    return {
        "applicationName": app.name,
        "revision": dict(revision.location),
        "revisionInfo": _generic_info(revision, groups),
    }


def batch_get_application_revisions(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    locations = params.get("revisions") or []
    if len(locations) > BATCH_LIMIT:
        raise ServiceError(
            "BatchLimitExceededException",
            f"{len(locations)} revisions were given; the limit is {BATCH_LIMIT}.",
        )
    found: list[dict[str, Any]] = []
    missing = 0
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        targeted = _targeted_by(connection, app)
        for location in locations:
            try:
                revision = _find(connection, app, location)
            except ServiceError as error:
                if error.code != "RevisionDoesNotExistException":
                    raise
                missing += 1
                continue
            found.append(
                {
                    "revisionLocation": dict(revision.location),
                    "genericRevisionInfo": _generic_info(
                        revision, targeted.get(revision.identity, [])
                    ),
                }
            )
    result: dict[str, Any] = {"applicationName": app.name, "revisions": found}
    if missing:
        result["errorMessage"] = f"{missing} of the requested revisions were not found."
    return result


def list_application_revisions(ctx: ServiceContext, params: dict[str, Any]) -> dict[str, Any]:
    bucket, prefix = params.get("s3Bucket"), params.get("s3KeyPrefix")
    if prefix and not bucket:
        raise ServiceError(
            "BucketNameFilterRequiredException", "s3KeyPrefix needs s3Bucket as well."
        )
    sort_by, order = params.get("sortBy"), params.get("sortOrder") or "ascending"
    deployed = params.get("deployed") or "ignore"
    with ctx.db.read() as connection:
        app = require_application(connection, params.get("applicationName"))
        scope = f"revisions:{app.application_id}:{bucket}:{prefix}:{sort_by}:{order}:{deployed}"
        start = decode_token(scope, params.get("nextToken")) or 0
        revisions = list(
            store.all_for_application(
                connection, app.application_id, s3_bucket=bucket, s3_key_prefix=prefix
            )
        )
        targeted = _targeted_by(connection, app)
    if deployed != "ignore":
        wanted = deployed == "include"
        revisions = [r for r in revisions if (r.identity in targeted) is wanted]
    if sort_by is not None:
        attribute = _SORT_KEYS[sort_by]
        revisions.sort(
            key=lambda r: (getattr(r, attribute) is None, getattr(r, attribute) or 0.0),
            reverse=order == "descending",
        )
    if not isinstance(start, int) or start < 0:
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.")
    page = revisions[start : start + ctx.page_size]
    result: dict[str, Any] = {"revisions": [dict(r.location) for r in page]}
    if start + ctx.page_size < len(revisions):
        result["nextToken"] = encode_token(scope, start + ctx.page_size)
    return result
