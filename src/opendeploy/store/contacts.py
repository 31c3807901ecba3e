"""When each agent was last heard from: the heartbeat the reconciler judges hosts by.

Every poll, heartbeat and command report is contact. Writing each one in its own transaction
made contacts the biggest write load of an idle fleet (one write per poll), so the agent API
notes them in a :class:`ContactBook` and the book writes all the contacts noted since its last
flush in one transaction, every ``interval`` seconds. The heartbeat timeout (60 s by default)
is many times the interval, so the lag is harmless; a contact noted just before a crash is
lost, which costs at most one interval of a host's silence budget.

Contacts only move forward: a flush never replaces a later contact that another replica (or
an engine event) stored meanwhile, so every replica of a shared PostgreSQL database can flush
its own book.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opendeploy.store.database import Database
from opendeploy.store.tables import agent_contacts

__all__ = [
    "ContactBook",
    "agents_heard_since",
    "last_contacts",
    "record_contact",
    "record_contacts",
]

log = logging.getLogger(__name__)

#: Names per ``IN (...)`` list (SQLite allows 32,766 parameters, PostgreSQL 65,535).
_CHUNK = 500

_MOVE_FORWARD = (
    update(agent_contacts)
    .where(
        agent_contacts.c.instance_name == bindparam("contact_name"),
        agent_contacts.c.last_seen < bindparam("contact_seen"),
    )
    .values(last_seen=bindparam("contact_seen"))
)


def record_contact(connection: Connection, instance_name: str, now: float) -> None:
    """Note contact with one host, in the caller's transaction."""
    record_contacts(connection, {instance_name: now})


def record_contacts(connection: Connection, contacts: Mapping[str, float]) -> None:
    """Store the latest contact of each host; an earlier time than the stored one is ignored."""
    if not contacts:
        return
    stored = last_contacts(connection, list(contacts))
    later = [
        {"contact_name": name, "contact_seen": seen}
        for name, seen in contacts.items()
        if name in stored and stored[name] < seen
    ]
    if later:
        connection.execute(_MOVE_FORWARD, later)
    new = [{"instance_name": n, "last_seen": s} for n, s in contacts.items() if n not in stored]
    if not new:
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(agent_contacts), new)
    except IntegrityError:
        # Another replica stored one of them meanwhile: one at a time, forward only.
        for row in new:
            _record_one(connection, row["instance_name"], row["last_seen"])


def _record_one(connection: Connection, name: str, seen: float) -> None:
    try:
        with connection.begin_nested():
            connection.execute(insert(agent_contacts).values(instance_name=name, last_seen=seen))
    except IntegrityError:
        connection.execute(_MOVE_FORWARD, {"contact_name": name, "contact_seen": seen})


def last_contacts(connection: Connection, names: Sequence[str]) -> dict[str, float]:
    """The stored last contact of each of these hosts that has one."""
    found: dict[str, float] = {}
    for start in range(0, len(names), _CHUNK):
        rows = connection.execute(
            select(agent_contacts.c.instance_name, agent_contacts.c.last_seen).where(
                agent_contacts.c.instance_name.in_(names[start : start + _CHUNK])
            )
        ).all()
        found.update({row.instance_name: row.last_seen for row in rows})
    return found


def agents_heard_since(connection: Connection, since: float) -> int:
    """How many hosts were heard from at ``since`` or later."""
    return int(
        connection.execute(
            select(func.count())
            .select_from(agent_contacts)
            .where(agent_contacts.c.last_seen >= since)
        ).scalar_one()
    )


class ContactBook:
    """Contacts noted in memory, written together every ``interval`` seconds.

    ``note`` is cheap and thread-safe. The first note starts a daemon thread that flushes
    while there is something to flush and sleeps otherwise; ``close`` writes what is left and
    stops it. A flush that fails keeps its contacts for the next one.
    """

    def __init__(self, db: Database, *, interval: float = 2.0) -> None:
        self.db = db
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def note(self, instance_name: str, when: float) -> None:
        """Contact with a host at ``when``; stored within ``interval`` seconds."""
        with self._lock:
            first = not self._pending
            if when > self._pending.get(instance_name, float("-inf")):
                self._pending[instance_name] = when
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="opendeploy-contacts", daemon=True
                )
                self._thread.start()
            elif first:
                self._wake.notify()

    def flush(self) -> int:
        """Write every contact noted so far in one transaction; how many there were."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            with self.db.write() as connection:
                record_contacts(connection, batch)
        except BaseException:
            with self._lock:
                for name, seen in batch.items():
                    if seen > self._pending.get(name, float("-inf")):
                        self._pending[name] = seen
            raise
        return len(batch)

    def close(self) -> None:
        """Stop flushing in the background and write what is left."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._wake.notify()
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
            # Let the contacts of one interval gather, then write them together.
            with self._lock:
                self._wake.wait_for(lambda: self._closed, timeout=self.interval)
                if self._closed:
                    return
            try:
                self.flush()
            except Exception:
                log.exception("could not store agent contacts; retrying in %.1f s", self.interval)
