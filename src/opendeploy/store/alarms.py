"""Alert states pushed by Alertmanager (one row per alert, keyed by its fingerprint).

Replicas share the database, so a push received by one server is seen by every alarm monitor.
A notification older than the stored state of the same alert (by Alertmanager's own
timestamps: when it started firing, when it was resolved) is ignored, so a retried or
reordered delivery never turns a resolved alert back into a firing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.store.tables import pushed_alerts

__all__ = ["PushedAlert", "PushedState", "prune_resolved", "record", "states"]


@dataclass(frozen=True)
class PushedAlert:
    """One alert of an Alertmanager notification.

    changed_time: when it started firing (firing) or stopped (resolved), epoch seconds.
    """

    fingerprint: str
    alert_name: str
    firing: bool
    changed_time: float


@dataclass(frozen=True)
class PushedState:
    """What the pushes say about the alerts of some names."""

    #: Names Alertmanager has ever reported (firing or resolved).
    known: frozenset[str]
    #: Names with at least one alert firing.
    firing: frozenset[str]


def record(connection: Connection, alerts: Iterable[PushedAlert], now: float) -> int:
    """Store the alerts' states; the number that changed the stored state."""
    changed = 0
    for alert in alerts:
        values = {
            "alert_name": alert.alert_name,
            "firing": alert.firing,
            "changed_time": alert.changed_time,
            "received_time": now,
        }
        if _update(connection, alert, values):
            changed += 1
            continue
        exists = connection.execute(
            select(pushed_alerts.c.fingerprint).where(
                pushed_alerts.c.fingerprint == alert.fingerprint
            )
        ).first()
        if exists is not None:
            continue  # the stored state is newer
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(pushed_alerts).values(fingerprint=alert.fingerprint, **values)
                )
        except IntegrityError:  # another request stored it first
            if not _update(connection, alert, values):
                continue
        changed += 1
    return changed


def _update(connection: Connection, alert: PushedAlert, values: dict[str, object]) -> bool:
    result = connection.execute(
        update(pushed_alerts)
        .where(
            pushed_alerts.c.fingerprint == alert.fingerprint,
            pushed_alerts.c.changed_time <= alert.changed_time,
        )
        .values(**values)
    )
    return result.rowcount > 0


def states(connection: Connection, names: Iterable[str]) -> PushedState:
    """The pushed state of the alerts named ``names``."""
    wanted = sorted(set(names))
    if not wanted:
        return PushedState(frozenset(), frozenset())
    rows = connection.execute(
        select(pushed_alerts.c.alert_name, pushed_alerts.c.firing).where(
            pushed_alerts.c.alert_name.in_(wanted)
        )
    ).all()
    return PushedState(
        known=frozenset(row.alert_name for row in rows),
        firing=frozenset(row.alert_name for row in rows if row.firing),
    )


def prune_resolved(connection: Connection, *, received_before: float) -> int:
    """Forget resolved alerts last heard of before ``received_before``."""
    result = connection.execute(
        delete(pushed_alerts).where(
            pushed_alerts.c.firing.is_(False),
            pushed_alerts.c.received_time < received_before,
        )
    )
    return result.rowcount
