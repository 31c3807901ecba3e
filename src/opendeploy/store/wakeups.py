"""Telling every server replica that hosts have new commands: PostgreSQL LISTEN/NOTIFY.

A replica that creates commands wakes its own long polls directly and publishes the host
names on the ``opendeploy_commands`` channel; every replica listens and wakes its held polls
for those hosts. On SQLite (one server) there is nothing to publish.

The same connection listens to ``store.identities.CHANNEL`` too: another replica deleted a key
or changed a user's policies, so this process's caches of identities forget that user. While
the connection is down notifications are lost, so caches forget everything whenever it
(re)connects.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from opendeploy.store import identities
from opendeploy.store.database import Database

__all__ = ["CHANNEL", "CommandChannel"]

CHANNEL = "opendeploy_commands"
#: NOTIFY payloads are limited to 8000 bytes; larger sets of hosts go in several messages.
_PAYLOAD_LIMIT = 7000

log = logging.getLogger(__name__)


def _libpq_dsn(url: str) -> str:
    """A psycopg connection string from a SQLAlchemy URL."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class CommandChannel:
    """Publishes and receives "these hosts have work" across replicas."""

    def __init__(
        self,
        db: Database,
        on_hosts: Callable[[list[str]], None],
        on_listening: Callable[[bool], None] | None = None,
    ) -> None:
        self.db = db
        self.on_hosts = on_hosts
        #: Told when the LISTEN connection comes up (True) or fails (False).
        self.on_listening = on_listening
        self.enabled = not db.is_sqlite
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, instance_names: Iterable[str]) -> None:
        if not self.enabled:
            return
        names = sorted(set(instance_names))
        batches: list[list[str]] = [[]]
        for name in names:
            if len(json.dumps(batches[-1] + [name])) > _PAYLOAD_LIMIT:
                batches.append([])
            batches[-1].append(name)
        try:
            with self.db.engine.begin() as connection:
                for batch in batches:
                    connection.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": json.dumps(batch)},
                    )
        except Exception:
            log.exception("could not publish new commands to other replicas")

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._listen, name="opendeploy-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        dsn = _libpq_dsn(self.db.url)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    connection.execute(f"LISTEN {identities.CHANNEL}")
                    identities.changes.everything_changed()
                    self._tell_listening(True)
                    while not self._stop.is_set():
                        for note in connection.notifies(timeout=1.0):
                            if note.channel == identities.CHANNEL:
                                identities.changes.user_changed(note.payload)
                            else:
                                self._deliver(note.payload)
            except Exception:
                identities.changes.everything_changed()
                self._tell_listening(False)
                if self._stop.wait(1.0):
                    return
                log.exception("the LISTEN connection failed; reconnecting")

    def _tell_listening(self, up: bool) -> None:
        if self.on_listening is not None:
            try:
                self.on_listening(up)
            except Exception:
                log.exception("could not tell that LISTEN is %s", "up" if up else "down")

    def _deliver(self, payload: str) -> None:
        try:
            names = json.loads(payload)
        except ValueError:
            return
        if isinstance(names, list):
            self.on_hosts([str(name) for name in names])
