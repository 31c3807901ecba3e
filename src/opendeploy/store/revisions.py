"""Application revisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from opendeploy.core.model import Revision
from opendeploy.store.tables import revisions

__all__ = ["all_for_application", "by_identity", "register"]


def _record(row: Row[Any]) -> Revision:
    return Revision(
        application_id=row.application_id,
        identity=row.identity,
        location=row.location,
        register_time=row.register_time,
        description=row.description,
        first_used_time=row.first_used_time,
        last_used_time=row.last_used_time,
    )


def register(connection: Connection, revision: Revision) -> None:
    """Record a revision; registering it again updates its description only."""
    existing = by_identity(connection, revision.application_id, revision.identity)
    if existing is not None:
        if revision.description is not None:
            connection.execute(
                update(revisions)
                .where(
                    revisions.c.application_id == revision.application_id,
                    revisions.c.identity == revision.identity,
                )
                .values(description=revision.description)
            )
        return
    s3 = revision.location.get("s3Location") or {}
    connection.execute(
        insert(revisions).values(
            application_id=revision.application_id,
            identity=revision.identity,
            location=dict(revision.location),
            description=revision.description,
            register_time=revision.register_time,
            s3_bucket=s3.get("bucket"),
            s3_key=s3.get("key"),
        )
    )


def by_identity(connection: Connection, application_id: str, identity: str) -> Revision | None:
    row = connection.execute(
        select(revisions).where(
            revisions.c.application_id == application_id, revisions.c.identity == identity
        )
    ).first()
    return None if row is None else _record(row)


def all_for_application(
    connection: Connection,
    application_id: str,
    *,
    s3_bucket: str | None = None,
    s3_key_prefix: str | None = None,
) -> Sequence[Revision]:
    """Every revision of an application matching the S3 filters, oldest registration first."""
    statement = select(revisions).where(revisions.c.application_id == application_id)
    if s3_bucket is not None:
        statement = statement.where(revisions.c.s3_bucket == s3_bucket)
    if s3_key_prefix:
        escaped = s3_key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(revisions.c.s3_key.like(escaped + "%", escape="\\"))
    rows = connection.execute(statement.order_by(revisions.c.id)).all()
    return [_record(row) for row in rows]
