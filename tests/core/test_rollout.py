"""Rollout arithmetic: codedeploy-spec §6.2 examples, scenario files, and invariants.

Scenario files (``scenarios/rollout/*.json``) need no code. Keys:

* ``config``: ``{"type": HOST_COUNT|FLEET_PERCENT|MOST_CONCURRENCY, "value": int}``
* ``zonal`` (optional): the per-zone ``{"type", "value"}``; present means zone by zone
* ``hosts``: ``[{"name", "health"?: unhealthy|unknown|old|current (default old), "zone"?}]``
* ``events``: ``[[host, "Succeeded"|"Failed"], ...]``, each for a host in flight
* ``expect``: either ``{"start": <error code>}`` for a deployment that must not start, or
  ``{"dispatch": [...], "outcome": ..., "skipped": [...]}`` where ``dispatch`` lists what
  ``next_dispatch`` starts at the beginning and after every event (one list per step),
  ``outcome`` is the final result and ``skipped`` the never-started hosts.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from opendeploy.core.rollout import (
    ALL_AT_ONCE,
    HALF_AT_A_TIME,
    ONE_AT_A_TIME,
    ZONE_MINIMUM_DEFAULT,
    MinimumHealthyHosts,
    RolloutState,
    Standing,
    Target,
    active_zone,
    batch_size,
    check_start,
    is_stuck,
    minimum_healthy,
    next_dispatch,
    order_targets,
    outcome,
    standing,
    start_rollout,
    zone_sizes,
)

SCENARIOS = sorted((Path(__file__).parent / "scenarios" / "rollout").glob("*.json"))
HEALTH = {
    "unhealthy": Standing.UNHEALTHY,
    "unknown": Standing.REVISION_UNKNOWN,
    "old": Standing.OLD_REVISION,
    "current": Standing.CURRENT_REVISION,
}


def host_count(value: int) -> MinimumHealthyHosts:
    return MinimumHealthyHosts("HOST_COUNT", value)


def fleet_percent(value: int) -> MinimumHealthyHosts:
    return MinimumHealthyHosts("FLEET_PERCENT", value)


def fleet(n: int) -> list[Target]:
    return [Target(f"i-{i:02d}", Standing.OLD_REVISION) for i in range(1, n + 1)]


def run_in_waves(mhh: MinimumHealthyHosts, n: int, failing: set[int]) -> tuple[list[int], Any, int]:
    """Start what may start, let every in-flight host finish (hosts numbered 1..n in
    ``failing`` fail), repeat. Returns the batch sizes, the outcome and how many were skipped."""
    state = start_rollout(mhh, fleet(n))
    batches: list[int] = []
    while outcome(state) is None:
        batch = next_dispatch(state)
        assert batch, "a running rollout with nothing in flight must dispatch or be stuck"
        batches.append(len(batch))
        state = state.start(batch)
        for name in batch:
            state = state.finish(name, succeeded=int(name[2:]) not in failing)
    return batches, outcome(state), len(state.pending) if is_stuck(state) else 0


# --- §6.2 arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mhh", "n", "m", "b"),
    [
        (host_count(9), 10, 9, 1),
        (host_count(8), 10, 8, 2),
        (host_count(0), 10, 0, 10),
        (host_count(6), 9, 6, 3),
        (fleet_percent(40), 9, 4, 5),
        (HALF_AT_A_TIME, 9, 5, 4),
        (HALF_AT_A_TIME, 10, 5, 5),
        (HALF_AT_A_TIME, 1, 1, 0),
        (fleet_percent(95), 10, 10, 0),
        (fleet_percent(99), 101, 100, 1),
        (fleet_percent(1), 1, 1, 0),
        (ONE_AT_A_TIME, 1, 0, 1),
        (ONE_AT_A_TIME, 10, 9, 1),
        (ALL_AT_ONCE, 7, 0, 7),
        (host_count(12), 10, 12, 0),
    ],
)
def test_minimum_and_batch_size(mhh: MinimumHealthyHosts, n: int, m: int, b: int) -> None:
    assert minimum_healthy(mhh, n) == m
    assert batch_size(mhh, n) == b


@pytest.mark.parametrize(
    ("mhh", "n", "kwargs", "expected"),
    [
        (fleet_percent(95), 10, {}, "HEALTH_CONSTRAINTS_INVALID"),
        (HALF_AT_A_TIME, 1, {}, "HEALTH_CONSTRAINTS_INVALID"),
        (host_count(10), 10, {}, "HEALTH_CONSTRAINTS_INVALID"),
        (host_count(9), 10, {}, None),
        (ONE_AT_A_TIME, 1, {}, None),
        (ALL_AT_ONCE, 1, {}, None),
        (ONE_AT_A_TIME, 0, {}, "NO_INSTANCES"),
        (host_count(5), 0, {}, "NO_INSTANCES"),
        (ALL_AT_ONCE, 1000, {}, None),
        (ALL_AT_ONCE, 1001, {}, "OVER_MAX_INSTANCES"),
        (ALL_AT_ONCE, 5000, {"max_instances": None}, None),
        (
            ALL_AT_ONCE,
            4,
            {"zone_sizes": (3, 1), "zone_minimum": host_count(1)},
            "HEALTH_CONSTRAINTS_INVALID",
        ),
        (ALL_AT_ONCE, 4, {"zone_sizes": (2, 2), "zone_minimum": host_count(1)}, None),
        (ALL_AT_ONCE, 4, {"zone_sizes": (3, 1), "zone_minimum": ZONE_MINIMUM_DEFAULT}, None),
    ],
)
def test_check_start(
    mhh: MinimumHealthyHosts, n: int, kwargs: dict[str, Any], expected: str | None
) -> None:
    assert check_start(mhh, n, **kwargs) == expected


@pytest.mark.parametrize(
    ("mhh", "n", "failing", "batches", "result", "skipped"),
    [
        pytest.param(host_count(9), 10, set(), [1] * 10, "Succeeded", 0, id="N10-M9-one-at-a-time"),
        pytest.param(host_count(8), 10, set(), [2] * 5, "Succeeded", 0, id="N10-M8-two-at-a-time"),
        pytest.param(host_count(0), 10, set(), [10], "Succeeded", 0, id="N10-M0-all"),
        pytest.param(host_count(6), 9, set(), [3, 3, 3], "Succeeded", 0, id="N9-HC6-threes"),
        pytest.param(host_count(6), 9, {7, 8, 9}, [3, 3, 3], "Succeeded", 0, id="N9-HC6-six-ok"),
        pytest.param(host_count(6), 9, {1, 2, 3}, [3], "Failed", 6, id="N9-HC6-first-batch-fails"),
        pytest.param(
            fleet_percent(40), 9, {1, 6, 7, 8, 9}, [5, 4], "Succeeded", 0, id="N9-FP40-four-ok"
        ),
        pytest.param(fleet_percent(40), 9, {1, 2, 3, 4, 5}, [5], "Failed", 4, id="N9-FP40-three"),
        pytest.param(HALF_AT_A_TIME, 9, set(), [4, 4, 1], "Succeeded", 0, id="half-N9-fours"),
        pytest.param(HALF_AT_A_TIME, 9, {6, 7, 8, 9}, [4, 4, 1], "Succeeded", 0, id="half-needs-5"),
        pytest.param(HALF_AT_A_TIME, 9, {5, 6, 7, 8}, [4, 4], "Failed", 1, id="half-only-4-ok"),
        pytest.param(ONE_AT_A_TIME, 1, set(), [1], "Succeeded", 0, id="one-N1-ok"),
        pytest.param(ONE_AT_A_TIME, 1, {1}, [1], "Failed", 0, id="one-N1-fails"),
        pytest.param(ONE_AT_A_TIME, 4, {4}, [1] * 4, "Succeeded", 0, id="one-last-fails"),
        pytest.param(ONE_AT_A_TIME, 4, {1}, [1], "Failed", 3, id="one-first-fails"),
        pytest.param(ONE_AT_A_TIME, 4, {3}, [1] * 3, "Failed", 1, id="one-third-fails"),
        pytest.param(ALL_AT_ONCE, 5, {1, 2, 3, 4}, [5], "Succeeded", 0, id="all-one-ok"),
        pytest.param(ALL_AT_ONCE, 5, {1, 2, 3, 4, 5}, [5], "Failed", 0, id="all-fail"),
        pytest.param(host_count(3), 5, {2, 5}, [2, 1, 1, 1], "Succeeded", 0, id="N-2-second-last"),
        pytest.param(host_count(3), 5, {2, 4}, [2, 1, 1], "Failed", 1, id="N-2-second-not-last"),
        pytest.param(host_count(3), 5, {1, 2}, [2], "Failed", 3, id="N-2-two-at-once"),
    ],
)
def test_spec_examples(
    mhh: MinimumHealthyHosts,
    n: int,
    failing: set[int],
    batches: list[int],
    result: str,
    skipped: int,
) -> None:
    assert check_start(mhh, n) is None
    assert run_in_waves(mhh, n, failing) == (batches, result, skipped)


# --- ordering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("healthy", "revision", "expected"),
    [
        (False, None, Standing.UNHEALTHY),
        (False, "rev-2", Standing.UNHEALTHY),
        (True, None, Standing.REVISION_UNKNOWN),
        (True, "rev-1", Standing.OLD_REVISION),
        (True, "rev-2", Standing.CURRENT_REVISION),
    ],
)
def test_standing(healthy: bool, revision: str | None, expected: Standing) -> None:
    assert standing(healthy, revision, "rev-2") is expected


def test_order_targets_by_standing_then_name() -> None:
    targets = [
        Target("c", Standing.CURRENT_REVISION),
        Target("b", Standing.OLD_REVISION),
        Target("z", Standing.UNHEALTHY),
        Target("a", Standing.OLD_REVISION),
        Target("y", Standing.REVISION_UNKNOWN),
        Target("m", Standing.UNHEALTHY),
    ]
    assert [t.name for t in order_targets(targets)] == ["m", "z", "y", "a", "b", "c"]


def test_order_targets_by_zone_groups_zones_and_puts_unzoned_last() -> None:
    targets = [
        Target("n1", Standing.UNHEALTHY),
        Target("b1", Standing.UNHEALTHY, "zone-b"),
        Target("a2", Standing.OLD_REVISION, "zone-a"),
        Target("a1", Standing.CURRENT_REVISION, "zone-a"),
    ]
    assert [t.name for t in order_targets(targets, by_zone=True)] == ["a2", "a1", "b1", "n1"]
    assert [t.name for t in order_targets(targets)] == ["b1", "n1", "a2", "a1"]


def test_unhealthy_hosts_are_retried_first() -> None:
    targets = [*fleet(3), Target("i-99", Standing.UNHEALTHY)]
    assert next_dispatch(start_rollout(ONE_AT_A_TIME, targets)) == ("i-99",)


# --- state-level rules -------------------------------------------------------------------------


def state_of(
    mhh: MinimumHealthyHosts, n: int, *, ok: int = 0, failed: int = 0, running: int = 0
) -> RolloutState:
    """A rollout of ``n`` hosts whose first hosts are ok, then failed, then running."""
    names = [t.name for t in fleet(n)]
    return RolloutState(
        mhh,
        tuple(fleet(n)),
        succeeded=frozenset(names[:ok]),
        failed=frozenset(names[ok : ok + failed]),
        in_flight=frozenset(names[ok + failed : ok + failed + running]),
    )


@pytest.mark.parametrize(
    ("mhh", "n", "counts", "dispatch", "stuck"),
    [
        (host_count(8), 10, {"failed": 1, "running": 1}, 0, False),
        (host_count(8), 10, {"failed": 1}, 1, False),
        (host_count(8), 10, {"failed": 2}, 0, True),
        (host_count(8), 10, {"ok": 3, "running": 1}, 1, False),
        (host_count(8), 10, {"ok": 9, "failed": 1}, 0, False),
        (HALF_AT_A_TIME, 9, {"running": 4}, 0, False),
        (HALF_AT_A_TIME, 9, {"ok": 1, "running": 3}, 1, False),
        (ALL_AT_ONCE, 3, {"failed": 2}, 1, False),
        (ONE_AT_A_TIME, 3, {"failed": 1}, 0, True),
    ],
)
def test_next_dispatch_and_is_stuck(
    mhh: MinimumHealthyHosts, n: int, counts: dict[str, int], dispatch: int, stuck: bool
) -> None:
    state = state_of(mhh, n, **counts)
    assert len(next_dispatch(state)) == dispatch
    assert next_dispatch(state) == state.pending[:dispatch]
    assert is_stuck(state) is stuck
    assert (outcome(state) == "Failed") is stuck


def test_outcome_waits_for_every_instance() -> None:
    assert outcome(state_of(ALL_AT_ONCE, 3, ok=2, running=1)) is None
    assert outcome(state_of(ALL_AT_ONCE, 3, ok=1, failed=2)) == "Succeeded"
    assert outcome(state_of(host_count(2), 3, ok=1, failed=2)) == "Failed"


def test_active_zone_follows_the_plan() -> None:
    targets = [Target("a1", Standing.OLD_REVISION, "a"), Target("b1", Standing.OLD_REVISION, "b")]
    state = start_rollout(ALL_AT_ONCE, targets, zone_minimum=ZONE_MINIMUM_DEFAULT)
    assert active_zone(state) == "a"
    assert zone_sizes(state.plan) == (1, 1)
    state = state.start(["a1"]).finish("a1", succeeded=True)
    assert active_zone(state) == "b"
    assert active_zone(state.start(["b1"]).finish("b1", succeeded=True)) is None
    assert active_zone(start_rollout(ALL_AT_ONCE, targets)) is None


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("FLEET_PERCENT", 100),
        ("FLEET_PERCENT", -1),
        ("HOST_COUNT", -1),
        ("MOST_CONCURRENCY", 0),
        ("HOST_COUNT", True),
        ("BOGUS", 1),
    ],
)
def test_minimum_healthy_hosts_rejects_bad_values(kind: Any, value: Any) -> None:
    with pytest.raises(ValueError):
        MinimumHealthyHosts(kind, value)


def test_minimum_healthy_hosts_api_round_trip() -> None:
    for mhh in (ONE_AT_A_TIME, HALF_AT_A_TIME, ALL_AT_ONCE, host_count(6)):
        assert MinimumHealthyHosts.from_api(mhh.to_api()) == mhh
    assert MinimumHealthyHosts.from_api({"type": "MOST_CONCURRENCY", "value": 1}) == ONE_AT_A_TIME
    with pytest.raises(ValueError):
        MinimumHealthyHosts.from_api({"type": "HOST_COUNT"})


@pytest.mark.parametrize(
    "build",
    [
        lambda: RolloutState(ALL_AT_ONCE, (*fleet(2), fleet(1)[0])),
        lambda: RolloutState(
            ALL_AT_ONCE, tuple(fleet(2)), succeeded=frozenset({"i-01"}), failed=frozenset({"i-01"})
        ),
        lambda: RolloutState(ALL_AT_ONCE, tuple(fleet(2)), in_flight=frozenset({"i-07"})),
        lambda: RolloutState(
            ALL_AT_ONCE,
            (
                Target("a1", Standing.OLD_REVISION, "a"),
                Target("b1", Standing.OLD_REVISION, "b"),
                Target("a2", Standing.OLD_REVISION, "a"),
            ),
            zone_minimum=ZONE_MINIMUM_DEFAULT,
        ),
        lambda: start_rollout(ALL_AT_ONCE, fleet(2)).start(["i-03"]),
        lambda: start_rollout(ALL_AT_ONCE, fleet(2)).finish("i-01", succeeded=True),
        lambda: start_rollout(ALL_AT_ONCE, fleet(2)).start(["i-01"]).start(["i-01"]),
    ],
)
def test_inconsistent_states_are_refused(build: Callable[[], RolloutState]) -> None:
    with pytest.raises(ValueError):
        build()


# --- scenario files ----------------------------------------------------------------------------


def load_targets(hosts: Sequence[dict[str, str]]) -> list[Target]:
    return [Target(h["name"], HEALTH[h.get("health", "old")], h.get("zone", "")) for h in hosts]


def test_scenario_files_exist() -> None:
    assert len(SCENARIOS) >= 10


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    case = json.loads(path.read_text())
    mhh = MinimumHealthyHosts.from_api(case["config"])
    zone_minimum = MinimumHealthyHosts.from_api(case["zonal"]) if "zonal" in case else None
    state = start_rollout(mhh, load_targets(case["hosts"]), zone_minimum=zone_minimum)
    expect = case["expect"]
    failure = check_start(
        mhh, len(state.plan), zone_sizes=zone_sizes(state.plan), zone_minimum=zone_minimum
    )
    assert failure == expect.get("start")
    if failure is not None:
        assert not case["events"]
        return
    dispatched = [list(next_dispatch(state))]
    state = state.start(dispatched[-1])
    for number, (host, result) in enumerate(case["events"], start=1):
        assert outcome(state) is None, f"rollout ended before event {number}"
        assert result in ("Succeeded", "Failed")
        state = state.finish(host, succeeded=result == "Succeeded")
        dispatched.append(list(next_dispatch(state)))
        state = state.start(dispatched[-1])
    assert dispatched == expect["dispatch"]
    assert outcome(state) == expect["outcome"]
    assert list(state.pending) == expect["skipped"]
    assert is_stuck(state) is bool(expect["skipped"])


# --- invariants over every small fleet ---------------------------------------------------------

CONFIGS = [
    ONE_AT_A_TIME,
    MinimumHealthyHosts("MOST_CONCURRENCY", 2),
    HALF_AT_A_TIME,
    ALL_AT_ONCE,
    *(host_count(v) for v in range(1, 6)),
    *(fleet_percent(v) for v in (10, 25, 34, 40, 66, 75, 99)),
]
ZONE_MINIMUMS = [None, ZONE_MINIMUM_DEFAULT, host_count(1), fleet_percent(50)]


def simulate(state: RolloutState, fails: Callable[[str], bool], rng: random.Random) -> RolloutState:
    """Drive a rollout to its end, finishing a random in-flight host each step, and check the
    safety rules after every dispatch."""
    n = len(state.plan)
    m = minimum_healthy(state.minimum, n)
    while outcome(state) is None:
        batch = next_dispatch(state)
        zone = active_zone(state)
        pool = [t.name for t in state.plan if t.name in state.pending and zone in (None, t.zone)]
        assert list(batch) == pool[: len(batch)], "dispatch must follow the plan order"
        state = state.start(batch)
        assert len(state.in_flight) <= batch_size(state.minimum, n)
        assert n - len(state.failed) - len(state.in_flight) >= m, "dispatch broke the minimum"
        if state.zone_minimum is not None:
            assert {t.zone for t in state.plan if t.name in state.in_flight} <= {zone}
            members = [t.name for t in state.plan if t.zone == zone]
            at_risk = sum(1 for name in members if name in state.failed | state.in_flight)
            assert len(members) - at_risk >= minimum_healthy(state.zone_minimum, len(members))
        assert state.in_flight, "a running rollout must have something in flight"
        name = rng.choice(sorted(state.in_flight))
        state = state.finish(name, succeeded=not fails(name))
    return state


def test_simulation_never_breaks_the_minimum() -> None:
    rng = random.Random(6_2)
    runs = 0
    for n, mhh, zone_minimum in itertools.product(range(1, 8), CONFIGS, ZONE_MINIMUMS):
        targets = [
            Target(f"i-{i}", Standing(i % 4), f"z{i % 3}" if i % 5 else "") for i in range(n)
        ]
        state = start_rollout(mhh, targets, zone_minimum=zone_minimum)
        sizes = zone_sizes(state.plan)
        if check_start(mhh, n, zone_sizes=sizes, zone_minimum=zone_minimum) is not None:
            assert batch_size(mhh, n) < 1 or zone_minimum is not None
            continue
        assert next_dispatch(state), "a deployment that may start must start something"
        for mask in range(2**n):
            failing = {f"i-{i}" for i in range(n) if mask >> i & 1}
            end = simulate(state, failing.__contains__, rng)
            runs += 1
            result = outcome(end)
            m = minimum_healthy(mhh, n)
            if result == "Succeeded":
                assert end.succeeded and n - len(end.failed) >= m
                assert not end.pending
            else:
                assert result == "Failed"
                assert is_stuck(end) or not end.succeeded or n - len(end.failed) < m
            if not failing:
                assert result == "Succeeded" and len(end.succeeded) == n
            if zone_minimum is None and n > 1 and len(failing) == 1 and mhh == ONE_AT_A_TIME:
                assert (result == "Succeeded") is (end.plan[-1].name in failing)
    assert runs > 5_000
