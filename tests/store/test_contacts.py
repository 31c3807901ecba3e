"""Agent contacts: written in batches, forward only, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from opendeploy.store import contacts
from opendeploy.store.contacts import ContactBook
from opendeploy.store.database import Database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


def _names(count: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8]
    return [f"host-{prefix}-{index}" for index in range(count)]


def _stored(db: Database, names: list[str]) -> dict[str, float]:
    with db.read() as connection:
        return contacts.last_contacts(connection, names)


def test_contacts_are_inserted_then_only_move_forward(db: Database) -> None:
    first, second, third = _names(3)
    with db.write() as connection:
        contacts.record_contacts(connection, {first: 10.0, second: 20.0})
    with db.write() as connection:
        # A later contact wins, an earlier one (another replica's late flush) changes nothing.
        contacts.record_contacts(connection, {first: 15.0, second: 5.0, third: 1.0})
        contacts.record_contact(connection, third, 0.5)

    assert _stored(db, [first, second, third]) == {first: 15.0, second: 20.0, third: 1.0}


def test_last_contacts_reads_more_names_than_one_in_list_holds(db: Database) -> None:
    names = _names(1200)
    with db.write() as connection:
        contacts.record_contacts(connection, {name: 7.0 for name in names})

    assert _stored(db, names) == {name: 7.0 for name in names}


def test_agents_heard_since_counts_recent_contacts(db: Database) -> None:
    recent, old = _names(2)
    future = time.time() + 10_000
    with db.write() as connection:
        before = contacts.agents_heard_since(connection, future)
        contacts.record_contacts(connection, {recent: future + 5, old: future - 5})
    with db.read() as connection:
        assert contacts.agents_heard_since(connection, future) == before + 1


def test_a_book_writes_its_notes_within_its_interval(db: Database) -> None:
    """What the reconciler reads (``last_contacts``) shows a noted contact shortly after."""
    book = ContactBook(db, interval=0.05)
    name, other = _names(2)
    try:
        book.note(name, 100.0)
        book.note(name, 90.0)  # out of order: the later contact is kept
        book.note(other, 50.0)
        deadline = time.monotonic() + 10
        while len(_stored(db, [name, other])) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _stored(db, [name, other]) == {name: 100.0, other: 50.0}
        assert book.pending == 0
    finally:
        book.close()


def test_closing_a_book_writes_what_is_left(db: Database) -> None:
    book = ContactBook(db, interval=3600.0)
    [name] = _names(1)
    book.note(name, 42.0)
    assert _stored(db, [name]) == {}

    book.close()

    assert _stored(db, [name]) == {name: 42.0}


def test_a_failed_flush_keeps_its_contacts_for_the_next(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = ContactBook(db, interval=3600.0)
    [name] = _names(1)
    book.note(name, 42.0)

    def broken(*_: object) -> None:
        raise RuntimeError("database down")

    with monkeypatch.context() as patch:
        patch.setattr(contacts, "record_contacts", broken)
        with pytest.raises(RuntimeError):
            book.flush()
    book.note(name, 41.0)
    assert book.pending == 1

    assert book.flush() == 1
    assert _stored(db, [name]) == {name: 42.0}
    book.close()
