"""Deployment alarms backed by Prometheus (codedeploy-spec §8.6), and Alertmanager pushes.

An alarm name is a Prometheus alert name (the ``alert:`` of an alerting rule); the alarm is in
alarm while that alert is firing. ``AlarmMonitor`` runs in a thread beside the reconciler.
Every ``interval`` seconds, and at once when woken by an Alertmanager push, it looks at each
active deployment's alarms — ``overrideAlarmConfiguration`` when the deployment was created
with one, else its group's ``alarmConfiguration`` as it is now — when that configuration is
enabled, and stops the deployment (engine event ``AlarmActive``: status Stopped, error code
``ALARM_ACTIVE``, rollback when ``DEPLOYMENT_STOP_ON_ALARM`` is configured):

* when any of its alarms is firing, in Prometheus (``GET /api/v1/rules?type=alert``, one
  request per pass for all deployments) or as pushed by Alertmanager (stored in the database,
  so every replica sees it); the message names the alarms;
* when the alarm state cannot be read (fail closed): Prometheus unreachable or answering an
  error, no ``--prometheus-url`` configured, an alarm name that is neither an alerting rule in
  Prometheus nor an alert Alertmanager ever pushed (a typo would otherwise never fire), or its
  rule failing to evaluate. With ``ignorePollAlarmFailure`` the monitor logs this instead and
  the deployment continues (firing alarms still stop it).

Pushed alerts are checked before Prometheus is asked, so a push stops a deployment even while
Prometheus is slow or down. Rollback deployments (creator ``codeDeployRollback``) are not
monitored: the alarm that stopped the bad revision usually still fires while the good one goes
back, and stopping the rollback half-way would leave the fleet on two revisions.

Nothing here knows the web framework: ``alertmanager_api`` adapts ``authorize_push``,
``parse_webhook`` and ``record_push`` to HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from opendeploy.core.deployments import Deployment
from opendeploy.core.engine import ROLLBACK_CREATOR, AlarmActive
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.engine_runner import feed
from opendeploy.store import alarms as alarm_store
from opendeploy.store import deployments as store
from opendeploy.store import groups as group_store

__all__ = [
    "AlarmConfig",
    "AlarmMonitor",
    "Prometheus",
    "PrometheusError",
    "PushRefused",
    "RuleState",
    "Verdict",
    "alarm_config",
    "authorize_push",
    "judge",
    "parse_webhook",
    "record_push",
]

log = logging.getLogger(__name__)

#: How long a resolved pushed alert is remembered (it still counts as a known alert name).
RESOLVED_RETENTION_SECONDS = 7 * 24 * 3600
_FAILURE_ADVICE = (
    "Set ignorePollAlarmFailure in the alarm configuration to let deployments continue when "
    "the alarm state cannot be read."
)


# -- which alarms a deployment watches ---------------------------------------------------------


@dataclass(frozen=True)
class AlarmConfig:
    """The enabled alarm configuration that applies to one deployment."""

    names: tuple[str, ...]
    ignore_poll_failure: bool


def alarm_config(
    deployment: Deployment, group_spec: Mapping[str, Any] | None
) -> AlarmConfig | None:
    """The alarms to watch for ``deployment``; None when none are (disabled, no alarms, or a
    rollback deployment). ``overrideAlarmConfiguration`` wins over the group's, even disabled."""
    if deployment.details.get("creator") == ROLLBACK_CREATOR:
        return None
    config = deployment.details.get("overrideAlarmConfiguration")
    if config is None:
        config = (group_spec or {}).get("alarmConfiguration")
    if not isinstance(config, Mapping) or not config.get("enabled"):
        return None
    names = tuple(
        dict.fromkeys(
            entry["name"]
            for entry in config.get("alarms") or []
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]
        )
    )
    if not names:
        return None
    return AlarmConfig(names, bool(config.get("ignorePollAlarmFailure")))


# -- Prometheus --------------------------------------------------------------------------------


class PrometheusError(Exception):
    """Prometheus could not be asked, or did not answer usefully; the text says which."""


@dataclass(frozen=True)
class RuleState:
    """The alerting rules of one alert name, taken together."""

    firing: bool
    #: The evaluation error of a rule of this name that does not evaluate, if any.
    error: str | None = None


class Prometheus:
    """Reads alert states from a Prometheus HTTP API (or one that speaks it: Thanos, Mimir).

    ``url`` is the server's base URL (``http://prometheus:9090``, or with a path prefix);
    credentials in it are sent as HTTP basic auth and never shown in messages.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"The Prometheus URL must be an http(s) URL, not {url!r}.")
        self.rules_url = parsed.join(parsed.path.rstrip("/") + "/api/v1/rules")
        self.shown = str(parsed.copy_with(username=None, password=None)).rstrip("/")
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            transport=transport or httpx.HTTPTransport(retries=1),
            follow_redirects=True,
        )

    def read(self) -> dict[str, RuleState]:
        """Every alerting rule's state by alert name; PrometheusError when it cannot be read."""
        try:
            response = self._client.get(self.rules_url, params={"type": "alert"})
        except httpx.HTTPError as error:
            raise PrometheusError(
                f"Prometheus at {self.shown} could not be reached ({type(error).__name__}: "
                f"{error or 'no detail'})"
            ) from error
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(
                f"Prometheus at {self.shown} answered HTTP {response.status_code}"
                + (f": {detail}" if detail else "")
            )
        if body.get("status") != "success":
            detail = " ".join(str(body[k]) for k in ("errorType", "error") if body.get(k))
            raise PrometheusError(
                f"Prometheus at {self.shown} answered with an error: {detail or 'no detail'}"
            )
        try:
            return _rule_states(body["data"]["groups"])
        except (KeyError, TypeError, AttributeError) as error:
            raise PrometheusError(
                f"Prometheus at {self.shown} answered /api/v1/rules in an unknown shape"
            ) from error

    def close(self) -> None:
        self._client.close()


def _rule_states(groups: Iterable[Mapping[str, Any]]) -> dict[str, RuleState]:
    firing: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for group in groups:
        for rule in group["rules"]:
            if rule.get("type") != "alerting":
                continue
            name = rule["name"]
            alerts = rule.get("alerts") or []
            on = rule.get("state") == "firing" or any(a.get("state") == "firing" for a in alerts)
            firing[name] = firing.get(name, False) or on
            if rule.get("health") == "err":
                errors.setdefault(name, str(rule.get("lastError") or "evaluation failed"))
    return {name: RuleState(on, errors.get(name)) for name, on in firing.items()}


# -- the verdict for one deployment ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the alarms of one deployment say.

    firing: (alarm name, where it fires) pairs, in the configuration's order.
    unreadable: why the alarm state could not be read, when it could not and nothing fires.
    """

    firing: tuple[tuple[str, str], ...] = ()
    unreadable: str | None = None

    @property
    def message(self) -> str:
        if self.firing:
            alarms = ", ".join(f"{name} ({source})" for name, source in self.firing)
            return (
                "One or more alarms have been activated, and the deployment has been stopped. "
                f"Activated alarms: {alarms}."
            )
        return (
            "The deployment has been stopped because the state of its alarms could not be "
            f"read: {self.unreadable}. {_FAILURE_ADVICE}"
        )


def judge(
    config: AlarmConfig,
    pushed: alarm_store.PushedState,
    rules: Mapping[str, RuleState] | None = None,
    prometheus_error: str | None = None,
) -> Verdict:
    """The verdict on ``config``'s alarms given the pushed state and Prometheus's rules
    (``rules`` None: Prometheus was not asked, ``prometheus_error`` says why)."""
    firing: list[tuple[str, str]] = []
    for name in config.names:
        rule = (rules or {}).get(name)
        if rule is not None and rule.firing:
            firing.append((name, "firing in Prometheus"))
        elif name in pushed.firing:
            firing.append((name, "firing, pushed by Alertmanager"))
    if firing:
        return Verdict(firing=tuple(firing))
    if rules is None:
        return Verdict(unreadable=prometheus_error or "Prometheus was not asked")
    for name in config.names:
        rule = rules.get(name)
        if rule is None and name not in pushed.known:
            return Verdict(
                unreadable=f"Prometheus has no alerting rule named {name!r} and Alertmanager "
                "never pushed an alert of that name"
            )
        if rule is not None and rule.error is not None:
            return Verdict(
                unreadable=f"the alerting rule {name!r} fails to evaluate in Prometheus: "
                f"{rule.error}"
            )
    return Verdict()


# -- the monitor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Watched:
    deployment_id: str
    config: AlarmConfig


class AlarmMonitor:
    """Polls the alarms of active deployments in a thread; ``wake`` makes it look now."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        prometheus_url: str = "",
        interval: float = 5.0,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.ctx = ctx
        self.interval = interval
        self.prometheus = (
            Prometheus(prometheus_url, timeout=timeout, transport=transport)
            if prometheus_url
            else None
        )
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: deployment id -> the read failure last logged for it (ignorePollAlarmFailure).
        self._ignored: dict[str, str] = {}

    def step(self) -> list[str]:
        """One pass; the ids of the deployments it stopped."""
        watched, pushed = self._watched()
        stopped: list[str] = []
        remaining: list[_Watched] = []
        # Pushed alerts first: they need no network and must stop at once.
        for item in watched:
            if any(name in pushed.firing for name in item.config.names):
                self._stop(item, judge(item.config, pushed))
                stopped.append(item.deployment_id)
            else:
                remaining.append(item)
        if not remaining:
            return stopped
        rules: dict[str, RuleState] | None = None
        error: str | None = None
        if self.prometheus is None:
            error = (
                "this server has no Prometheus configured to read alarms from "
                "(--prometheus-url / OPENDEPLOY_PROMETHEUS_URL)"
            )
        else:
            try:
                rules = self.prometheus.read()
            except PrometheusError as failure:
                error = str(failure)
        for item in remaining:
            verdict = judge(item.config, pushed, rules, error)
            if verdict.firing:
                self._stop(item, verdict)
                stopped.append(item.deployment_id)
            elif verdict.unreadable is None:
                self._ignored.pop(item.deployment_id, None)
            elif item.config.ignore_poll_failure:
                if self._ignored.get(item.deployment_id) != verdict.unreadable:
                    log.warning(
                        "deployment %s: alarm state could not be read (%s); continuing as "
                        "ignorePollAlarmFailure is set",
                        item.deployment_id,
                        verdict.unreadable,
                    )
                self._ignored[item.deployment_id] = verdict.unreadable
            else:
                self._stop(item, verdict)
                stopped.append(item.deployment_id)
        return stopped

    def _watched(self) -> tuple[list[_Watched], alarm_store.PushedState]:
        """The active deployments with alarms to watch, and the pushed state of those alarms."""
        watched: list[_Watched] = []
        specs: dict[str, Mapping[str, Any] | None] = {}
        with self.ctx.db.read() as connection:
            active = store.ids(connection, active_only=True)
            for deployment_id in active:
                deployment = store.by_id(connection, deployment_id)
                if deployment is None or not deployment.active or deployment.stop_requested:
                    continue
                if deployment.group_id not in specs:
                    group = group_store.by_id(connection, deployment.group_id)
                    specs[deployment.group_id] = None if group is None else group.spec
                config = alarm_config(deployment, specs[deployment.group_id])
                if config is not None:
                    watched.append(_Watched(deployment_id, config))
            names = {name for item in watched for name in item.config.names}
            pushed = alarm_store.states(connection, names)
        for gone in set(self._ignored) - set(active):
            del self._ignored[gone]
        return watched, pushed

    def _stop(self, item: _Watched, verdict: Verdict) -> None:
        message = verdict.message
        log.warning("deployment %s: %s", item.deployment_id, message)
        feed(self.ctx, item.deployment_id, AlarmActive(message))
        self._ignored.pop(item.deployment_id, None)

    def wake(self) -> None:
        """Look at the alarms now (an Alertmanager push arrived)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="opendeploy-alarms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.prometheus is not None:
            self.prometheus.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            if self._stopping:
                return
            self._wake.clear()
            try:
                self.step()
            except Exception:
                log.exception("alarm monitor pass failed; retrying in %.0f s", self.interval)


# -- Alertmanager pushes -----------------------------------------------------------------------


@dataclass(frozen=True)
class PushRefused:
    """Why a webhook request is refused: HTTP status and message."""

    status: int
    message: str


def authorize_push(configured_token: str, authorization: str | None) -> PushRefused | None:
    """None when ``authorization`` (the Authorization header) carries the configured bearer
    token. The comparison takes the same time wherever the tokens differ."""
    if not configured_token:
        return PushRefused(
            403,
            "The Alertmanager webhook is disabled: this server has no token configured "
            "(--alertmanager-token / OPENDEPLOY_ALERTMANAGER_TOKEN).",
        )
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return PushRefused(401, "A bearer token is required (Authorization: Bearer <token>).")
    expected = hashlib.sha256(configured_token.encode()).digest()
    given = hashlib.sha256(presented.strip().encode()).digest()
    if not hmac.compare_digest(expected, given):
        return PushRefused(403, "The bearer token is not the one configured on this server.")
    return None


def _epoch(value: Any, default: float) -> float:
    """An RFC 3339 time as epoch seconds; ``default`` when absent, unparseable or zero
    (Alertmanager sends ``0001-01-01T00:00:00Z`` for "not set")."""
    if not isinstance(value, str) or not value:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return default
    if parsed.tzinfo is None or parsed.year < 1970:
        return default
    return parsed.timestamp()


def _fingerprint(alert: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    given = alert.get("fingerprint")
    if isinstance(given, str) and 0 < len(given) <= 64:
        return given
    canonical = "\x00".join(f"{k}\x01{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_webhook(payload: Any, now: float) -> list[alarm_store.PushedAlert]:
    """The alerts of an Alertmanager webhook notification (payload version 4).

    Alerts without an ``alertname`` label (or one too long to be an alarm name) are skipped;
    a payload of another shape raises ValueError saying what is wrong.
    """
    if not isinstance(payload, Mapping):
        raise ValueError("The body must be a JSON object (Alertmanager's webhook payload).")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("The payload has no 'alerts' list.")
    found: list[alarm_store.PushedAlert] = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, Mapping):
            raise ValueError(f"alerts[{index}] is not an object.")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise ValueError(f"alerts[{index}].status must be 'firing' or 'resolved'.")
        labels = alert.get("labels")
        if not isinstance(labels, Mapping):
            raise ValueError(f"alerts[{index}].labels is not an object.")
        name = labels.get("alertname")
        if not isinstance(name, str) or not name or len(name) > 255:
            continue
        firing = status == "firing"
        changed = _epoch(alert.get("startsAt") if firing else alert.get("endsAt"), now)
        found.append(alarm_store.PushedAlert(_fingerprint(alert, labels), name, firing, changed))
    return found


def record_push(ctx: ServiceContext, alerts: Sequence[alarm_store.PushedAlert]) -> int:
    """Store pushed alert states (shared by all replicas); the number that changed."""
    now = ctx.clock()
    with ctx.db.write() as connection:
        changed = alarm_store.record(connection, alerts, now)
        alarm_store.prune_resolved(connection, received_before=now - RESOLVED_RETENTION_SECONDS)
    return changed
