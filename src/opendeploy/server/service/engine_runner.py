"""The one path from an event to stored state: load snapshot, decide, apply, then wake hosts."""

from __future__ import annotations

import logging

from sqlalchemy import Connection

from opendeploy.core.engine import Decision, Event, Started, decide
from opendeploy.logs import deployment_context
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.rollbacks import start_rollback
from opendeploy.store import deployments as store

__all__ = ["feed", "feed_in", "wake"]

log = logging.getLogger(__name__)


def feed_in(
    ctx: ServiceContext, connection: Connection, deployment_id: str, event: Event
) -> list[Decision]:
    """Apply ``event`` to the deployment inside the caller's write transaction.

    When the decision calls for a rollback, the rollback deployment is created and started
    in the same transaction; its decisions follow. The caller must pass all of them to
    ``wake`` after the transaction commits.
    """
    with deployment_context(deployment_id):
        return _feed_in(ctx, connection, deployment_id, event)


def _feed_in(
    ctx: ServiceContext, connection: Connection, deployment_id: str, event: Event
) -> list[Decision]:
    snapshot = store.snapshot(connection, deployment_id)
    if snapshot is None:
        return []
    decision = decide(snapshot, event, ctx.clock())
    if decision.empty:
        return [decision]
    store.apply(connection, decision, group_id=snapshot.deployment.group_id)
    decisions = [decision]
    if decision.rollback:
        rollback_id = start_rollback(ctx, connection, deployment_id)
        if rollback_id is not None:
            decisions += feed_in(ctx, connection, rollback_id, Started())
    return decisions


def wake(ctx: ServiceContext, *decisions: Decision) -> None:
    """Wake the hosts that got commands. Never raises: the decisions are committed already,
    and a host not woken finds its command at its next periodic re-check."""
    hosts = {c.instance_name for decision in decisions for c in decision.new_commands}
    if not hosts:
        return
    try:
        ctx.notifier.notify(hosts)
    except Exception:
        log.exception("could not wake hosts %s; their polls will find the work anyway", hosts)


def feed(
    ctx: ServiceContext, deployment_id: str, event: Event, *, contact: str | None = None
) -> list[Decision]:
    """Apply ``event`` in its own transaction and wake the hosts that got work.

    ``contact`` names a host heard from by this event (recorded in the same transaction).
    """
    with ctx.db.write() as connection:
        decisions = feed_in(ctx, connection, deployment_id, event)
        if contact is not None:
            store.record_contact(connection, contact, ctx.clock())
    wake(ctx, *decisions)
    return decisions
