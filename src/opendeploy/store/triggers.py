"""Trigger deliveries: fanning the notification outbox out to trigger targets, and the
claims that let several server replicas deliver without sending anything twice at once.

A notification is fanned out once: its ``trigger_fanout`` row is written in the same
transaction as its deliveries. A delivery is claimed by a conditional UPDATE that only one
transaction can win (and, on PostgreSQL, candidates are picked with FOR UPDATE SKIP LOCKED so
replicas do not queue behind each other); a claim is a lease, so a delivery whose worker died
is taken up again once the lease expires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, exists, insert, or_, select, update

from opendeploy.store.tables import notifications, trigger_deliveries, trigger_fanout

__all__ = [
    "DELIVERED",
    "FAILED",
    "IN_PROGRESS",
    "PENDING",
    "Delivery",
    "NewDelivery",
    "OutboxEntry",
    "add_deliveries",
    "claim_due",
    "finish",
    "for_deployment",
    "has_due",
    "has_unfanned",
    "mark_fanned_out",
    "unfanned",
]

PENDING = "Pending"
IN_PROGRESS = "InProgress"
DELIVERED = "Delivered"
FAILED = "Failed"


@dataclass(frozen=True)
class OutboxEntry:
    """A notification (trigger event) from the outbox."""

    notification_id: int
    deployment_id: str
    group_id: str
    event: str
    instance_name: str | None
    created_time: float


@dataclass(frozen=True)
class NewDelivery:
    delivery_id: str
    notification_id: int
    deployment_id: str
    group_id: str
    trigger_name: str
    target: str
    event: str
    instance_name: str | None
    subject: str
    body: str


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    notification_id: int
    deployment_id: str
    group_id: str
    trigger_name: str
    target: str
    event: str
    instance_name: str | None
    subject: str
    body: str
    status: str
    attempts: int
    create_time: float
    next_attempt_time: float | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    last_http_status: int | None = None
    last_attempt_time: float | None = None
    complete_time: float | None = None


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        delivery_id=row.id,
        notification_id=row.notification_id,
        deployment_id=row.deployment_id,
        group_id=row.group_id,
        trigger_name=row.trigger_name,
        target=row.target,
        event=row.event,
        instance_name=row.instance_name,
        subject=row.subject,
        body=row.body,
        status=row.status,
        attempts=row.attempts,
        create_time=row.create_time,
        next_attempt_time=row.next_attempt_time,
        lease_token=row.lease_token,
        lease_until=row.lease_until,
        last_error=row.last_error,
        last_http_status=row.last_http_status,
        last_attempt_time=row.last_attempt_time,
        complete_time=row.complete_time,
    )


def _unfanned(since: float) -> Any:
    fanned = exists().where(trigger_fanout.c.notification_id == notifications.c.id)
    return and_(notifications.c.created_time >= since, ~fanned)


def has_unfanned(connection: Connection, *, since: float) -> bool:
    """A cheap read: is any notification created at or after ``since`` not fanned out yet?"""
    row = connection.execute(select(notifications.c.id).where(_unfanned(since)).limit(1)).first()
    return row is not None


def unfanned(connection: Connection, *, since: float, limit: int) -> list[OutboxEntry]:
    """Notifications not fanned out yet, oldest first, locked for this transaction where the
    database can (rows another replica holds are skipped, not waited for)."""
    rows = connection.execute(
        select(notifications)
        .where(_unfanned(since))
        .order_by(notifications.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=notifications)
    ).all()
    return [
        OutboxEntry(
            notification_id=row.id,
            deployment_id=row.deployment_id,
            group_id=row.group_id,
            event=row.event,
            instance_name=row.instance_name,
            created_time=row.created_time,
        )
        for row in rows
    ]


def mark_fanned_out(connection: Connection, notification_ids: Sequence[int], now: float) -> None:
    if notification_ids:
        connection.execute(
            insert(trigger_fanout),
            [{"notification_id": i, "fanout_time": now} for i in notification_ids],
        )


def add_deliveries(connection: Connection, deliveries: Sequence[NewDelivery], now: float) -> None:
    """Store new deliveries, each due at once."""
    if not deliveries:
        return
    connection.execute(
        insert(trigger_deliveries),
        [
            {
                "id": d.delivery_id,
                "notification_id": d.notification_id,
                "deployment_id": d.deployment_id,
                "group_id": d.group_id,
                "trigger_name": d.trigger_name,
                "target": d.target,
                "event": d.event,
                "instance_name": d.instance_name,
                "subject": d.subject,
                "body": d.body,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_time": now,
                "create_time": now,
            }
            for d in deliveries
        ],
    )


def _due(now: float, max_attempts: int) -> Any:
    """Waiting for an attempt, or claimed by a worker whose lease ran out (it died)."""
    c = trigger_deliveries.c
    return or_(
        and_(c.status == PENDING, c.next_attempt_time <= now),
        and_(c.status == IN_PROGRESS, c.lease_until < now, c.attempts < max_attempts),
    )


def has_due(connection: Connection, *, now: float, max_attempts: int) -> bool:
    row = connection.execute(
        select(trigger_deliveries.c.id).where(_due(now, max_attempts)).limit(1)
    ).first()
    return row is not None


def claim_due(
    connection: Connection,
    *,
    now: float,
    limit: int,
    lease_seconds: float,
    max_attempts: int,
    token: str,
) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries under ``token`` until ``now + lease_seconds``;
    each claim counts as an attempt. Only one transaction can claim a delivery.

    A claim whose lease ran out after its last allowed attempt is closed as Failed here.
    """
    c = trigger_deliveries.c
    connection.execute(
        update(trigger_deliveries)
        .where(c.status == IN_PROGRESS, c.lease_until < now, c.attempts >= max_attempts)
        .values(
            status=FAILED,
            complete_time=now,
            lease_token=None,
            lease_until=None,
            last_error="The last attempt did not report back before its lease ran out "
            "(the server delivering it stopped).",
        )
    )
    if limit <= 0:
        return []
    due = _due(now, max_attempts)
    candidates = list(
        connection.execute(
            select(c.id)
            .where(due)
            .order_by(c.next_attempt_time, c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not candidates:
        return []
    connection.execute(
        update(trigger_deliveries)
        .where(c.id.in_(candidates), due)
        .values(
            status=IN_PROGRESS,
            attempts=c.attempts + 1,
            lease_token=token,
            lease_until=now + lease_seconds,
            last_attempt_time=now,
            next_attempt_time=None,
        )
    )
    rows = connection.execute(
        select(trigger_deliveries).where(c.lease_token == token).order_by(c.create_time, c.id)
    ).all()
    return [_delivery(row) for row in rows]


def finish(
    connection: Connection,
    delivery: Delivery,
    *,
    status: str,
    now: float,
    http_status: int | None,
    error: str | None,
    next_attempt_time: float | None = None,
) -> bool:
    """Record the outcome of the attempt made under ``delivery``'s claim; False when the
    claim is no longer ours (its lease ran out and another worker took the delivery)."""
    c = trigger_deliveries.c
    done = connection.execute(
        update(trigger_deliveries)
        .where(
            c.id == delivery.delivery_id,
            c.status == IN_PROGRESS,
            c.lease_token == delivery.lease_token,
        )
        .values(
            status=status,
            lease_token=None,
            lease_until=None,
            last_http_status=http_status,
            last_error=error,
            next_attempt_time=next_attempt_time,
            complete_time=now if status in (DELIVERED, FAILED) else None,
        )
    )
    return bool(done.rowcount)


def for_deployment(
    connection: Connection, deployment_id: str, *, offset: int, limit: int
) -> list[Delivery]:
    """A deployment's deliveries, oldest first."""
    c = trigger_deliveries.c
    rows = connection.execute(
        select(trigger_deliveries)
        .where(c.deployment_id == deployment_id)
        .order_by(c.create_time, c.notification_id, c.trigger_name)
        .offset(offset)
        .limit(limit)
    ).all()
    return [_delivery(row) for row in rows]
