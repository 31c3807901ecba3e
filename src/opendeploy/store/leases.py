"""Leases: one replica at a time does a kind of background work.

A lease is a row of the ``meta`` table (``lease:<name>``) holding its holder and expiry,
read and renewed under the row's lock, so two replicas never both think they hold it. A
replica that stops cleanly releases its leases (the row goes), so another replica takes the
work over at its next try instead of once the lease has expired.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from opendeploy.store import meta
from opendeploy.store.database import Database
from opendeploy.store.tables import meta as meta_table

__all__ = ["Lease", "acquire", "current", "release"]


@dataclass(frozen=True)
class Lease:
    holder: str
    #: Epoch seconds, on the clock the holder passed as ``now``.
    expires: float


def acquire(db: Database, name: str, holder: str, *, now: float, ttl: float) -> bool:
    """Take or renew the lease ``name`` for ``holder`` until ``now + ttl``; False if another
    holder's lease has not expired."""
    key = f"lease:{name}"
    granted = json.dumps({"holder": holder, "expires": now + ttl})
    with db.write() as connection:
        current = meta.get_or_create(connection, key, granted)
        if current == granted:
            return True
        row = connection.execute(
            select(meta_table.c.value).where(meta_table.c.key == key).with_for_update()
        ).scalar_one()
        try:
            lease = json.loads(row)
        except ValueError:
            lease = {}
        if lease.get("holder") != holder and float(lease.get("expires", 0)) > now:
            return False
        connection.execute(update(meta_table).where(meta_table.c.key == key).values(value=granted))
        return True


def release(db: Database, name: str, holder: str) -> bool:
    """Give up the lease ``name`` if ``holder`` holds it (expired or not); whether it did.

    The row is deleted under its lock, so a replica renewing at the same moment either sees
    the old holder (and waits for the delete) or no row (and takes the lease at once).
    """
    key = f"lease:{name}"
    with db.write() as connection:
        row = connection.execute(
            select(meta_table.c.value).where(meta_table.c.key == key).with_for_update()
        ).scalar()
        if row is None or _holder(row) != holder:
            return False
        connection.execute(delete(meta_table).where(meta_table.c.key == key))
        return True


def current(db: Database, name: str, *, now: float) -> Lease | None:
    """The lease ``name`` as held at ``now``; None when nobody holds it (released, expired)."""
    with db.read() as connection:
        row = meta.get(connection, f"lease:{name}")
    if row is None:
        return None
    try:
        stored = json.loads(row)
        lease = Lease(str(stored["holder"]), float(stored["expires"]))
    except (ValueError, TypeError, KeyError):
        return None
    return lease if lease.expires > now else None


def _holder(row: str) -> object:
    try:
        return json.loads(row).get("holder")
    except (ValueError, AttributeError):
        return None
