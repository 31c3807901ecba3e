"""The one path from an event to stored state: load snapshot, decide, apply, then wake hosts."""

from __future__ import annotations

from sqlalchemy import Connection

from opendeploy.core.engine import Decision, Event, decide
from opendeploy.server.service.context import ServiceContext
from opendeploy.store import deployments as store

__all__ = ["feed", "feed_in", "wake"]


def feed_in(
    ctx: ServiceContext, connection: Connection, deployment_id: str, event: Event
) -> Decision:
    """Apply ``event`` to the deployment inside the caller's write transaction.

    The caller must call ``wake(ctx, decision)`` after the transaction commits.
    """
    snapshot = store.snapshot(connection, deployment_id)
    if snapshot is None:
        return Decision()
    decision = decide(snapshot, event, ctx.clock())
    if not decision.empty:
        store.apply(connection, decision, group_id=snapshot.deployment.group_id)
    return decision


def wake(ctx: ServiceContext, decision: Decision) -> None:
    hosts = {command.instance_name for command in decision.new_commands}
    if hosts:
        ctx.notifier.notify(hosts)


def feed(
    ctx: ServiceContext, deployment_id: str, event: Event, *, contact: str | None = None
) -> Decision:
    """Apply ``event`` in its own transaction and wake the hosts that got work.

    ``contact`` names a host heard from by this event (recorded in the same transaction).
    """
    with ctx.db.write() as connection:
        decision = feed_in(ctx, connection, deployment_id, event)
        if contact is not None:
            store.record_contact(connection, contact, ctx.clock())
    wake(ctx, decision)
    return decision
