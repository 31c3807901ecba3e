"""Deployment alarms against a real Prometheus (Debian package ``prometheus``), codedeploy-spec
§8.6: a server with ``prometheus_url`` and a 0.2 s alarm poll, simulated agents
(tests/server/agentsim.py), and a Prometheus started here on loopback that scrapes a gauge
this module serves (``od_test_errors``) every second, with the alerting rule
``OdTestErrors: od_test_errors > 0`` (``for: 0s``) evaluated every second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

PROMETHEUS = "/usr/bin/prometheus"
ALERT = "OdTestErrors"
#: An alerting rule that never fires.
QUIET = "OdTestQuiet"
TOKEN = "e2e-alertmanager-token"
RULES = f"""\
groups:
  - name: opendeploy-e2e
    rules:
      - alert: {ALERT}
        expr: od_test_errors > 0
        for: 0s
      - alert: {QUIET}
        expr: od_test_errors > 1000
        for: 0s
"""


def _agentsim() -> ModuleType:
    """tests/server/agentsim.py (the protocol-level simulated agents), loaded by path."""
    module = sys.modules.get("agentsim")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "server" / "agentsim.py"
        spec = importlib.util.spec_from_file_location("agentsim", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["agentsim"] = module
        spec.loader.exec_module(module)
    return module


agentsim = _agentsim()


# -- the metric and the Prometheus -------------------------------------------------------------


class Gauge:
    """``od_test_errors`` on ``http://127.0.0.1:<port>/metrics``, set by the test."""

    def __init__(self) -> None:
        self.value = 0.0
        gauge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE od_test_errors gauge\nod_test_errors {gauge.value}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    """A Prometheus process on loopback scraping ``gauge`` every second."""

    def __init__(self, directory: Path, gauge: Gauge) -> None:
        if shutil.which(PROMETHEUS) is None:
            pytest.fail(f"{PROMETHEUS} is missing: install the Debian package prometheus")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rules.yml").write_text(RULES)
        (directory / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{directory / 'rules.yml'}]\n"
            "scrape_configs:\n"
            "  - job_name: opendeploy-e2e\n"
            f"    static_configs: [{{targets: ['{gauge.target}']}}]\n"
        )
        self.gauge = gauge
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            agentsim.wait_for(self._evaluated, timeout=20, interval=0.1, what="Prometheus")
        except BaseException:
            self.stop()
            raise

    def _rules(self) -> dict[str, dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/rules", params={"type": "alert"}, timeout=5)
        answer.raise_for_status()
        groups = answer.json()["data"]["groups"]
        return {rule["name"]: rule for group in groups for rule in group["rules"]}

    def _evaluated(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            rules = self._rules()
        except httpx.HTTPError:
            return False
        return all(rule.get("health") == "ok" for rule in rules.values()) and len(rules) == 2

    def state(self, alert: str = ALERT) -> str:
        return str(self._rules()[alert]["state"])

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """``od_test_errors`` at 1 (``OdTestErrors`` firing) inside the block."""
        self.gauge.value = 1.0
        try:
            agentsim.wait_for(lambda: self.state() == "firing", timeout=10, what=f"{ALERT}")
            yield
        finally:
            self.gauge.value = 0.0
            agentsim.wait_for(lambda: self.state() == "inactive", timeout=10, what="quiet")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def gauge() -> Iterator[Gauge]:
    served = Gauge()
    yield served
    served.close()


@pytest.fixture(scope="module")
def prometheus(gauge: Gauge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    running = Prometheus(tmp_path_factory.mktemp("prometheus"), gauge)
    yield running
    running.stop()


def _open_site(directory: Path, prometheus_url: str) -> Any:
    return agentsim.open_site(
        "sqlite",
        directory,
        long_poll_seconds=1.0,
        prometheus_url=prometheus_url,
        alarm_poll_seconds=0.2,
        alertmanager_token=TOKEN,
    )


@pytest.fixture(scope="module")
def site(prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _open_site(tmp_path_factory.mktemp("alarms-site"), prometheus.url) as opened:
        yield opened


@pytest.fixture
def fleet(site: Any) -> Iterator[Any]:
    running = agentsim.Fleet(site)
    yield running
    running.stop()
    assert not running.errors(), running.errors()


# -- helpers -----------------------------------------------------------------------------------


def _alarms(*names: str, enabled: bool = True, ignore: bool = False) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "ignorePollAlarmFailure": ignore,
        "alarms": [{"name": name} for name in names],
    }


class Held:
    """A OneAtATime deployment whose agents hold at Install until released. With two hosts
    (the default), a stop shows at once: the second host's work is taken back (Skipped)."""

    def __init__(
        self, fleet: Any, *, hosts: int = 2, wait: bool = True, **group_params: Any
    ) -> None:
        self.site = fleet.site
        self.group = fleet.group("CodeDeployDefault.OneAtATime", **group_params)
        self.agents = fleet.run_all(fleet.hosts(self.group, hosts), pause_on={"Install"})
        self.deployment_id = ""
        self.wait = wait

    def deploy(self, key: str = "v2", **params: Any) -> Held:
        revision = agentsim.s3_revision(f"{self.group.application}/{key}.tgz")
        self.deployment_id = self.group.deploy(revision, **params)
        if self.wait:
            agentsim.wait_for(
                lambda: any(agent.paused.is_set() for agent in self.agents), what="an agent"
            )
        return self

    def stop_requested(self) -> bool:
        """A stop took back the undelivered work of the second host (it shows Skipped)."""
        info = self.info()
        return bool(info["deploymentOverview"]["Skipped"] >= 1 or info["status"] == "Stopped")

    def wait_for_stop(self, timeout: float = 10.0) -> None:
        agentsim.wait_for(self.stop_requested, timeout=timeout, what=f"{self.deployment_id} stop")

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.site.codedeploy.get_deployment(deploymentId=self.deployment_id)[
            "deploymentInfo"
        ]
        return info

    def finish(self) -> dict[str, Any]:
        """Stop holding (now and in later deployments) and wait for the end."""
        for agent in self.agents:
            agent.pause_on = frozenset()
            agent.release()
        result: dict[str, Any] = agentsim.wait_for_deployment(
            self.site.codedeploy, self.deployment_id
        )
        return result


def _push(site: Any, status: str, name: str, fingerprint: str, token: str | None = TOKEN) -> Any:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alert = {
        "status": status,
        "labels": {"alertname": name, "job": "pushed"},
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }
    payload = {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "opendeploy",
        "groupLabels": {},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": [alert],
    }
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(
        f"{site.server.endpoint}/alertmanager/webhook", json=payload, headers=headers, timeout=10
    )


# -- the tests ---------------------------------------------------------------------------------


def test_a_firing_alert_stops_the_deployment_and_rolls_back(
    site: Any, fleet: Any, prometheus: Prometheus
) -> None:
    held = Held(
        fleet,
        alarmConfiguration=_alarms(QUIET, ALERT),
        autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_STOP_ON_ALARM"]},
    )
    for agent in held.agents:
        agent.pause_on = frozenset()
    good = held.group.deploy(agentsim.s3_revision(f"{held.group.application}/v1.tgz"))
    assert agentsim.wait_for_deployment(site.codedeploy, good)["status"] == "Succeeded"

    for agent in held.agents:
        agent.pause_on = frozenset({"Install"})
    held.deploy("v2")
    with prometheus.raised():
        held.wait_for_stop()
        info = held.finish()
        rollback_id = info["rollbackInfo"]["rollbackDeploymentId"]
        # still firing: the rollback is not stopped by the alarm that caused it
        rollback = agentsim.wait_for_deployment(site.codedeploy, rollback_id)

    assert info["status"] == "Stopped", info
    assert info["errorInformation"] == {
        "code": "ALARM_ACTIVE",
        "message": "One or more alarms have been activated, and the deployment has been "
        f"stopped. Activated alarms: {ALERT} (firing in Prometheus).",
    }
    assert info["rollbackInfo"]["rollbackMessage"] == (
        f"Deployment {held.deployment_id} terminated. Automatic rollback is triggered with a "
        f"DeploymentId {rollback_id}."
    )
    assert rollback["status"] == "Succeeded", rollback
    assert rollback["creator"] == "codeDeployRollback"
    assert rollback["revision"]["s3Location"]["key"].endswith("/v1.tgz")


def test_an_alarm_that_is_disabled_or_not_named_has_no_effect(
    fleet: Any, prometheus: Prometheus
) -> None:
    disabled = Held(fleet, hosts=1, alarmConfiguration=_alarms(ALERT, enabled=False))
    overridden = Held(fleet, hosts=1, alarmConfiguration=_alarms(ALERT))
    other = Held(fleet, hosts=1, alarmConfiguration=_alarms(QUIET))
    with prometheus.raised():
        disabled.deploy()
        overridden.deploy(overrideAlarmConfiguration=_alarms(ALERT, enabled=False))
        other.deploy()
        time.sleep(1.0)  # five polls
        results = [held.finish() for held in (disabled, overridden, other)]
    assert [info["status"] for info in results] == ["Succeeded"] * 3, results


def test_an_unknown_alarm_name_fails_closed(fleet: Any) -> None:
    typo = Held(fleet, wait=False, alarmConfiguration=_alarms("OdTestEror")).deploy()
    typo.wait_for_stop()
    info = typo.finish()
    assert info["status"] == "Stopped", info
    assert info["errorInformation"]["code"] == "ALARM_ACTIVE"
    assert "no alerting rule named 'OdTestEror'" in info["errorInformation"]["message"]


def test_prometheus_stopped_fails_closed_unless_poll_failures_are_ignored(
    gauge: Gauge, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A Prometheus and a server of this test's own: the Prometheus process is stopped while
    two deployments run."""
    own = Prometheus(tmp_path_factory.mktemp("prometheus-stopped"), gauge)
    try:
        with _open_site(tmp_path_factory.mktemp("alarms-stopped"), own.url) as site:
            fleet = agentsim.Fleet(site)
            strict = Held(fleet, alarmConfiguration=_alarms(ALERT)).deploy()
            lenient = Held(fleet, hosts=1, alarmConfiguration=_alarms(ALERT, ignore=True))
            lenient.deploy()
            time.sleep(0.6)  # polls that read the quiet alert
            assert not strict.stop_requested()
            own.stop()
            strict.wait_for_stop()
            time.sleep(0.6)  # polls that fail for the lenient deployment too
            stopped, succeeded = strict.finish(), lenient.finish()
            fleet.stop()
            assert not fleet.errors(), fleet.errors()
    finally:
        own.stop()
    assert stopped["status"] == "Stopped", stopped
    message = stopped["errorInformation"]["message"]
    assert stopped["errorInformation"]["code"] == "ALARM_ACTIVE"
    assert message.startswith(
        "The deployment has been stopped because the state of its alarms could not be read: "
        f"Prometheus at {own.url} could not be reached (ConnectError"
    ), message
    assert succeeded["status"] == "Succeeded", succeeded


def test_an_alertmanager_push_stops_the_deployment(site: Any, fleet: Any) -> None:
    fingerprint = uuid.uuid4().hex[:16]
    assert _push(site, "firing", ALERT, fingerprint, token=None).status_code == 401
    assert _push(site, "firing", ALERT, fingerprint, token="wrong").status_code == 403

    held = Held(fleet, alarmConfiguration=_alarms(ALERT)).deploy()
    try:
        answer = _push(site, "firing", ALERT, fingerprint)
        assert answer.status_code == 200, answer.text
        held.wait_for_stop(timeout=5)
    finally:
        assert _push(site, "resolved", ALERT, fingerprint).status_code == 200
    info = held.finish()
    assert info["status"] == "Stopped", info
    assert info["errorInformation"]["message"].endswith(
        f"Activated alarms: {ALERT} (firing, pushed by Alertmanager)."
    )

    # resolved: the next deployment runs to its end
    again = Held(fleet, hosts=1, alarmConfiguration=_alarms(ALERT)).deploy()
    time.sleep(0.6)
    assert again.finish()["status"] == "Succeeded"
