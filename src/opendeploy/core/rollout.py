"""Rollout arithmetic for Server deployments: who may start now, and how it ends.

Every rule here is one small function citing ``reference/codedeploy-spec.md``. Notation (§6.2):
``N`` targets, ``M`` minimum healthy hosts, ``B`` batch size, ``F`` failed instances,
``inFlight`` instances currently deploying. A ``RolloutState`` is a snapshot of one deployment's
instances; the engine keeps it, asks ``next_dispatch`` after every event, and ends the deployment
when ``outcome`` is not ``None`` (``is_stuck`` tells it the failure is ``HEALTH_CONSTRAINTS`` and
that the still-pending instances become ``Skipped``).

Zonal deployments (§6.3) go one zone at a time, in zone-name order, with instances that have no
zone as a last group. Bake times are clock work and stay with the engine: when ``active_zone``
changes, it waits the monitor duration before asking ``next_dispatch`` again.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import groupby
from typing import Literal, cast

__all__ = [
    "ALL_AT_ONCE",
    "HALF_AT_A_TIME",
    "MAX_INSTANCES_PER_DEPLOYMENT",
    "ONE_AT_A_TIME",
    "ZONE_MINIMUM_DEFAULT",
    "MinimumHealthyHosts",
    "MinimumKind",
    "Outcome",
    "RolloutState",
    "Standing",
    "StartFailure",
    "Target",
    "active_zone",
    "batch_size",
    "check_start",
    "is_stuck",
    "minimum_healthy",
    "next_dispatch",
    "order_targets",
    "outcome",
    "standing",
    "start_rollout",
    "zone_sizes",
]

MinimumKind = Literal["HOST_COUNT", "FLEET_PERCENT", "MOST_CONCURRENCY"]
StartFailure = Literal["NO_INSTANCES", "OVER_MAX_INSTANCES", "HEALTH_CONSTRAINTS_INVALID"]
Outcome = Literal["Succeeded", "Failed"]

#: Instances per deployment (§10); more is ``OVER_MAX_INSTANCES`` (§8.3).
MAX_INSTANCES_PER_DEPLOYMENT = 1000
_KINDS = ("HOST_COUNT", "FLEET_PERCENT", "MOST_CONCURRENCY")


@dataclass(frozen=True)
class MinimumHealthyHosts:
    """A ``minimumHealthyHosts`` value (§3.4, §6.1).

    ``MOST_CONCURRENCY`` is what ``CodeDeployDefault.OneAtATime`` reports: ``value`` instances at
    a time while all the others stay healthy, so ``M = N - value``. Users cannot create it.
    """

    kind: MinimumKind
    value: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown minimum healthy hosts type {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise ValueError(f"minimum healthy hosts value must be an int, not {self.value!r}")
        lowest = 1 if self.kind == "MOST_CONCURRENCY" else 0
        if self.value < lowest or (self.kind == "FLEET_PERCENT" and self.value > 99):
            raise ValueError(f"{self.kind} value {self.value} is out of range")

    @classmethod
    def from_api(cls, shape: Mapping[str, object]) -> MinimumHealthyHosts:
        """Build from the API's ``{"type": ..., "value": ...}``; ``ValueError`` if unusable."""
        kind, value = shape.get("type"), shape.get("value")
        if kind not in _KINDS or not isinstance(value, int):
            raise ValueError(f"not a minimum healthy hosts shape: {dict(shape)!r}")
        return cls(cast(MinimumKind, kind), value)

    def to_api(self) -> dict[str, object]:
        return {"type": self.kind, "value": self.value}


ONE_AT_A_TIME = MinimumHealthyHosts("MOST_CONCURRENCY", 1)
HALF_AT_A_TIME = MinimumHealthyHosts("FLEET_PERCENT", 50)
ALL_AT_ONCE = MinimumHealthyHosts("HOST_COUNT", 0)
#: ``minimumHealthyHostsPerZone`` when a zonal config leaves it out (§6.3).
ZONE_MINIMUM_DEFAULT = MinimumHealthyHosts("FLEET_PERCENT", 0)


def minimum_healthy(mhh: MinimumHealthyHosts, n: int) -> int:
    """M for ``n`` targets (§6.2): HOST_COUNT as given; FLEET_PERCENT ``ceil(n * value / 100)``
    (fractions round up); MOST_CONCURRENCY ``n - value`` (OneAtATime: ``M = N - 1``)."""
    if mhh.kind == "HOST_COUNT":
        return mhh.value
    if mhh.kind == "FLEET_PERCENT":
        return -(-n * mhh.value // 100)
    return max(n - mhh.value, 0)


def batch_size(mhh: MinimumHealthyHosts, n: int) -> int:
    """B = N - M (§6.2): as many at once as possible without going under M; 0 if M >= N."""
    return max(n - minimum_healthy(mhh, n), 0)


def check_start(
    mhh: MinimumHealthyHosts,
    n: int,
    *,
    zone_sizes: Iterable[int] = (),
    zone_minimum: MinimumHealthyHosts | None = None,
    max_instances: int | None = MAX_INSTANCES_PER_DEPLOYMENT,
) -> StartFailure | None:
    """Why a deployment must fail before touching any instance, or ``None`` if it may start.

    Zero targets: ``NO_INSTANCES``; more than ``max_instances``: ``OVER_MAX_INSTANCES`` (§8.3);
    ``M >= N``, i.e. ``B < 1``: ``HEALTH_CONSTRAINTS_INVALID`` (§6.2 start check). With a zonal
    config the same start check applies to every zone's own floor (§6.3).
    """
    if n == 0:
        return "NO_INSTANCES"
    if max_instances is not None and n > max_instances:
        return "OVER_MAX_INSTANCES"
    if batch_size(mhh, n) < 1:
        return "HEALTH_CONSTRAINTS_INVALID"
    if zone_minimum is not None and any(batch_size(zone_minimum, z) < 1 for z in zone_sizes):
        return "HEALTH_CONSTRAINTS_INVALID"
    return None


class Standing(IntEnum):
    """A target's state before the deployment; lower values deploy first (§6.2 order)."""

    UNHEALTHY = 0
    REVISION_UNKNOWN = 1
    OLD_REVISION = 2
    CURRENT_REVISION = 3


def standing(healthy: bool, revision: str | None, deploying: str) -> Standing:
    """Classify a target (§6.2): unhealthy means its last attempt failed or it never got one;
    a healthy one is compared with the revision being deployed."""
    if not healthy:
        return Standing.UNHEALTHY
    if revision is None:
        return Standing.REVISION_UNKNOWN
    return Standing.CURRENT_REVISION if revision == deploying else Standing.OLD_REVISION


@dataclass(frozen=True)
class Target:
    """One instance of the deployment; ``zone`` is its Availability Zone, ``""`` if none."""

    name: str
    standing: Standing
    zone: str = ""


def order_targets(targets: Iterable[Target], *, by_zone: bool = False) -> tuple[Target, ...]:
    """Dispatch order (§6.2): unhealthy, revision unknown, old revision, current revision; by name
    within a class. ``by_zone`` first groups by zone name (§6.3), instances without a zone
    last, keeping that order inside each zone."""

    def key(t: Target) -> tuple[bool, str, Standing, str]:
        zone = (t.zone == "", t.zone) if by_zone else (False, "")
        return (*zone, t.standing, t.name)

    return tuple(sorted(targets, key=key))


@dataclass(frozen=True)
class RolloutState:
    """One deployment's instances. ``plan`` is every target in dispatch order (build it with
    ``start_rollout``); an instance in none of the three sets is pending. ``zone_minimum`` set
    means a zonal deployment with that per-zone floor."""

    minimum: MinimumHealthyHosts
    plan: tuple[Target, ...]
    succeeded: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    in_flight: frozenset[str] = frozenset()
    zone_minimum: MinimumHealthyHosts | None = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.plan]
        if len(set(names)) != len(names):
            raise ValueError("target names in a rollout plan must be unique")
        sets = (self.succeeded, self.failed, self.in_flight)
        if sum(map(len, sets)) != len(frozenset().union(*sets)):
            raise ValueError("an instance can be only one of succeeded, failed or in flight")
        if not frozenset().union(*sets) <= set(names):
            raise ValueError("succeeded, failed and in-flight instances must be in the plan")
        runs = [zone for zone, _ in groupby(t.zone for t in self.plan)]
        if self.zone_minimum is not None and len(runs) != len(set(runs)):
            raise ValueError("a zonal plan must keep each zone's targets together")

    @property
    def pending(self) -> tuple[str, ...]:
        """Never-started instances, in dispatch order."""
        return tuple(t.name for t in self._pending_targets())

    def _pending_targets(self) -> tuple[Target, ...]:
        started = self.succeeded | self.failed | self.in_flight
        return tuple(t for t in self.plan if t.name not in started)

    def start(self, names: Iterable[str]) -> RolloutState:
        """The state after ``names`` (pending instances) began deploying."""
        started = frozenset(names)
        if not started <= set(self.pending):
            raise ValueError(f"not pending: {sorted(started - set(self.pending))}")
        return dataclasses.replace(self, in_flight=self.in_flight | started)

    def finish(self, name: str, *, succeeded: bool) -> RolloutState:
        """The state after in-flight ``name`` succeeded or failed."""
        if name not in self.in_flight:
            raise ValueError(f"{name!r} is not in flight")
        done = frozenset((name,))
        if succeeded:
            return dataclasses.replace(
                self, in_flight=self.in_flight - done, succeeded=self.succeeded | done
            )
        return dataclasses.replace(self, in_flight=self.in_flight - done, failed=self.failed | done)


def start_rollout(
    minimum: MinimumHealthyHosts,
    targets: Iterable[Target],
    *,
    zone_minimum: MinimumHealthyHosts | None = None,
) -> RolloutState:
    """A fresh rollout: targets ordered (§6.2, zone by zone if zonal), nothing started."""
    plan = order_targets(targets, by_zone=zone_minimum is not None)
    return RolloutState(minimum, plan, zone_minimum=zone_minimum)


def _room(n: int, m: int, failed: int, in_flight: int) -> int:
    """How many more may start (§6.2 continuation rule): dispatch another only while
    ``inFlight < B`` and ``N - F - inFlight - 1 >= M``, so that even if every instance in flight
    fails, at least M can still end healthy."""
    by_batch = (n - m) - in_flight
    by_floor = n - failed - in_flight - m
    return max(0, min(by_batch, by_floor))


def active_zone(state: RolloutState) -> str | None:
    """The zone being deployed (§6.3): that of the first instance in the plan not yet finished;
    ``None`` when not zonal or nothing is left."""
    if state.zone_minimum is None:
        return None
    finished = state.succeeded | state.failed
    return next((t.zone for t in state.plan if t.name not in finished), None)


def _zone_counts(state: RolloutState, zone: str) -> tuple[int, int, int]:
    """N, F and inFlight of one zone."""
    members = [t.name for t in state.plan if t.zone == zone]
    return (
        len(members),
        sum(1 for name in members if name in state.failed),
        sum(1 for name in members if name in state.in_flight),
    )


def next_dispatch(state: RolloutState) -> tuple[str, ...]:
    """Pending instances that may start now, in dispatch order (§6.2 continuation rule).

    Zonal (§6.3): only the active zone's instances, and the zone's own floor applies too, so
    concurrency is limited by whichever rule is stricter.
    """
    pending = state._pending_targets()
    n = len(state.plan)
    room = _room(n, minimum_healthy(state.minimum, n), len(state.failed), len(state.in_flight))
    if state.zone_minimum is not None:
        zone = active_zone(state)
        pending = tuple(t for t in pending if t.zone == zone)
        if zone is not None:
            n_z, f_z, in_flight_z = _zone_counts(state, zone)
            m_z = minimum_healthy(state.zone_minimum, n_z)
            room = min(room, _room(n_z, m_z, f_z, in_flight_z))
    return tuple(t.name for t in pending[:room])


def is_stuck(state: RolloutState) -> bool:
    """§6.2 ``HEALTH_CONSTRAINTS``: nothing in flight, instances remain, and none may start
    (``N - F <= M``, or the zone's floor says the same). The deployment fails; its pending
    instances end ``Skipped``."""
    return not state.in_flight and bool(state.pending) and not next_dispatch(state)


def _floors_hold(state: RolloutState) -> bool:
    """``N - F >= M`` for the fleet, and for every zone when zonal (§6.2, §6.3)."""
    n = len(state.plan)
    if n - len(state.failed) < minimum_healthy(state.minimum, n):
        return False
    if state.zone_minimum is None:
        return True
    for zone in {t.zone for t in state.plan}:
        n_z, f_z, _ = _zone_counts(state, zone)
        if n_z - f_z < minimum_healthy(state.zone_minimum, n_z):
            return False
    return True


def outcome(state: RolloutState) -> Outcome | None:
    """How the rollout ended, or ``None`` while it runs.

    Stuck: ``Failed``. Otherwise, once every instance finished (§6.2 completion rule):
    ``Succeeded`` iff ``N - F >= M`` and at least one instance succeeded, so M = 0 still needs
    one success and, for OneAtATime, a failure on only the last instance is tolerated.
    """
    if is_stuck(state):
        return "Failed"
    if state.in_flight or state.pending:
        return None
    return "Succeeded" if state.succeeded and _floors_hold(state) else "Failed"


def zone_sizes(plan: Sequence[Target]) -> tuple[int, ...]:
    """Instances per zone, in plan order; input for ``check_start(zone_sizes=...)``."""
    return tuple(Counter(t.zone for t in plan).values())
