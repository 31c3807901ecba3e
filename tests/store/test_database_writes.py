"""SQLite writers queue in the process; a database that stays busy is a retryable 503."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

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


def test_many_writers_of_one_process_queue_instead_of_failing(tmp_path: Path) -> None:
    """Writers that each hold the lock a while: with SQLite's busy handler alone some of them
    would give up after the (here short) busy timeout; queued in the process, none does."""
    db = Database(f"sqlite:///{tmp_path / 'queue.db'}", write_wait=0.5)
    with db.write() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                with db.write() as connection:
                    n = connection.execute(text("SELECT n FROM counter")).scalar_one()
                    time.sleep(0.01)
                    connection.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with db.read() as connection:
            assert connection.execute(text("SELECT n FROM counter")).scalar_one() == 60
    finally:
        db.dispose()


def test_no_turn_to_write_in_time_is_a_throttling_error(sqlite_db: Database) -> None:
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with sqlite_db.write():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        with pytest.raises(DatabaseBusy) as caught, sqlite_db.write():
            pass
    finally:
        release.set()
        holder.join()
    assert isinstance(caught.value, ServiceError)
    assert caught.value.code == "ThrottlingException"
    assert caught.value.status == 503


def test_a_lock_held_by_another_process_is_a_throttling_error(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """Another process (here: another connection) holds SQLite's write lock past the busy
    timeout: "database is locked" becomes a 503 ThrottlingException, not a 500."""
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseBusy), sqlite_db.write() as connection:
            connection.execute(text("UPDATE counter SET n = n + 1"))
    finally:
        other.execute("ROLLBACK")
        other.close()
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
