"""The one path from an event to stored state: load snapshot, decide, apply, then wake hosts.

``feed`` applies events in their own transactions, and events of one deployment that arrive
while another of its events is being applied are applied together, in one transaction
(``server.service.batches``): an AllAtOnce rollout to a large fleet then costs one snapshot
load and one commit per batch, not per event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Connection

from opendeploy.core.deployments import CommandStatus, HostCommand
from opendeploy.core.engine import (
    AlarmActive,
    CommandCompleted,
    Decision,
    Event,
    Started,
    StopRequested,
    decide,
)
from opendeploy.logs import deployment_context
from opendeploy.server.service.batches import Job
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.rollbacks import start_rollback
from opendeploy.store import snapshots
from opendeploy.store.snapshots import Loaded

__all__ = ["Fed", "Feed", "feed", "feed_in", "feed_taking_next", "started", "wake"]

log = logging.getLogger(__name__)

#: The latest state of each deployment written in the current transaction.
_Chain = dict[str, Loaded]


@dataclass(frozen=True)
class Feed:
    """An event for a deployment, and the host it was heard from (if any)."""

    event: Event
    host: str | None = None


@dataclass(frozen=True)
class Fed:
    """What an event led to: its decisions (a rollback's follow), and for a completion whose
    agent takes the next command (``CommandCompleted.take_next``), that command."""

    decisions: list[Decision]
    taken: HostCommand | None = None


def feed_in(
    ctx: ServiceContext, connection: Connection, deployment_id: str, event: Event
) -> list[Decision]:
    """Apply ``event`` to the deployment inside the caller's write transaction.

    When the decision calls for a rollback, the rollback deployment is created and started
    in the same transaction; its decisions follow. The caller must pass all of them to
    ``wake`` after the transaction commits.
    """
    chain: _Chain = {}
    decisions: list[Decision] = []
    _feed_in(ctx, connection, deployment_id, event, decisions, chain)
    # The caller's transaction may still roll back: no cached snapshot may run ahead of it.
    for touched in chain:
        ctx.snapshots.forget(touched)
    return decisions


def _feed_in(
    ctx: ServiceContext,
    connection: Connection,
    deployment_id: str,
    event: Event,
    decisions: list[Decision],
    chain: _Chain,
) -> None:
    with deployment_context(deployment_id):
        # A stop reads commands anew: their hand-over times are not part of any version.
        fresh = isinstance(event, StopRequested | AlarmActive)
        loaded = None if fresh else chain.get(deployment_id)
        if loaded is None:
            loaded = snapshots.load(connection, deployment_id, ctx.snapshots, fresh_commands=fresh)
        if loaded is None:
            return
        decision = decide(loaded.snapshot, event, ctx.clock())
        decisions.append(decision)
        if decision.empty:
            chain[deployment_id] = loaded
            return
        snapshots.apply(connection, decision, loaded)
        # The chain's snapshots are this transaction's own (``load`` builds them afresh).
        chain[deployment_id] = snapshots.advanced(loaded, decision, in_place=True)
        if decision.rollback:
            rollback_id = start_rollback(ctx, connection, deployment_id)
            if rollback_id is not None:
                _feed_in(ctx, connection, rollback_id, started(ctx), decisions, chain)


def started(ctx: ServiceContext) -> Started:
    """The event that begins a deployment, with this installation's limits."""
    return Started(max_instances=ctx.max_instances_per_deployment)


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
    ctx: ServiceContext, deployment_id: str, event: Event, *, host: str | None = None
) -> list[Decision]:
    """Apply ``event`` in its own transaction (shared with other events of the deployment
    that are waiting at the same time) and wake the hosts that got work.

    ``host`` names the host this event was heard from, if any.
    """
    fed = ctx.feeds.run(deployment_id, Feed(event, host), partial(_feed_batch, ctx, deployment_id))
    return [] if fed is None else fed.decisions


def feed_taking_next(
    ctx: ServiceContext, deployment_id: str, event: CommandCompleted, *, host: str
) -> HostCommand | None:
    """Apply a completion whose agent takes its next command in the answer (``take_next``):
    that command, handed over and acknowledged, or None when the host has nothing more.

    The completion may be a resend whose first answer was lost: the command the first one
    issued is then still the host's open, acknowledged command, and is handed over again.
    """
    fed = ctx.feeds.run(deployment_id, Feed(event, host), partial(_feed_batch, ctx, deployment_id))
    return None if fed is None else fed.taken


def _feed_batch(ctx: ServiceContext, deployment_id: str, jobs: Sequence[Job[Feed, Fed]]) -> None:
    try:
        results = _apply_together(ctx, deployment_id, [job.item for job in jobs])
    except Exception:
        if len(jobs) == 1:
            raise
        # One event that cannot be applied must not fail the others: one at a time, then.
        log.warning("a batch of %d events failed; applying them one by one", len(jobs))
        for job in jobs:
            try:
                job.result = _apply_together(ctx, deployment_id, [job.item])[0]
            except Exception as error:
                job.error = error
            job.done = True
        return
    for job, fed in zip(jobs, results, strict=True):
        job.result, job.done = fed, True


def _apply_together(ctx: ServiceContext, deployment_id: str, feeds: Sequence[Feed]) -> list[Fed]:
    """Apply ``feeds`` in one transaction; what each one led to, in order."""
    chain: _Chain = {}
    results: list[Fed] = []
    with ctx.db.write() as connection:
        for item in feeds:
            decisions: list[Decision] = []
            _feed_in(ctx, connection, deployment_id, item.event, decisions, chain)
            results.append(Fed(decisions, _taken(item, chain.get(deployment_id))))
    # Committed: the cache may now run as far as the database.
    for loaded in chain.values():
        ctx.snapshots.keep(loaded)
    wake(ctx, *(decision for fed in results for decision in fed.decisions))
    return results


def _taken(item: Feed, loaded: Loaded | None) -> HostCommand | None:
    """The command a ``take_next`` completion hands its agent: the host's open command of
    the deployment, issued acknowledged (by this completion, or by a resend's first try)."""
    event = item.event
    if not isinstance(event, CommandCompleted) or not event.take_next or loaded is None:
        return None
    command = loaded.snapshot.commands.get(item.host or "")
    if command is None or command.command_id == event.command_id:
        return None
    return command if command.status is CommandStatus.IN_PROGRESS else None
