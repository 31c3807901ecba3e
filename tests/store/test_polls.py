"""A poll's reads say "work waits" exactly when ``next_commands_for`` would hand some over."""

from __future__ import annotations

from test_snapshots import T0, _feed, _new_deployment

from opendeploy.core.engine import CommandAcked, CommandCompleted, Started
from opendeploy.core.model import OnPremisesInstance
from opendeploy.store import deployments, instances, polls
from opendeploy.store.database import Database
from opendeploy.store.snapshots import SnapshotCache

REDELIVER = 60.0


def _look(db: Database, user_arn: str, now: float) -> tuple[str | None, bool, bool, bool]:
    """``look``'s answers (name, waiting, pending, running), checked against the other reads
    of a poll."""
    with db.read() as connection:
        instance, commands = polls.look(connection, user_arn, now=now, redeliver_after=REDELIVER)
        name = None if instance is None else instance.name
        if name is not None:
            among = polls.hosts_with_waiting_commands(
                connection, [name, "host-elsewhere"], now=now, redeliver_after=REDELIVER
            )
            assert among == ({name} if commands.waiting else set())
            assert (
                polls.commands_of(connection, name, now=now, redeliver_after=REDELIVER) == commands
            )
            assert [c.instance_name for c in deployments.running_commands(connection, name)] == (
                [name] if commands.running else []
            )
        return name, *commands


def test_waiting_follows_hand_over_and_redelivery(db: Database) -> None:
    deployment_id = _new_deployment(db, 1, "CodeDeployDefault.AllAtOnce")
    _feed(db, SnapshotCache(), deployment_id, Started(), T0 + 1)
    name = f"host-{deployment_id}-0"
    arn = f"arn:aws:iam::1:user/agent-{deployment_id}"
    with db.write() as connection:
        instances.register(
            connection,
            OnPremisesInstance(
                name=name, instance_arn=f"arn:i/{name}", register_time=T0, iam_user_arn=arn
            ),
        )

    assert _look(db, arn, T0 + 2) == (name, True, True, False)
    with db.write() as connection:
        assert deployments.next_commands_for(
            connection, [name], now=T0 + 2, redeliver_after=REDELIVER
        )[0]
    # Handed over: nothing waits, and next_commands_for agrees; it is still pending.
    assert _look(db, arn, T0 + 3) == (name, False, True, False)
    with db.write() as connection:
        assert deployments.next_commands_for(
            connection, [name], now=T0 + 3, redeliver_after=REDELIVER
        ) == [None]
    # Never acknowledged: handed over again once REDELIVER has passed.
    assert _look(db, arn, T0 + 2 + REDELIVER + 1) == (name, True, True, False)
    with db.write() as connection:
        [command] = deployments.next_commands_for(
            connection, [name], now=T0 + 2 + REDELIVER + 1, redeliver_after=REDELIVER
        )
    assert command is not None
    # Acknowledged: nothing pending any more (only a later decision gives the host work), and
    # one command running.
    _feed(db, SnapshotCache(), deployment_id, CommandAcked(command.command_id), T0 + 70)
    assert _look(db, arn, T0 + 71) == (name, False, False, True)
    # Completed: the host's next event waits.
    _feed(db, SnapshotCache(), deployment_id, CommandCompleted(command.command_id, True), T0 + 72)
    assert _look(db, arn, T0 + 73) == (name, True, True, False)


def test_an_unregistered_user_has_no_instance(db: Database) -> None:
    assert _look(db, "arn:aws:iam::1:user/nobody", T0) == (None, False, False, False)
    with db.read() as connection:
        assert polls.instance_of_user(connection, "arn:aws:iam::1:user/nobody") is None


def test_next_commands_for_hands_each_named_host_its_oldest_waiting_command(db: Database) -> None:
    deployment_id = _new_deployment(db, 3, "CodeDeployDefault.AllAtOnce")
    _feed(db, SnapshotCache(), deployment_id, Started(), T0 + 1)
    names = [f"host-{deployment_id}-{index}" for index in range(3)]
    asked = [names[2], "host-elsewhere", names[0], names[2]]

    with db.write() as connection:
        handed = deployments.next_commands_for(
            connection, asked, now=T0 + 2, redeliver_after=REDELIVER
        )
    # One command waits per host: the second poll of host 2 gets nothing; host 1 was not asked.
    assert [None if c is None else c.instance_name for c in handed] == [
        names[2],
        None,
        names[0],
        None,
    ]
    assert all(c is None or c.dispatched_time == T0 + 2 for c in handed)
    with db.write() as connection:
        assert (
            deployments.next_commands_for(connection, asked, now=T0 + 3, redeliver_after=REDELIVER)
            == [None] * 4
        )
        # Host 1's command still waits, the others are handed over.
        assert deployments.next_commands_for(
            connection, [names[0]], now=T0 + 3, redeliver_after=REDELIVER
        ) == [None]
        remaining = deployments.next_commands_for(
            connection, [names[1]], now=T0 + 3, redeliver_after=REDELIVER
        )
    assert [c.instance_name for c in remaining if c is not None] == [names[1]]
    # Never acknowledged: handed over again once REDELIVER has passed, the same commands.
    with db.write() as connection:
        again = deployments.next_commands_for(
            connection, asked, now=T0 + 2 + REDELIVER + 1, redeliver_after=REDELIVER
        )
    assert [None if c is None else c.command_id for c in again] == [
        None if c is None else c.command_id for c in handed
    ]


def test_next_commands_for_hands_a_host_named_twice_its_two_oldest_in_order(db: Database) -> None:
    shared = f"host-shared-{T0}"
    first = _new_deployment(db, 1, "CodeDeployDefault.AllAtOnce", names=[shared])
    second = _new_deployment(db, 1, "CodeDeployDefault.AllAtOnce", names=[shared])
    # Stored first, the second deployment's command is the later one by its creation time.
    _feed(db, SnapshotCache(), second, Started(), T0 + 2)
    _feed(db, SnapshotCache(), first, Started(), T0 + 1)

    with db.write() as connection:
        handed = deployments.next_commands_for(
            connection, [shared, shared, shared], now=T0 + 3, redeliver_after=REDELIVER
        )
    assert [None if c is None else c.deployment_id for c in handed] == [first, second, None]
