"""Leases: one replica at a time does a kind of background work.

A lease is a row of the ``meta`` table (``lease:<name>``) holding its holder and expiry,
read and renewed under the row's lock, so two replicas never both think they hold it.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update

from opendeploy.store import meta
from opendeploy.store.database import Database
from opendeploy.store.tables import meta as meta_table

__all__ = ["acquire"]


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
