"""``/metrics`` in Prometheus format, one registry per server application.

Request latencies and lifecycle event durations are observed as they happen; deployments by
status, connected agents and held long polls are read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from opendeploy.core.deployments import DeploymentStatus
from opendeploy.store import contacts
from opendeploy.store import deployments as store
from opendeploy.store.database import Database

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0)
_EVENT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class _State(Collector):
    def __init__(
        self,
        db: Database,
        waiting_polls: Callable[[], int],
        heartbeat_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.waiting_polls = waiting_polls
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.db.read() as connection:
            counts = store.status_counts(connection)
            connected = contacts.agents_heard_since(
                connection, self.clock() - self.heartbeat_timeout
            )
        deployments = GaugeMetricFamily(
            "opendeploy_deployments", "Deployments by status.", labels=["status"]
        )
        for status in DeploymentStatus:
            deployments.add_metric([status.value], counts.get(status.value, 0))
        yield deployments
        yield GaugeMetricFamily(
            "opendeploy_connected_agents",
            "Agents heard from within the heartbeat timeout.",
            value=connected,
        )
        yield GaugeMetricFamily(
            "opendeploy_waiting_long_polls",
            "Agent polls held by this server, waiting for work.",
            value=self.waiting_polls(),
        )


class Metrics:
    def __init__(
        self,
        db: Database,
        *,
        waiting_polls: Callable[[], int],
        heartbeat_timeout: float,
        clock: Callable[[], float],
        store_contacts: Callable[[], object] | None = None,
    ) -> None:
        #: Writes the agent contacts this server holds in memory (they are stored every few
        #: seconds): the connected-agents count is then exact at each scrape.
        self.store_contacts = store_contacts
        self.registry = CollectorRegistry()
        self.api_latency = Histogram(
            "opendeploy_api_request_seconds",
            "Time to answer an API or agent request, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.event_duration = Histogram(
            "opendeploy_lifecycle_event_seconds",
            "How long lifecycle events took on the hosts, by event and outcome.",
            ["event", "status"],
            buckets=_EVENT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_State(db, waiting_polls, heartbeat_timeout, clock))

    def observe_request(self, operation: str, seconds: float) -> None:
        self.api_latency.labels(operation).observe(seconds)

    def observe_event(self, event: str, status: str, seconds: float) -> None:
        self.event_duration.labels(event, status).observe(max(seconds, 0.0))

    def render(self) -> bytes:
        if self.store_contacts is not None:
            self.store_contacts()
        return generate_latest(self.registry)
