"""/metrics, /healthz, /readyz, and JSON log lines that carry the deployment id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from agentsim import Fleet, Site, open_site, s3_revision, wait_for_deployment

from opendeploy.logs import JsonFormatter, configure_logging, deployment_context


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with open_site("sqlite", tmp_path_factory.mktemp("metrics"), long_poll_seconds=1.0) as opened:
        yield opened


def metric_lines(site: Site) -> list[str]:
    response = httpx.get(site.server.endpoint + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [line for line in response.text.splitlines() if not line.startswith("#")]


def value(lines: list[str], prefix: str) -> float:
    matches = [line for line in lines if line.startswith(prefix + " ")]
    assert matches, f"no sample {prefix} in /metrics"
    return float(matches[0].rsplit(" ", 1)[1])


def test_metrics_follow_a_deployment(site: Site) -> None:
    fleet = Fleet(site)
    try:
        group = fleet.group("CodeDeployDefault.AllAtOnce")
        hosts = fleet.hosts(group, 2)
        before = metric_lines(site)
        succeeded_before = value(before, 'opendeploy_deployments{status="Succeeded"}')
        fleet.run_all(hosts)
        deployment_id = group.deploy(s3_revision())
        info = wait_for_deployment(site.codedeploy, deployment_id)
        assert info["status"] == "Succeeded"
        after = metric_lines(site)
    finally:
        fleet.stop()
    assert value(after, 'opendeploy_deployments{status="Succeeded"}') == succeeded_before + 1
    assert value(after, "opendeploy_connected_agents") >= 2
    assert value(after, 'opendeploy_api_request_seconds_count{operation="CreateDeployment"}') >= 1
    assert value(after, 'opendeploy_api_request_seconds_count{operation="PollHostCommand"}') >= 2
    install = 'opendeploy_lifecycle_event_seconds_count{event="Install",status="Succeeded"}'
    assert value(after, install) >= 2
    assert any(line.startswith("opendeploy_waiting_long_polls ") for line in after)


def test_health_and_readiness(site: Site) -> None:
    assert httpx.get(site.server.endpoint + "/healthz").json() == {"status": "ok"}
    assert httpx.get(site.server.endpoint + "/readyz").json() == {"status": "ready"}


def test_json_log_lines_carry_the_deployment_id() -> None:
    stream = io.StringIO()
    configure_logging("info", json_lines=True)
    root = logging.getLogger()
    handler = root.handlers[0]
    assert isinstance(handler.formatter, JsonFormatter)
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        with deployment_context("d-LOGGED123"):
            logging.getLogger("opendeploy.test").info("host %s failed", "web-1")
        logging.getLogger("opendeploy.test").warning("no deployment here")
    finally:
        root.handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["deployment_id"] == "d-LOGGED123"
    assert first["message"] == "host web-1 failed" and first["level"] == "INFO"
    assert "deployment_id" not in second
