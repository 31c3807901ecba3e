"""Deployment alarms (codedeploy-spec §8.6) without Prometheus: which configuration applies,
verdicts, reading Prometheus's rules API (a mock transport), the Alertmanager webhook (auth,
payload, stored states), and the monitor on a real server with simulated agents.

The real-Prometheus scenarios are in tests/e2e/test_alarms_prometheus.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import agentsim
import httpx
import pytest
from agentsim import Fleet, Group, SimAgent, Site

from opendeploy.core.deployments import Deployment, DeploymentStatus
from opendeploy.server.alarms import (
    AlarmConfig,
    Prometheus,
    PrometheusError,
    RuleState,
    alarm_config,
    authorize_push,
    judge,
    parse_webhook,
)
from opendeploy.store import alarms as alarm_store
from opendeploy.store.database import Database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
TOKEN = "s3cret-alertmanager-token"
STARTS = "2026-01-02T03:04:05.123456789Z"
ENDS = "2026-01-02T03:09:05Z"


# -- which configuration applies ---------------------------------------------------------------


def _deployment(**details: Any) -> Deployment:
    return Deployment(
        deployment_id="d-ABCDEFGHI",
        application_id="app",
        application_name="app",
        group_id="group",
        group_name="prod",
        config_name="CodeDeployDefault.OneAtATime",
        minimum_healthy_hosts={},
        revision={},
        status=DeploymentStatus.IN_PROGRESS,
        create_time=0.0,
        details={"creator": "user", **details},
    )


def _alarms(*names: str, enabled: bool = True, ignore: bool = False) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "ignorePollAlarmFailure": ignore,
        "alarms": [{"name": name} for name in names],
    }


def test_the_group_configuration_applies_when_enabled() -> None:
    spec = {"alarmConfiguration": _alarms("HighErrors", "SlowRequests", ignore=True)}
    assert alarm_config(_deployment(), spec) == AlarmConfig(("HighErrors", "SlowRequests"), True)
    assert alarm_config(_deployment(), {"alarmConfiguration": _alarms("X", enabled=False)}) is None
    assert alarm_config(_deployment(), {}) is None
    assert alarm_config(_deployment(), None) is None


def test_an_override_wins_even_when_it_disables_alarms() -> None:
    spec = {"alarmConfiguration": _alarms("HighErrors")}
    override = _deployment(overrideAlarmConfiguration=_alarms("Other"))
    assert alarm_config(override, spec) == AlarmConfig(("Other",), False)
    disabled = _deployment(overrideAlarmConfiguration=_alarms("HighErrors", enabled=False))
    assert alarm_config(disabled, spec) is None
    assert alarm_config(_deployment(overrideAlarmConfiguration=_alarms()), spec) is None


def test_rollback_deployments_are_not_watched() -> None:
    spec = {"alarmConfiguration": _alarms("HighErrors")}
    assert alarm_config(_deployment(creator="codeDeployRollback"), spec) is None


# -- verdicts ----------------------------------------------------------------------------------

NOTHING_PUSHED = alarm_store.PushedState(frozenset(), frozenset())
CONFIG = AlarmConfig(("HighErrors", "SlowRequests"), False)


def test_a_firing_alert_names_its_alarms_in_configuration_order() -> None:
    rules = {
        "HighErrors": RuleState(False),
        "SlowRequests": RuleState(True),
    }
    pushed = alarm_store.PushedState(frozenset({"HighErrors"}), frozenset({"HighErrors"}))
    verdict = judge(CONFIG, pushed, rules)
    assert verdict.firing == (
        ("HighErrors", "firing, pushed by Alertmanager"),
        ("SlowRequests", "firing in Prometheus"),
    )
    assert verdict.message == (
        "One or more alarms have been activated, and the deployment has been stopped. "
        "Activated alarms: HighErrors (firing, pushed by Alertmanager), "
        "SlowRequests (firing in Prometheus)."
    )


def test_firing_wins_over_an_unreadable_prometheus() -> None:
    pushed = alarm_store.PushedState(frozenset({"SlowRequests"}), frozenset({"SlowRequests"}))
    verdict = judge(CONFIG, pushed, None, "Prometheus at http://p could not be reached")
    assert [name for name, _ in verdict.firing] == ["SlowRequests"]


def test_quiet_alerts_give_no_verdict() -> None:
    rules = {"HighErrors": RuleState(False), "SlowRequests": RuleState(False)}
    verdict = judge(CONFIG, NOTHING_PUSHED, rules)
    assert verdict.firing == () and verdict.unreadable is None


def test_unreadable_states_say_why() -> None:
    down = judge(CONFIG, NOTHING_PUSHED, None, "Prometheus at http://p answered HTTP 503")
    assert down.unreadable == "Prometheus at http://p answered HTTP 503"
    assert down.message.startswith(
        "The deployment has been stopped because the state of its alarms could not be read: "
        "Prometheus at http://p answered HTTP 503."
    )
    assert "ignorePollAlarmFailure" in down.message

    unknown = judge(CONFIG, NOTHING_PUSHED, {"HighErrors": RuleState(False)})
    assert unknown.unreadable is not None
    assert "no alerting rule named 'SlowRequests'" in unknown.unreadable

    pushed_once = alarm_store.PushedState(frozenset({"SlowRequests"}), frozenset())
    assert judge(CONFIG, pushed_once, {"HighErrors": RuleState(False)}).unreadable is None

    broken = {
        "HighErrors": RuleState(False, "vector contains metrics with the same labelset"),
        "SlowRequests": RuleState(False),
    }
    verdict = judge(CONFIG, NOTHING_PUSHED, broken)
    assert verdict.unreadable is not None
    assert "'HighErrors' fails to evaluate" in verdict.unreadable


# -- reading Prometheus ------------------------------------------------------------------------


def _rules_body(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"groups": [{"name": "g", "rules": list(rules)}]}}


def _alerting(name: str, state: str = "inactive", **extra: Any) -> dict[str, Any]:
    return {"type": "alerting", "name": name, "state": state, "health": "ok", "alerts": [], **extra}


def test_prometheus_rules_are_read_by_alert_name() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = _rules_body(
            _alerting("HighErrors", "firing"),
            _alerting("HighErrors", "inactive"),
            _alerting("Pending", "pending"),
            _alerting("Old", "inactive", alerts=[{"state": "firing"}]),
            _alerting("Broken", health="err", lastError="bad query"),
            {"type": "recording", "name": "job:rate5m", "health": "ok"},
        )
        return httpx.Response(200, json=body)

    prometheus = Prometheus(
        "http://user:pw@prometheus.example:9090/prom/", transport=httpx.MockTransport(answer)
    )
    try:
        rules = prometheus.read()
    finally:
        prometheus.close()
    assert rules == {
        "HighErrors": RuleState(True),
        "Pending": RuleState(False),
        "Old": RuleState(True),
        "Broken": RuleState(False, "bad query"),
    }
    request = seen[0]
    assert request.url.path == "/prom/api/v1/rules"
    assert request.url.params["type"] == "alert"
    assert request.headers["authorization"].startswith("Basic ")
    assert prometheus.shown == "http://prometheus.example:9090/prom"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            lambda _: httpx.Response(503, text="overloaded"),
            "Prometheus at http://p:9090 answered HTTP 503",
        ),
        (
            lambda _: httpx.Response(
                422, json={"status": "error", "errorType": "bad_data", "error": "nope"}
            ),
            "Prometheus at http://p:9090 answered HTTP 422: nope",
        ),
        (
            lambda _: httpx.Response(200, json={"status": "error", "error": "nope"}),
            "Prometheus at http://p:9090 answered with an error: nope",
        ),
        (
            lambda _: httpx.Response(200, json={"status": "success", "data": {}}),
            "Prometheus at http://p:9090 answered /api/v1/rules in an unknown shape",
        ),
    ],
)
def test_prometheus_errors_are_reported(answer: Any, expected: str) -> None:
    prometheus = Prometheus("http://p:9090", transport=httpx.MockTransport(answer))
    with pytest.raises(PrometheusError) as caught:
        prometheus.read()
    assert str(caught.value) == expected


def test_a_prometheus_url_must_be_http() -> None:
    for url in ("prometheus:9090", "ftp://p", "http://"):
        with pytest.raises(ValueError, match="must be an http"):
            Prometheus(url)


def test_an_unreachable_prometheus_is_reported() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    prometheus = Prometheus("http://p:9090", transport=httpx.MockTransport(refuse))
    with pytest.raises(PrometheusError) as caught:
        prometheus.read()
    assert str(caught.value) == (
        "Prometheus at http://p:9090 could not be reached (ConnectError: Connection refused)"
    )


# -- the webhook: auth and payload -------------------------------------------------------------


def test_pushes_need_the_configured_bearer_token() -> None:
    refused = authorize_push("", f"Bearer {TOKEN}")
    assert refused is not None and refused.status == 403
    assert "no token configured" in refused.message
    for header in (None, "", "Bearer", "Bearer  ", f"Basic {TOKEN}", TOKEN):
        refused = authorize_push(TOKEN, header)
        assert refused is not None and refused.status == 401, header
    for header in ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        refused = authorize_push(TOKEN, header)
        assert refused is not None and refused.status == 403, header
    assert authorize_push(TOKEN, f"Bearer {TOKEN}") is None
    assert authorize_push(TOKEN, f"bearer {TOKEN}") is None


def webhook_payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) around ``alerts``."""
    firing = any(alert["status"] == "firing" for alert in alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrors"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "opendeploy",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def alert(
    name: str,
    status: str = "firing",
    *,
    fingerprint: str | None = None,
    starts: str = STARTS,
    ends: str = "0001-01-01T00:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    shaped: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": name, "severity": "page", **labels},
        "annotations": {"summary": f"{name} is {status}"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph",
    }
    if fingerprint is not None:
        shaped["fingerprint"] = fingerprint
    return shaped


def test_a_webhook_payload_gives_alert_states() -> None:
    payload = webhook_payload(
        alert("HighErrors", fingerprint="a1b2c3d4e5f60718"),
        alert("HighErrors", "resolved", ends=ENDS, instance="b"),
        alert("", fingerprint="ignored"),
        {"status": "firing", "labels": {"job": "no-alertname"}},
    )
    found = parse_webhook(payload, now=123.0)
    assert len(found) == 2
    firing, resolved = found
    assert (firing.fingerprint, firing.alert_name, firing.firing) == (
        "a1b2c3d4e5f60718",
        "HighErrors",
        True,
    )
    assert firing.changed_time == pytest.approx(1767323045.123456)
    assert resolved.firing is False
    assert resolved.changed_time == 1767323345.0
    assert len(resolved.fingerprint) == 64  # derived from the labels
    again = parse_webhook(webhook_payload(alert("HighErrors", "resolved", instance="b")), 5.0)
    assert again[0].fingerprint == resolved.fingerprint
    assert again[0].changed_time == 5.0  # no usable endsAt: the server's clock


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ([], "JSON object"),
        ({"version": "4"}, "no 'alerts' list"),
        ({"alerts": ["x"]}, "alerts[0] is not an object"),
        ({"alerts": [{"status": "weird", "labels": {}}]}, "alerts[0].status"),
        ({"alerts": [{"status": "firing", "labels": []}]}, "alerts[0].labels"),
    ],
)
def test_other_payloads_are_refused(payload: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_webhook(payload, 0.0)


# -- stored states -----------------------------------------------------------------------------


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


def _push(db: Database, *alerts: alarm_store.PushedAlert, now: float = 1000.0) -> int:
    with db.write() as connection:
        return alarm_store.record(connection, alerts, now)


def _states(db: Database, *names: str) -> alarm_store.PushedState:
    with db.read() as connection:
        return alarm_store.states(connection, names)


def test_older_notifications_never_overwrite_newer_states(database: Database) -> None:
    fp = "0123456789abcdef"
    assert _push(database, alarm_store.PushedAlert(fp, "HighErrors", True, 100.0)) == 1
    assert _states(database, "HighErrors", "Other") == alarm_store.PushedState(
        frozenset({"HighErrors"}), frozenset({"HighErrors"})
    )
    assert _push(database, alarm_store.PushedAlert(fp, "HighErrors", False, 200.0)) == 1
    # a retried delivery of the firing notification arrives late: still resolved
    assert _push(database, alarm_store.PushedAlert(fp, "HighErrors", True, 100.0)) == 0
    assert _states(database, "HighErrors").firing == frozenset()
    assert _states(database, "HighErrors").known == frozenset({"HighErrors"})
    # it fires again
    assert _push(database, alarm_store.PushedAlert(fp, "HighErrors", True, 300.0)) == 1
    # another alert (other labels) of the same name resolving leaves the name firing
    other = alarm_store.PushedAlert("fedcba9876543210", "HighErrors", False, 400.0)
    assert _push(database, other) == 1
    assert _states(database, "HighErrors").firing == frozenset({"HighErrors"})


def test_resolved_alerts_are_forgotten_after_a_while(database: Database) -> None:
    _push(database, alarm_store.PushedAlert("a", "Gone", False, 1.0), now=10.0)
    _push(database, alarm_store.PushedAlert("b", "Firing", True, 1.0), now=10.0)
    with database.write() as connection:
        assert alarm_store.prune_resolved(connection, received_before=11.0) == 1
    assert _states(database, "Gone", "Firing").known == frozenset({"Firing"})


# -- the monitor and the webhook on a real server ----------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def push_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A server with an Alertmanager token whose monitor polls only every 60 s: a deployment
    stopped within seconds was stopped by the push waking it."""
    with agentsim.open_site(
        request.param,
        tmp_path_factory.mktemp("alarms-push"),
        long_poll_seconds=1.0,
        alarm_poll_seconds=60.0,
        alertmanager_token=TOKEN,
    ) as site:
        yield site


@pytest.fixture(scope="module")
def poll_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server without Prometheus or Alertmanager token, polling alarms every 0.2 s."""
    with agentsim.open_site(
        "sqlite",
        tmp_path_factory.mktemp("alarms-poll"),
        long_poll_seconds=1.0,
        alarm_poll_seconds=0.2,
    ) as site:
        yield site


def push(site: Site, payload: Any, *, token: str | None = TOKEN, **options: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(
        f"{site.server.endpoint}/alertmanager/webhook",
        headers=headers,
        timeout=10,
        **({"json": payload} if "content" not in options else options),
    )


def _paused_deployment(
    fleet: Fleet, *, wait: bool = True, **group_params: Any
) -> tuple[Group, list[SimAgent], str]:
    """A OneAtATime deployment to two hosts whose first host holds at Install (``wait``:
    return once it does)."""
    group = fleet.group("CodeDeployDefault.OneAtATime", **group_params)
    agents = fleet.run_all(fleet.hosts(group, 2), pause_on={"Install"})
    deployment_id = group.deploy(agentsim.s3_revision(f"{group.application}/v1.tgz"))
    if wait:
        agentsim.wait_for(lambda: any(a.paused.is_set() for a in agents), what="a paused agent")
    return group, agents, deployment_id


def _stop_requested(site: Site, deployment_id: str) -> bool:
    """The stop took the second host's undelivered work back (it shows Skipped)."""
    info = site.codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    return bool(info["deploymentOverview"]["Skipped"] >= 1)


def _finish(site: Site, agents: list[SimAgent], deployment_id: str) -> dict[str, Any]:
    for agent in agents:
        agent.release()
    return agentsim.wait_for_deployment(site.codedeploy, deployment_id)


def test_the_webhook_refuses_requests_without_the_token(push_site: Site, poll_site: Site) -> None:
    payload = webhook_payload(alert("Whatever", "resolved", ends=ENDS))
    missing = push(push_site, payload, token=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token is required" in missing.json()["message"]
    wrong = push(push_site, payload, token="not-the-token")
    assert wrong.status_code == 403
    assert "not the one configured" in wrong.json()["message"]
    unconfigured = push(poll_site, payload)
    assert unconfigured.status_code == 403
    assert "no token configured" in unconfigured.json()["message"]

    not_json = push(push_site, None, content=b"{nope")
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("The body is not JSON")
    assert push(push_site, {"version": "4"}).status_code == 400

    accepted = push(push_site, payload)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"received": 1, "changed": 1, "firing": []}


def test_a_pushed_firing_alert_stops_the_deployment_at_once(push_site: Site) -> None:
    """No Prometheus here: ignorePollAlarmFailure lets the deployment run on pushes alone."""
    fleet = Fleet(push_site)
    name = f"PushedErrors{fleet.prefix}"
    try:
        _, agents, deployment_id = _paused_deployment(
            fleet, alarmConfiguration=_alarms(name, ignore=True)
        )
        answer = push(push_site, webhook_payload(alert(name, fingerprint=f"fp-{name}")))
        assert answer.json()["firing"] == [name]
        agentsim.wait_for(
            lambda: _stop_requested(push_site, deployment_id), timeout=5, what="the stop"
        )
        info = _finish(push_site, agents, deployment_id)
    finally:
        fleet.stop()
        resolved = alert(name, "resolved", fingerprint=f"fp-{name}", ends=ENDS)
        push(push_site, webhook_payload(resolved))
    assert info["status"] == "Stopped", info
    assert info["errorInformation"]["code"] == "ALARM_ACTIVE"
    assert (
        f"Activated alarms: {name} (firing, pushed by Alertmanager)."
        in (info["errorInformation"]["message"])
    )
    assert not fleet.errors(), fleet.errors()


def test_enabled_alarms_without_prometheus_stop_the_deployment(poll_site: Site) -> None:
    fleet = Fleet(poll_site)
    try:
        # the first poll may stop it before any host gets work
        _, agents, deployment_id = _paused_deployment(
            fleet, wait=False, alarmConfiguration=_alarms("HighErrors")
        )
        agentsim.wait_for(lambda: _stop_requested(poll_site, deployment_id), what="the stop")
        info = _finish(poll_site, agents, deployment_id)
    finally:
        fleet.stop()
    assert info["status"] == "Stopped", info
    assert info["errorInformation"] == {
        "code": "ALARM_ACTIVE",
        "message": "The deployment has been stopped because the state of its alarms could "
        "not be read: this server has no Prometheus configured to read alarms from "
        "(--prometheus-url / OPENDEPLOY_PROMETHEUS_URL). Set ignorePollAlarmFailure in the "
        "alarm configuration to let deployments continue when the alarm state cannot be read.",
    }


@pytest.mark.parametrize(
    ("group_alarms", "override"),
    [
        (_alarms("HighErrors", ignore=True), None),
        (_alarms("HighErrors", enabled=False), None),
        (_alarms("HighErrors"), _alarms("HighErrors", enabled=False)),
    ],
    ids=["ignorePollAlarmFailure", "disabled", "disabled-by-override"],
)
def test_alarms_that_cannot_be_read_or_are_disabled_let_the_deployment_succeed(
    poll_site: Site, group_alarms: dict[str, Any], override: dict[str, Any] | None
) -> None:
    fleet = Fleet(poll_site)
    try:
        group = fleet.group("CodeDeployDefault.AllAtOnce", alarmConfiguration=group_alarms)
        agents = fleet.run_all(fleet.hosts(group, 1), pause_on={"Install"})
        params = {} if override is None else {"overrideAlarmConfiguration": override}
        deployment_id = group.deploy(agentsim.s3_revision(), **params)
        agentsim.wait_for(lambda: agents[0].paused.is_set(), what="the paused agent")
        time.sleep(0.6)  # three alarm polls
        info = _finish(poll_site, agents, deployment_id)
    finally:
        fleet.stop()
    assert info["status"] == "Succeeded", info
    assert not fleet.errors(), fleet.errors()
