"""Fixtures of the engine-state store tests (snapshots, polls)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opendeploy.store.database import Database


@pytest.fixture
def db(request: pytest.FixtureRequest, database_url: str) -> Iterator[Database]:
    """A database of this test's own: on the shared PostgreSQL, other test servers'
    reconcilers would judge these tests' hosts silent (their clocks are made up)."""
    if not database_url.startswith("sqlite"):
        database_url = request.getfixturevalue("fresh_postgres")
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()
