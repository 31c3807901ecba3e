"""A database that stays busy is a retryable 503, and callbacks run after commit only."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from opendeploy.core.errors import ServiceError
from opendeploy.store.database import Database, DatabaseBusy, after_commit


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'busy.db'}", write_wait=0.3)
    with database.write() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield database
    database.dispose()


def test_a_lock_held_by_another_process_is_a_throttling_error(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """Another writer (here: another connection) holds SQLite's write lock past the busy
    timeout: "database is locked" becomes a 503 ThrottlingException, not a 500."""
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseBusy) as caught, sqlite_db.write() as connection:
            connection.execute(text("UPDATE counter SET n = n + 1"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert isinstance(caught.value, ServiceError)
    assert (caught.value.code, caught.value.status) == ("ThrottlingException", 503)
    with sqlite_db.write() as connection:
        connection.execute(text("UPDATE counter SET n = n + 1"))


def test_writers_of_one_process_take_turns_without_sqlites_busy_handler(
    tmp_path: Path,
) -> None:
    """Writers of this process wait for each other on the database's own lock: with SQLite's
    busy timeout set to zero (no busy handler at all), eight threads writing at once all
    get through, none sees "database is locked", and no increment is lost."""
    db = Database(f"sqlite:///{tmp_path / 'turns.db'}", write_wait=10)

    @event.listens_for(db.engine, "connect")
    def _no_busy_handler(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    with db.write() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))

    def write_many() -> None:
        for _ in range(25):
            with db.write() as connection:
                value = connection.execute(text("SELECT n FROM counter")).scalar_one()
                time.sleep(0.0005)
                connection.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})

    try:
        with ThreadPoolExecutor(8) as pool:
            for writer in [pool.submit(write_many) for _ in range(8)]:
                writer.result()
        with db.read() as connection:
            assert connection.execute(text("SELECT n FROM counter")).scalar_one() == 200
    finally:
        db.dispose()


def test_a_write_that_waits_too_long_for_this_processs_writers_is_throttled(
    sqlite_db: Database,
) -> None:
    """A writer of this process holding the database past ``write_wait`` makes another one
    a 503 ThrottlingException that says why, as SQLite's busy timeout did."""
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with sqlite_db.write():
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        too_long = r"other writes held the database for over 0.3 s"
        with pytest.raises(DatabaseBusy, match=too_long), sqlite_db.write() as connection:
            connection.execute(text("UPDATE counter SET n = n + 1"))
    finally:
        release.set()
        holder.join()
    with sqlite_db.write() as connection:
        connection.execute(text("UPDATE counter SET n = n + 1"))


def test_after_commit_runs_once_committed_and_never_after_a_rollback(
    database_url: str,
) -> None:
    db = Database(database_url)
    ran: list[str] = []
    try:
        with db.write() as connection:
            after_commit(connection, lambda: ran.append("committed"))
            assert ran == []
        assert ran == ["committed"]

        with pytest.raises(RuntimeError), db.write() as connection:
            after_commit(connection, lambda: ran.append("rolled back"))
            raise RuntimeError("boom")
        with db.write():
            pass
        assert ran == ["committed"]
    finally:
        db.dispose()


def _backend_pid(db: Database) -> int:
    with db.read() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_postgresql_replaces_a_pooled_connection_cut_while_idle(postgres_url: str) -> None:
    """The pool keeps connections open; one that PostgreSQL (a restart, an idle timeout)
    cut while it sat unused is found dead before use and replaced: the transaction that
    draws it still works."""
    db = Database(postgres_url, ping_after_idle=0.2)
    admin = Database(postgres_url)
    try:
        first = _backend_pid(db)
        assert _backend_pid(db) == first  # one pooled connection, reused
        with admin.write() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        time.sleep(0.3)
        replaced = _backend_pid(db)
        assert replaced != first
    finally:
        db.dispose()
        admin.dispose()


def test_postgresql_pings_only_connections_that_sat_idle(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a connection goes straight back to work: no extra round trip per
    transaction. One that sat unused past the limit is checked once before use."""
    db = Database(postgres_url, ping_after_idle=0.3)
    pings: list[object] = []
    ping = db.engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    try:
        for _ in range(5):
            _backend_pid(db)
        assert pings == []
        time.sleep(0.4)
        _backend_pid(db)
        assert len(pings) == 1
    finally:
        db.dispose()
