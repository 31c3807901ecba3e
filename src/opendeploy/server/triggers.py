"""Trigger delivery: the notification outbox to webhooks and SNS topics (codedeploy-spec §8.7).

The engine writes trigger events into the ``notifications`` outbox in the transaction that
caused them; this worker delivers them, apart from deployments, on threads of its own:

1. Fan-out (one short write transaction a pass): each new outbox row is matched against its
   group's ``triggerConfigurations`` (the event is in ``triggerEvents``); for each match a
   delivery is stored with its message, built once in the shape of CodeDeploy's SNS message,
   so every attempt sends the same bytes.
2. Claims (one short write transaction a pass): due deliveries are leased to this worker
   (``store.triggers.claim_due``: a conditional UPDATE only one replica can win; on PostgreSQL
   candidates come from FOR UPDATE SKIP LOCKED), at most as many as it has idle senders.
3. Sending, on ``concurrency`` sender threads with no transaction open: an ``http(s)`` target
   gets a POST of the JSON message with ``X-OpenDeploy-Signature: sha256=<hex HMAC-SHA256 of
   the body under the trigger's secret>``, ``X-OpenDeploy-Event`` and ``X-OpenDeploy-Delivery``;
   an SNS topic ARN is published to through boto3 (region from the ARN, endpoint from
   ``--sns-endpoint-url``, credentials from the server's environment). 2xx is delivered; 408,
   429, 5xx and network errors are retried with exponential backoff up to ``max_attempts``;
   any other answer fails the delivery for good. The outcome is written to the delivery row.

Nothing here runs inside a deployment's transaction or holds a lock while it talks to the
network, so a slow or unreachable target delays only its own deliveries. A delivery whose
server died mid-attempt is taken up by any replica once its lease (twice the timeout plus 30 s)
has run out: delivery is at least once, never twice at the same time.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from opendeploy.core.deployments import Deployment, InstanceTarget
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.triggers_messages import (
    INSTANCE_EVENTS,
    SIGNATURE_HEADER,
    deployment_message,
    encode,
    installation_key,
    instance_message,
    matching_triggers,
    sign,
    subject,
    trigger_secret,
)
from opendeploy.settings import ServerSettings
from opendeploy.store import deployments as deployment_store
from opendeploy.store import groups as group_store
from opendeploy.store import instances as instance_store
from opendeploy.store import triggers as store
from opendeploy.store.triggers import Delivery, NewDelivery, OutboxEntry

__all__ = ["Outcome", "TriggerOptions", "TriggerWorker", "is_sns_target"]

log = logging.getLogger(__name__)

USER_AGENT = "OpenDeploy-Triggers/1"
#: How far back a pass looks for outbox rows once it has caught up: longer than any
#: transaction that writes them, plus clock differences between replicas.
_HORIZON_GRACE = 300.0
_EXCERPT_BYTES = 512
_SNS_RETRYABLE = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "KMSThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
    }
)


@dataclass(frozen=True)
class TriggerOptions:
    """How triggers are delivered.

    sns_endpoint_url: the SNS endpoint topics are published to (empty: AWS's own).
    timeout: seconds one attempt may take to connect, send or wait for an answer.
    max_attempts: attempts per delivery before it fails for good.
    retry_base: seconds before the first retry; each later one waits twice as long, at most
        ``retry_cap`` (defaults: 8 attempts spread over about 10 minutes).
    interval: seconds between passes over the outbox and the due deliveries.
    concurrency: deliveries in flight at once (sender threads).
    max_age: outbox rows older than this when first seen are not delivered (a server that
        was down for a day does not replay yesterday's events).
    """

    sns_endpoint_url: str = ""
    timeout: float = 10.0
    max_attempts: int = 8
    retry_base: float = 5.0
    retry_cap: float = 300.0
    interval: float = 1.0
    concurrency: int = 4
    max_age: float = 24 * 3600.0
    batch: int = 100

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> TriggerOptions:
        return cls(
            sns_endpoint_url=settings.sns_endpoint_url,
            timeout=settings.trigger_timeout,
            max_attempts=settings.trigger_max_attempts,
            retry_base=settings.trigger_retry_seconds,
            concurrency=settings.trigger_concurrency,
        )

    @property
    def lease_seconds(self) -> float:
        return 2 * self.timeout + 30.0

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
        return float(min(self.retry_cap, self.retry_base * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. ``retry``: worth trying again (when not delivered)."""

    delivered: bool
    retry: bool = False
    http_status: int | None = None
    error: str | None = None


def is_sns_target(target: str) -> bool:
    parts = target.split(":", 5)
    return len(parts) == 6 and parts[0] == "arn" and parts[2] == "sns"


class TriggerWorker:
    """Delivers trigger events; ``start``/``stop`` run it on threads of its own."""

    def __init__(
        self,
        ctx: ServiceContext,
        options: TriggerOptions | None = None,
        *,
        http: httpx.Client | None = None,
    ) -> None:
        self.ctx = ctx
        self.options = options or TriggerOptions()
        self._own_http = http is None
        self._http = http
        self._lock = threading.Lock()
        self._session: Any = None
        self._sns: dict[str, Any] = {}
        self._key: bytes | None = None
        self._horizon: float | None = None
        self._busy = 0
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._senders: list[threading.Thread] = []

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._http_client()
        self._senders = [
            threading.Thread(target=self._send_loop, name=f"opendeploy-trigger-{i}", daemon=True)
            for i in range(max(1, self.options.concurrency))
        ]
        for sender in self._senders:
            sender.start()
        self._thread = threading.Thread(target=self._run, name="opendeploy-triggers", daemon=True)
        self._thread.start()

    def stop(self, *, grace: float = 2.0) -> None:
        """Stop claiming; wait up to ``grace`` seconds for attempts in flight. An attempt still
        running then is abandoned unrecorded: its lease runs out and it is made again."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for _ in self._senders:
            self._queue.put(None)
        deadline = time.monotonic() + grace
        for sender in self._senders:
            sender.join(timeout=max(0.0, deadline - time.monotonic()))
        self._closed.set()
        with self._lock:
            http, self._http = self._http, (None if self._own_http else self._http)
        if self._own_http and http is not None:
            http.close()
        with self._lock:
            clients, self._sns = list(self._sns.values()), {}
        for client in clients:
            client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the pass: a sender finishing during it makes the next one start
            # at once, to hand its slot the next due delivery.
            self._wake.clear()
            try:
                self.step(self.ctx.clock())
            except Exception:
                log.exception(
                    "trigger delivery pass failed; retrying in %.1f s", self.options.interval
                )
            self._wake.wait(self.options.interval)

    def step(self, now: float) -> int:
        """One pass: fan out new outbox rows, hand due deliveries to idle senders."""
        made = self.fan_out(now)
        with self._lock:
            idle = max(1, self.options.concurrency) - self._busy
        if idle <= 0:
            return made
        claimed = self.claim(now, idle)
        with self._lock:
            self._busy += len(claimed)
        for delivery in claimed:
            self._queue.put(delivery)
        return made + len(claimed)

    def run_pending(self, now: float) -> int:
        """Fan out and make every due attempt in this thread (tools and tests); how many."""
        self.fan_out(now)
        made = 0
        while claimed := self.claim(now, self.options.batch):
            for delivery in claimed:
                self.record(delivery, self.deliver(delivery), now)
            made += len(claimed)
        return made

    def _send_loop(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            try:
                outcome = self.deliver(delivery)
                if not self._closed.is_set():
                    self.record(delivery, outcome, self.ctx.clock())
            except Exception:
                log.exception("recording trigger delivery %s failed", delivery.delivery_id)
            finally:
                with self._lock:
                    self._busy -= 1
                self._wake.set()

    # -- fan-out -------------------------------------------------------------------------------

    def fan_out(self, now: float) -> int:
        """Match new outbox rows against their groups' triggers; deliveries made."""
        since = now - self.options.max_age
        if self._horizon is not None:
            since = max(since, self._horizon)
        with self.ctx.db.read() as connection:
            pending = store.has_unfanned(connection, since=since)
        if not pending:
            self._horizon = now - _HORIZON_GRACE
            return 0
        try:
            with self.ctx.db.write() as connection:
                entries = store.unfanned(connection, since=since, limit=self.options.batch)
                deliveries = self._deliveries_for(connection, entries)
                store.add_deliveries(connection, deliveries, now)
                store.mark_fanned_out(connection, [e.notification_id for e in entries], now)
        except IntegrityError:
            # Another replica fanned out some of the same rows as this pass read them: its
            # deliveries stand, this pass is rolled back whole and the next one skips them.
            log.info("trigger fan-out raced another server; retrying")
            return 0
        if len(entries) < self.options.batch:
            self._horizon = now - _HORIZON_GRACE
        else:
            self._wake.set()
        if deliveries:
            log.info("%d trigger deliveries for %d events", len(deliveries), len(entries))
        return len(deliveries)

    def _deliveries_for(
        self, connection: Connection, entries: Sequence[OutboxEntry]
    ) -> list[NewDelivery]:
        groups: dict[str, Any] = {}
        loaded: dict[str, tuple[Deployment, list[InstanceTarget]] | None] = {}
        arns: dict[str, str] = {}
        made: list[NewDelivery] = []
        for entry in entries:
            if entry.group_id not in groups:
                groups[entry.group_id] = group_store.by_id(connection, entry.group_id)
            group = groups[entry.group_id]
            triggers = matching_triggers(group.spec, entry.event) if group is not None else []
            if not triggers:
                continue
            if entry.deployment_id not in loaded:
                deployment = deployment_store.by_id(connection, entry.deployment_id)
                loaded[entry.deployment_id] = (
                    None
                    if deployment is None
                    else (deployment, deployment_store.targets_of(connection, entry.deployment_id))
                )
            found = loaded[entry.deployment_id]
            if found is None:
                continue
            deployment, targets = found
            for trigger in triggers:
                made += self._delivery(connection, entry, trigger, deployment, targets, arns)
        return made

    def _delivery(
        self,
        connection: Connection,
        entry: OutboxEntry,
        trigger: Any,
        deployment: Deployment,
        targets: Sequence[InstanceTarget],
        arns: dict[str, str],
    ) -> list[NewDelivery]:
        name, target_arn = str(trigger["triggerName"]), str(trigger["triggerTargetArn"])
        if entry.event in INSTANCE_EVENTS or entry.instance_name is not None:
            target = next((t for t in targets if t.instance_name == entry.instance_name), None)
            if target is None:
                return []
            if target.instance_name not in arns:
                instance = instance_store.by_name(connection, target.instance_name)
                arns[target.instance_name] = (
                    instance.instance_arn if instance is not None else target.instance_name
                )
            message = instance_message(
                region=self.ctx.region,
                account_id=self.ctx.account_id,
                trigger_name=name,
                event=entry.event,
                target=target,
                instance_arn=arns[target.instance_name],
                at=entry.created_time,
            )
            status = message["instanceStatus"]
        else:
            message = deployment_message(
                region=self.ctx.region,
                account_id=self.ctx.account_id,
                trigger_name=name,
                event=entry.event,
                deployment=deployment,
                targets=targets,
                at=entry.created_time,
            )
            status = message["status"]
        return [
            NewDelivery(
                delivery_id=str(uuid.uuid4()),
                notification_id=entry.notification_id,
                deployment_id=entry.deployment_id,
                group_id=entry.group_id,
                trigger_name=name,
                target=target_arn,
                event=entry.event,
                instance_name=entry.instance_name,
                subject=subject(
                    status,
                    deployment.deployment_id,
                    self.ctx.region,
                    deployment.application_name,
                    entry.instance_name,
                ),
                body=encode(message),
            )
        ]

    # -- claims and outcomes -------------------------------------------------------------------

    def claim(self, now: float, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries to this worker."""
        with self.ctx.db.read() as connection:
            due = store.has_due(connection, now=now, max_attempts=self.options.max_attempts)
        if not due:
            return []
        with self.ctx.db.write() as connection:
            return store.claim_due(
                connection,
                now=now,
                limit=limit,
                lease_seconds=self.options.lease_seconds,
                max_attempts=self.options.max_attempts,
                token=str(uuid.uuid4()),
            )

    def record(self, delivery: Delivery, outcome: Outcome, now: float) -> str:
        """Write the outcome of the attempt made under ``delivery``'s claim; the new status."""
        next_attempt: float | None = None
        if outcome.delivered:
            status = store.DELIVERED
        elif outcome.retry and delivery.attempts < self.options.max_attempts:
            status = store.PENDING
            delay = self.options.retry_delay(delivery.attempts)
            next_attempt = now + delay + random.uniform(0, delay / 10)
        else:
            status = store.FAILED
        error = outcome.error
        if status == store.FAILED and outcome.retry:
            error = f"{error} (gave up after {delivery.attempts} attempts)"
        with self.ctx.db.write() as connection:
            mine = store.finish(
                connection,
                delivery,
                status=status,
                now=now,
                http_status=outcome.http_status,
                error=error,
                next_attempt_time=next_attempt,
            )
        if not mine:
            log.warning("trigger delivery %s: lease lost before recording", delivery.delivery_id)
        elif status != store.DELIVERED:
            log.info(
                "trigger %s (%s) of %s: attempt %d %s: %s",
                delivery.trigger_name,
                delivery.event,
                delivery.deployment_id,
                delivery.attempts,
                "will be retried" if status == store.PENDING else "failed for good",
                error,
            )
        return status

    # -- sending -------------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> Outcome:
        """Make one attempt; never raises."""
        try:
            if is_sns_target(delivery.target):
                return self._publish(delivery)
            if not delivery.target.startswith(("https://", "http://")):
                return Outcome(
                    False, error="The target is neither an SNS topic ARN nor an http(s) URL."
                )
            return self._post(delivery)
        except Exception as error:
            log.exception("trigger delivery %s failed unexpectedly", delivery.delivery_id)
            return Outcome(False, retry=True, error=f"{type(error).__name__}: {error}")

    def secret_for(self, group_id: str, trigger_name: str) -> str:
        with self._lock:
            key = self._key
        if key is None:
            with self.ctx.db.write() as connection:
                key = installation_key(connection, self.ctx.secrets)
            with self._lock:
                self._key = key
        return trigger_secret(key, group_id, trigger_name)

    def _post(self, delivery: Delivery) -> Outcome:
        body = delivery.body.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-OpenDeploy-Event": delivery.event,
            "X-OpenDeploy-Delivery": delivery.delivery_id,
            SIGNATURE_HEADER: sign(self.secret_for(delivery.group_id, delivery.trigger_name), body),
        }
        try:
            http = self._http_client()
            with http.stream("POST", delivery.target, content=body, headers=headers) as answer:
                status, reason = answer.status_code, answer.reason_phrase
                excerpt = _excerpt(answer) if not 200 <= status < 300 else ""
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            return Outcome(False, error=f"The target URL cannot be used: {error}")
        except httpx.TimeoutException as error:
            return Outcome(
                False,
                retry=True,
                error=f"No answer within {self.options.timeout:g} s ({type(error).__name__}).",
            )
        except httpx.HTTPError as error:
            return Outcome(False, retry=True, error=f"{type(error).__name__}: {error}")
        if 200 <= status < 300:
            return Outcome(True, http_status=status)
        retry = status in (408, 429) or status >= 500
        error_text = f"HTTP {status} {reason}".rstrip()
        if 300 <= status < 400:
            error_text += " (redirects are not followed)"
        if excerpt:
            error_text += f": {excerpt}"
        return Outcome(False, retry=retry, http_status=status, error=error_text)

    def _http_client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self.options.timeout),
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
            return self._http

    def _client(self, region: str) -> Any:
        with self._lock:
            client = self._sns.get(region)
            if client is None:
                import boto3  # type: ignore[import-untyped]
                from botocore.config import Config  # type: ignore[import-untyped]

                if self._session is None:
                    self._session = boto3.session.Session()
                client = self._session.client(
                    "sns",
                    region_name=region,
                    endpoint_url=self.options.sns_endpoint_url or None,
                    config=Config(
                        connect_timeout=self.options.timeout,
                        read_timeout=self.options.timeout,
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        user_agent_extra=USER_AGENT,
                    ),
                )
                self._sns[region] = client
            return client

    def _publish(self, delivery: Delivery) -> Outcome:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        region = delivery.target.split(":")[3]
        try:
            answer = self._client(region).publish(
                TopicArn=delivery.target, Subject=delivery.subject, Message=delivery.body
            )
        except ClientError as error:
            response = error.response
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code", "Unknown")
            text = response.get("Error", {}).get("Message", "")
            retry = status is None or status >= 500 or status in (408, 429)
            return Outcome(
                False,
                retry=retry or code in _SNS_RETRYABLE,
                http_status=status,
                error=f"SNS {code}: {text}".rstrip(": "),
            )
        except BotoCoreError as error:
            return Outcome(False, retry=True, error=f"SNS: {error}")
        return Outcome(True, http_status=answer.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _excerpt(answer: httpx.Response) -> str:
    """The start of an answer's body, for the delivery record."""
    data = b""
    for chunk in answer.iter_bytes():
        data += chunk
        if len(data) >= _EXCERPT_BYTES:
            break
    text = data[:_EXCERPT_BYTES].decode("utf-8", errors="replace")
    return " ".join(text.split())[:200]
