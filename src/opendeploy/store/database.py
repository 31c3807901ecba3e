"""Engine set-up per dialect and transactions.

This is the only module that names SQLite or PostgreSQL. SQLite runs in WAL mode with a busy
timeout and takes its write lock at BEGIN (``BEGIN IMMEDIATE``); transactions must therefore
be opened with :meth:`Database.read` and :meth:`Database.write`. PostgreSQL uses ordinary
transactions.

A transaction that cannot get the database in time (SQLite's busy timeout, or a free
connection of the pool) raises :class:`DatabaseBusy`, a retryable ``ThrottlingException``
(HTTP 503) rather than an internal failure: the SDKs and our agent retry it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from opendeploy.core.errors import ServiceError

__all__ = [
    "Database",
    "DatabaseBusy",
    "after_commit",
    "alembic_config",
    "make_sqlite_url",
    "notify_on_commit",
]

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Seconds a writer waits for SQLite's write lock.
WRITE_WAIT_SECONDS = 30.0
_AFTER_COMMIT = "opendeploy_after_commit"
_IDLE_SINCE = "opendeploy_idle_since"
#: A pooled PostgreSQL connection unused for longer than this is checked before use.
PING_AFTER_IDLE_SECONDS = 10.0
#: SQLite's words for a lock it could not get in time.
_LOCKED = ("database is locked", "database table is locked")

log = logging.getLogger(__name__)


class DatabaseBusy(ServiceError):
    """The database could not take this request's work in time; retry later."""

    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(
            "ThrottlingException",
            f"The server is busy ({detail}); retry the request with backoff.",
        )


class Database:
    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        write_wait: float = WRITE_WAIT_SECONDS,
        ping_after_idle: float = PING_AFTER_IDLE_SECONDS,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.write_wait = write_wait
        #: SQLite writers of this process take turns here, not in SQLite's busy handler.
        self._sqlite_writer = threading.Lock() if self.is_sqlite else None
        options: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            options["connect_args"] = {"check_same_thread": False, "timeout": write_wait}
            # Every thread that may touch the database at once (the request thread pool's
            # 40, the polls' looks, background work) gets a connection without waiting.
            options["pool_size"] = 20
            options["max_overflow"] = 60
            if ":memory:" in url or url.rstrip("/") == "sqlite:":
                raise ValueError("OpenDeploy needs a file-backed SQLite database, not :memory:")
        else:
            # Kept open: under load more threads than a small pool hold connections at once,
            # and each overflow connection opened and closed again cost a PostgreSQL backend
            # start (seen as the top cost of a 2,000-host deployment).
            options["pool_size"] = 30
            options["max_overflow"] = 10
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            _configure_sqlite(self.engine, write_wait)
        else:
            _ping_after_idle(self.engine, ping_after_idle)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with _busy_as_throttling(), self.engine.connect() as connection, connection.begin():
            self._begin(connection, immediate=False)
            yield connection

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; callbacks given to :func:`after_commit` run once it commits."""
        callbacks: list[Callable[[], None]] = []
        with self._writer_turn(), _busy_as_throttling(), self.engine.connect() as connection:
            connection.info.pop(_AFTER_COMMIT, None)
            try:
                with connection.begin():
                    self._begin(connection, immediate=True)
                    yield connection
                callbacks = connection.info.pop(_AFTER_COMMIT, [])
            finally:
                connection.info.pop(_AFTER_COMMIT, None)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a callback after a commit failed")

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, wait for this process's other writers on a lock of our own.

        SQLite's busy handler polls for a held write lock with sleeps of 1, 2, 5, 10 ms and
        more: a writer that found the lock taken, say a completion arriving beside the same
        agent's log upload, slept milliseconds for a transaction that took a tenth of one.
        A lock hands the turn over the moment the writer before commits. The busy timeout
        still covers writers in other processes (a second server by mistake, a maintenance
        script).
        """
        lock = self._sqlite_writer
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=self.write_wait):
            raise DatabaseBusy(f"other writes held the database for over {self.write_wait:g} s")
        try:
            yield
        finally:
            lock.release()

    def _begin(self, connection: Connection, *, immediate: bool) -> None:
        """Open SQLite's transaction (the driver runs in autocommit mode, and SQLAlchemy's
        ``begin`` sends nothing): ``BEGIN IMMEDIATE`` takes the write lock at once, so a
        writer never fails upgrading a read lock. Sent on the driver connection: a
        SQLAlchemy ``begin`` event would put event dispatch on every statement of the
        process, and through SQLAlchemy BEGIN costs as much as a query."""
        if self.is_sqlite:
            driver = connection.connection.driver_connection
            assert driver is not None
            driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def upgrade(self) -> None:
        """Run the Alembic migrations up to head, in one transaction."""
        with self.engine.begin() as connection:
            self._begin(connection, immediate=True)
            config = alembic_config(self.url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(connection: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the :meth:`Database.write` transaction of ``connection`` has
    committed (never if it rolls back). Outside such a transaction it never runs: callers
    that must not miss it also act at once."""
    connection.info.setdefault(_AFTER_COMMIT, []).append(callback)


def notify_on_commit(connection: Connection, channel: str, payload: str) -> None:
    """Tell every PostgreSQL listener of ``channel``, when this transaction commits (NOTIFY is
    transactional). Nothing on SQLite, where one server process has the database."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


@contextlib.contextmanager
def _busy_as_throttling() -> Iterator[None]:
    try:
        yield
    except (OperationalError, sqlite3.OperationalError) as error:
        # SQLAlchemy wraps the driver's error; our own BEGIN on the driver does not.
        message = str(error.orig if isinstance(error, OperationalError) else error)
        if any(words in message for words in _LOCKED):
            raise DatabaseBusy("the database is locked") from error
        raise
    except PoolTimeout as error:
        raise DatabaseBusy("no database connection free") from error


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _configure_sqlite(engine: Engine, busy_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit mode: transactions are opened by Database._begin, as we choose.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.close()


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use only when it sat unused for ``idle_seconds``.

    SQLAlchemy's ``pool_pre_ping`` checks on every checkout: a round trip to PostgreSQL per
    transaction, 5 % of the server's CPU during a large deployment. Connections that are in
    constant use are not the ones a restarted database or a network idle timeout has cut;
    a connection found dead is replaced at once (``DisconnectionError`` makes the pool
    reconnect), and one cut while in use fails its transaction as with ``pool_pre_ping``.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            log.info("a pooled database connection was dead (%s); reconnecting", error)
            raise DisconnectionError(str(error)) from error


def make_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'opendeploy.db').resolve()}"
