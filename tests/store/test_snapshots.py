"""Cached engine snapshots: always what a full read of the database gives, on every backend.

Two ``SnapshotCache`` objects play two server replicas feeding events to one deployment in
turn; before each event the snapshot each would decide on is compared with a cache-less load.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event

from opendeploy.core.configs import predefined_config
from opendeploy.core.deployments import (
    CommandStatus,
    Deployment,
    DeploymentStatus,
    TargetStatus,
)
from opendeploy.core.engine import (
    CommandAcked,
    CommandCompleted,
    Event,
    Snapshot,
    Started,
    StopRequested,
    decide,
)
from opendeploy.core.lifecycle import events_for
from opendeploy.core.model import Application
from opendeploy.core.planner import plan_targets
from opendeploy.core.revisions import revision_identity
from opendeploy.store import applications
from opendeploy.store import deployments as store
from opendeploy.store.database import Database
from opendeploy.store.snapshots import Loaded, SnapshotCache, advanced, apply, load

REVISION = {"revisionType": "String", "string": {"content": "version: 0.0\nos: linux\n"}}
# Now, not a fixed past: servers of other tests share the PostgreSQL database, and their
# reconcilers would fail commands created long ago as heartbeat-lost.
T0 = time.time()


def _new_deployment(db: Database, hosts: int, config: str, names: list[str] | None = None) -> str:
    """A deployment to ``hosts`` hosts of its own, or to ``names``."""
    application = Application(
        application_id=str(uuid.uuid4()),
        name=f"app-{uuid.uuid4().hex[:10]}",
        compute_platform="Server",
        create_time=T0,
    )
    deployment_id = "d-" + uuid.uuid4().hex[:9].upper()
    predefined = predefined_config(config)
    assert predefined is not None and predefined.minimum_healthy_hosts is not None
    deployment = Deployment(
        deployment_id=deployment_id,
        application_id=application.application_id,
        application_name=application.name,
        group_id=str(uuid.uuid4()),
        group_name="web",
        config_name=config,
        minimum_healthy_hosts=predefined.minimum_healthy_hosts,
        revision=REVISION,
        status=DeploymentStatus.CREATED,
        create_time=T0,
    )
    targets = plan_targets(
        deployment_id,
        names or [f"host-{deployment_id}-{index}" for index in range(hosts)],
        {},
        revision_identity=revision_identity(REVISION),
        events=events_for(),
        now=T0,
    )
    with db.write() as connection:
        applications.create(connection, application)
        store.create(connection, deployment, targets)
    return deployment_id


def _without_dispatch_times(snapshot: Snapshot) -> Snapshot:
    commands = {
        name: replace(command, dispatched_time=None) for name, command in snapshot.commands.items()
    }
    return replace(snapshot, commands=commands)


def _feed(
    db: Database, cache: SnapshotCache, deployment_id: str, event: Event, now: float
) -> Loaded:
    """One event the way the server feeds it, checking the cached view on the way."""
    with db.write() as connection:
        full = load(connection, deployment_id)
        loaded = load(connection, deployment_id, cache)
        assert full is not None and loaded is not None
        assert loaded.version == full.version
        assert _without_dispatch_times(loaded.snapshot) == _without_dispatch_times(full.snapshot)
        fresh = load(connection, deployment_id, cache, fresh_commands=True)
        assert fresh is not None and fresh.snapshot == full.snapshot
        decision = decide(loaded.snapshot, event, now)
        if not decision.empty:
            apply(connection, decision, loaded)
    if not decision.empty:
        cache.remember(loaded, decision)
    return loaded


def _next_event(snapshot: Snapshot, rng: random.Random, fail_on: str) -> Event:
    command = rng.choice(sorted(snapshot.commands.values(), key=lambda c: c.command_id))
    if command.status is CommandStatus.PENDING:
        return CommandAcked(command.command_id)
    failed = command.instance_name == fail_on and command.event == "AfterInstall"
    return CommandCompleted(command.command_id, succeeded=not failed, agent_code=4 * failed)


@pytest.mark.parametrize("config", ["CodeDeployDefault.AllAtOnce", "CodeDeployDefault.HalfAtATime"])
def test_two_replicas_caches_always_see_the_stored_state(db: Database, config: str) -> None:
    deployment_id = _new_deployment(db, 6, config)
    replicas = [SnapshotCache(), SnapshotCache()]
    rng = random.Random(config)
    fail_on = f"host-{deployment_id}-5"
    now = T0
    with db.write() as connection:
        started = load(connection, deployment_id)
        assert started is not None
        apply(connection, decide(started.snapshot, Started(), now), started)
    steps = 0
    while True:
        now += 1
        replica = replicas[rng.randrange(2)]
        with db.write() as connection:
            current = load(connection, deployment_id)
            assert current is not None
            if not current.snapshot.deployment.active:
                break
            # Polls hand commands over between decisions, outside them.
            for name in list(current.snapshot.commands)[: rng.randrange(3)]:
                store.next_commands_for(connection, [name], now=now, redeliver_after=300)
        _feed(db, replica, deployment_id, _next_event(current.snapshot, rng, fail_on), now)
        steps += 1
    assert replicas[0].hits + replicas[0].catch_ups > 0
    assert replicas[1].hits + replicas[1].catch_ups > 0
    names = list(events_for())
    skipped_after_failure = len(names) - names.index("AfterInstall") - 1
    assert steps == 2 * (6 * len(names) - skipped_after_failure)
    assert current.snapshot.deployment.status is DeploymentStatus.SUCCEEDED
    assert current.snapshot.targets[fail_on].status is TargetStatus.FAILED


def test_a_current_cache_reads_no_target_or_command_rows(db: Database) -> None:
    deployment_id = _new_deployment(db, 4, "CodeDeployDefault.AllAtOnce")
    cache = SnapshotCache()
    loaded = _feed(db, cache, deployment_id, Started(), T0 + 1)
    command = next(iter(cache_entry(cache, deployment_id).snapshot.commands.values()))
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with db.write() as connection:
            again = load(connection, deployment_id, cache)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert again is not None and again.version == loaded.version + 1
    assert command.instance_name in again.snapshot.commands
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1 and "FROM deployments" in reads[0], reads


def test_a_stop_withdraws_only_commands_no_agent_has(db: Database) -> None:
    """Hand-overs are not versioned; a stop reads them fresh, so a command an agent holds is
    not withdrawn even when the cached snapshot predates its hand-over."""
    deployment_id = _new_deployment(db, 2, "CodeDeployDefault.AllAtOnce")
    cache = SnapshotCache()
    _feed(db, cache, deployment_id, Started(), T0 + 1)
    held, idle = sorted(cache_entry(cache, deployment_id).snapshot.commands)
    with db.write() as connection:
        assert store.next_commands_for(connection, [held], now=T0 + 2, redeliver_after=300)[0]
        loaded = load(connection, deployment_id, cache, fresh_commands=True)
        assert loaded is not None
        decision = decide(loaded.snapshot, StopRequested(), T0 + 3)
        apply(connection, decision, loaded)
    withdrawn = {c.instance_name for c in decision.commands if c.status is CommandStatus.FAILED}
    assert withdrawn == {idle}


def test_a_rolled_back_transaction_leaves_the_cache_behind_not_ahead(db: Database) -> None:
    deployment_id = _new_deployment(db, 2, "CodeDeployDefault.AllAtOnce")
    cache = SnapshotCache()
    _feed(db, cache, deployment_id, Started(), T0 + 1)
    before = cache_entry(cache, deployment_id)
    command = next(iter(before.snapshot.commands.values()))
    with pytest.raises(RuntimeError), db.write() as connection:
        loaded = load(connection, deployment_id, cache)
        assert loaded is not None
        apply(connection, decide(loaded.snapshot, CommandAcked(command.command_id), T0 + 2), loaded)
        raise RuntimeError("the request failed after the decision")
    assert cache_entry(cache, deployment_id) is before
    _feed(db, cache, deployment_id, CommandAcked(command.command_id), T0 + 3)


def test_finished_deployments_leave_the_cache(db: Database) -> None:
    deployment_id = _new_deployment(db, 1, "CodeDeployDefault.AllAtOnce")
    cache = SnapshotCache()
    _feed(db, cache, deployment_id, Started(), T0 + 1)
    _feed(db, cache, deployment_id, StopRequested(), T0 + 2)
    assert cache.get(deployment_id) is None


def cache_entry(cache: SnapshotCache, deployment_id: str) -> Loaded:
    entry = cache.get(deployment_id)
    assert entry is not None
    return entry


def test_advancing_in_place_matches_the_stored_state_and_spares_the_cache(db: Database) -> None:
    """A transaction's chain of events advances its own snapshot in place (no copy of every
    target per event); the result is what was stored, and the cached snapshot it was loaded
    from is untouched."""
    deployment_id = _new_deployment(db, 4, "CodeDeployDefault.AllAtOnce")
    cache = SnapshotCache()
    _feed(db, cache, deployment_id, Started(), T0 + 1)
    cached = cache_entry(cache, deployment_id)
    cached_targets, cached_commands = dict(cached.snapshot.targets), dict(cached.snapshot.commands)
    with db.write() as connection:
        loaded = load(connection, deployment_id, cache)
        assert loaded is not None
        chained = loaded
        for step, command in enumerate(
            sorted(cached_commands.values(), key=lambda c: c.command_id)
        ):
            decision = decide(chained.snapshot, CommandAcked(command.command_id), T0 + 2 + step)
            apply(connection, decision, chained)
            after = advanced(chained, decision, in_place=True)
            assert after.snapshot.targets is chained.snapshot.targets, "no copy"
            chained = after
    with db.read() as connection:
        stored = load(connection, deployment_id)
    assert stored is not None and chained.version == stored.version
    assert _without_dispatch_times(chained.snapshot) == _without_dispatch_times(stored.snapshot)
    assert all(c.status is CommandStatus.IN_PROGRESS for c in chained.snapshot.commands.values())
    assert dict(cached.snapshot.targets) == cached_targets
    assert dict(cached.snapshot.commands) == cached_commands
