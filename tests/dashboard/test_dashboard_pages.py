"""The dashboard's pages over HTTP, with a deployment that no agent ever picks up (so it stays
active), made through the service functions; and the filters and formatting behind them."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_support import Key, UiServer, csrf_token

from opendeploy.server.dashboard import formatting
from opendeploy.server.dashboard.views import HistoryFilters, parse_utc_minute
from opendeploy.server.service import applications, deployments, groups, instances
from opendeploy.store import identities

STATIC = Path(__file__).resolve().parents[2] / "src/opendeploy/server/dashboard"
FRAGMENT = {"X-Requested-With": "opendeploy-dashboard"}
REVISION = {
    "revisionType": "S3",
    "s3Location": {"bucket": "releases", "key": "shop/v1.zip", "bundleType": "zip"},
}


@pytest.fixture(scope="module")
def shop(ui: UiServer) -> dict[str, Any]:
    """Application ``shop``, group ``web`` (tag role=web) selecting host-a but not host-b,
    and one deployment to it that stays active: no agent ever polls."""
    ctx = ui.context
    applications.create_application(ctx, {"applicationName": "shop"})
    groups.create_deployment_group(
        ctx,
        {
            "applicationName": "shop",
            "deploymentGroupName": "web",
            "serviceRoleArn": "arn:aws:iam::000000000000:role/od",
            "deploymentConfigName": "CodeDeployDefault.OneAtATime",
            "onPremisesInstanceTagFilters": [
                {"Key": "role", "Value": "web", "Type": "KEY_AND_VALUE"}
            ],
        },
    )
    for name, role in (("host-a", "web"), ("host-b", "db")):
        instances.register_on_premises_instance(
            ctx,
            {"instanceName": name, "iamUserArn": f"arn:aws:iam::000000000000:user/{name}"},
        )
        instances.add_tags_to_on_premises_instances(
            ctx, {"instanceNames": [name], "tags": [{"Key": "role", "Value": role}]}
        )
    created = deployments.create_deployment(
        ctx,
        {
            "applicationName": "shop",
            "deploymentGroupName": "web",
            "revision": REVISION,
            "description": "first <release> & co",
        },
    )
    return {"deployment_id": created["deploymentId"]}


@pytest.fixture
def session(ui: UiServer) -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def open_session(key: Key) -> httpx.Client:
        clients.append(ui.client())
        return ui.sign_in(key, clients[-1])

    yield open_session
    for client in clients:
        client.close()


def _status(ui: UiServer, deployment_id: str) -> str:
    info = deployments.get_deployment(ui.context, {"deploymentId": deployment_id})
    return str(info["deploymentInfo"]["status"])


def test_applications_and_groups_show_targets_config_and_recent_deployments(
    ui: UiServer, shop: dict[str, Any], session: Any
) -> None:
    client = session(ui.reader)
    home = client.get("/ui")
    assert home.status_code == 200
    assert 'data-application="shop"' in home.text
    assert shop["deployment_id"] in home.text  # latest deployments
    page = client.get("/ui/applications/shop")
    assert page.status_code == 200
    card = page.text[page.text.index('data-group="web"') :]
    assert "CodeDeployDefault.OneAtATime" in card
    assert "role = web" in card
    assert 'data-instance="host-a"' in card
    assert 'data-instance="host-b"' not in card
    assert shop["deployment_id"] in card
    missing = client.get("/ui/applications/nope")
    assert missing.status_code == 404
    assert "No application found for name: nope" in missing.text


def test_a_deployment_page_shows_the_grid_and_only_deployers_get_stop(
    ui: UiServer, shop: dict[str, Any], session: Any
) -> None:
    deployment_id = shop["deployment_id"]
    reader = session(ui.reader)
    page = reader.get(f"/ui/deployments/{deployment_id}")
    assert page.status_code == 200
    assert 'data-active="true"' in page.text
    assert 'data-target="host-a"' in page.text
    assert "host-b" not in page.text
    cells = re.findall(r'data-event="(\w+)" data-status="(\w+)"', page.text)
    assert ("BeforeInstall", "Pending") in cells
    assert "first &lt;release&gt; &amp; co" in page.text  # escaped, never markup
    assert "stop-button" not in page.text
    deployer = session(ui.deployer)
    assert 'id="stop-button"' in deployer.get(f"/ui/deployments/{deployment_id}").text

    live = reader.get(f"/ui/deployments/{deployment_id}/live", headers=FRAGMENT)
    assert live.status_code == 200
    assert live.text.lstrip().startswith('<div class="live-root"')
    assert "<html" not in live.text

    event = reader.get(
        f"/ui/deployments/{deployment_id}/event",
        params={"target": "host-a", "event": "AfterInstall"},
        headers=FRAGMENT,
    )
    assert event.status_code == 200
    assert "has not started yet" in event.text
    full = reader.get(
        f"/ui/deployments/{deployment_id}/event",
        params={"target": "host-a", "event": "AfterInstall"},
    )
    assert "<html" in full.text and "AfterInstall" in full.text
    raw = reader.get(
        f"/ui/deployments/{deployment_id}/log.txt",
        params={"target": "host-a", "event": "AfterInstall"},
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["x-content-type-options"] == "nosniff"
    unknown = reader.get(
        f"/ui/deployments/{deployment_id}/event",
        params={"target": "host-z", "event": "AfterInstall"},
        headers=FRAGMENT,
    )
    assert unknown.status_code == 404
    assert reader.get("/ui/deployments/d-NOTHERE1").status_code == 404
    assert reader.get("/ui/deployments/not-an-id").status_code == 404


def test_stop_through_the_dashboard_stops_and_is_audited(
    ui: UiServer, shop: dict[str, Any], session: Any
) -> None:
    deployment_id = shop["deployment_id"]
    deployer = session(ui.deployer)
    token = csrf_token(deployer.get(f"/ui/deployments/{deployment_id}").text)
    response = deployer.post(f"/ui/deployments/{deployment_id}/stop", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/ui/deployments/{deployment_id}?notice=")
    until = time.monotonic() + 10
    while _status(ui, deployment_id) != "Stopped":
        assert time.monotonic() < until, _status(ui, deployment_id)
        time.sleep(0.05)
    page = deployer.get(response.headers["location"])
    assert 'data-status="Stopped"' in page.text
    assert 'role="status"' in page.text  # the notice
    assert "stop-button" not in page.text
    # No earlier success in the group: nothing to roll back to, and the action says why.
    assert "rollback-button" not in page.text
    refused = deployer.post(f"/ui/deployments/{deployment_id}/rollback", data={"csrf_token": token})
    assert refused.status_code == 400
    assert "no successful deployment before" in refused.text
    again = deployer.post(f"/ui/deployments/{deployment_id}/stop", data={"csrf_token": token})
    assert again.status_code == 409
    with ui.context.db.read() as connection:
        audit = [
            (row.operation, row.outcome)
            for row in identities.audit_entries(connection, limit=500)
            if row.principal.endswith(":user/dana-deployer")
        ]
    assert ("StopDeployment", "Success") in audit
    assert ("StopDeployment", "DeploymentAlreadyCompletedException") in audit
    assert ("CreateDeployment", "InvalidOperationException") in audit


def test_history_filters_by_status_group_and_time(
    ui: UiServer, shop: dict[str, Any], session: Any
) -> None:
    deployment_id = shop["deployment_id"]
    client = session(ui.reader)

    def listed(**params: Any) -> bool:
        page = client.get("/ui/deployments", params=params)
        assert page.status_code == 200, page.text
        return f'data-deployment="{deployment_id}"' in page.text

    status = _status(ui, deployment_id)
    assert listed()
    assert listed(status=status)
    assert not listed(status="Succeeded")
    assert listed(status=["Succeeded", status])
    assert listed(group="shop/web")
    assert "shop / web" in client.get("/ui/deployments").text  # the group choices
    assert not listed(start="2999-01-01T00:00")
    assert listed(start="2000-01-01T00:00", end="2999-12-31")
    bad = client.get("/ui/deployments", params={"start": "yesterday"})
    assert "YYYY-MM-DD HH:MM" in bad.text
    unknown_group = client.get("/ui/deployments", params={"group": "shop/nope"})
    assert unknown_group.status_code == 404


def test_every_asset_is_served_by_the_server_itself(ui: UiServer) -> None:
    with ui.client() as client:
        for path, kind in (
            ("/ui/static/dashboard.css", "text/css"),
            ("/ui/static/dashboard.js", "javascript"),
            ("/ui/static/favicon.svg", "image/svg+xml"),
        ):
            response = client.get(path)
            assert response.status_code == 200, path
            assert kind in response.headers["content-type"]
        sign_in = client.get("/ui/signin").text
    for reference in re.findall(r'(?:src|href)="([^"]+)"', sign_in):
        assert reference.startswith("/ui/"), reference
    for path in [*STATIC.glob("templates/*.html"), *STATIC.glob("static/*")]:
        text = path.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), path


def test_history_filters_make_service_parameters() -> None:
    filters = HistoryFilters(
        statuses=("Failed",), group="shop/web", start="2026-01-02T03:04", end="2026-01-02"
    )
    params = filters.params()
    assert params["includeOnlyStatuses"] == ["Failed"]
    assert (params["applicationName"], params["deploymentGroupName"]) == ("shop", "web")
    assert params["createTimeRange"]["start"] == 1767323040.0
    assert params["createTimeRange"]["end"] == pytest.approx(1767398400.0 - 0.001)
    assert ("next", "T") in filters.query(next_token="T")
    assert HistoryFilters().params() == {}
    assert parse_utc_minute("") is None
    with pytest.raises(ValueError):
        parse_utc_minute("tomorrow")


def test_formatting() -> None:
    assert formatting.duration(10.0, 10.84) == "0.8 s"
    assert formatting.duration(0.0, 125.0) == "2 min 5 s"
    assert formatting.duration(0.0, None, 7200.0) == "2 h"
    assert formatting.duration(None, 5.0) == ""
    assert formatting.ago(100.0, 100.0 + 3 * 3600) == "3 h ago"
    assert formatting.utc(0) == "1970-01-01 00:00:00 UTC"
    assert formatting.spaced("ApplicationStop") == "Application Stop"
    assert formatting.status_class("InProgress") == "st-inprogress"
    assert formatting.revision_label(REVISION) == "s3://releases/shop/v1.zip"
    pushed = {"revisionType": "S3", "s3Location": {"key": "bundles/" + "ab" * 32 + ".tgz"}}
    assert formatting.short_sha(pushed) == "ab" * 6
    in_progress = {"status": "InProgress", "startTime": 10.0}
    assert formatting.event_duration(in_progress, 12.5) == "2.5 s"
    assert formatting.event_duration({"status": "Pending"}, 12.5) == ""
