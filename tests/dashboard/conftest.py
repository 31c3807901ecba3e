"""Fixtures of the dashboard tests: an in-process server on loopback with users of each role.

The browser tests (``test_dashboard_browser.py``) start their own real server process and
real agents instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dashboard_support import UiServer, start_ui_server


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    server = start_ui_server(tmp_path_factory.mktemp("ui-server"))
    yield server
    server.stop()
