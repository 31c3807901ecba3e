"""Fixtures of the end-to-end tests: one real server and real agents per test module.

A module asks for ``e2e`` (three hosts by default; a module sets ``E2E_HOSTS`` for more). A
module that needs its agents configured differently overrides ``e2e`` and calls
``Environment.start`` with a ``configure`` callback. When a test fails, the tail of the server's
log and of every agent's log is attached to its report.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import Environment


@pytest.fixture(scope="module")
def e2e(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:
    hosts = getattr(request.module, "E2E_HOSTS", 3)
    environment = Environment.start(tmp_path_factory.mktemp("e2e"), hosts=hosts)
    yield environment
    environment.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Environment):
            report.sections.append(("e2e server and agent logs", value.logs()))
