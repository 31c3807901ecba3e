"""The deployment engine: scenario files, transition tables, and the rules ``decide`` keeps.

A small simulator (``Sim``) plays the store: it applies every ``Decision`` to its ``Snapshot``
(changed targets replace the old ones; finished commands leave the open set) and feeds the
next event, checking after each step the invariants every snapshot must keep.

Scenario files (``scenarios/engine/*.json``) need no code. Keys:

* ``description``: what the case shows.
* ``config``: a predefined name (``CodeDeployDefault.OneAtATime``) or ``{"type", "value"}``.
* ``hosts``: names, or ``{"name", "health"}`` objects. ``health`` is what the group knows from
  earlier deployments: ``unhealthy`` (last attempt failed), ``unknown`` (healthy, revision
  unknown), ``old`` (healthy at another revision), ``current`` (healthy at this deployment's
  revision); absent = never deployed here, which counts as unhealthy (codedeploy-spec §6.2).
* ``events`` (optional): the lifecycle events; default ``core.lifecycle.events_for()``.
* ``ignore_application_stop_failures``, ``update_outdated_instances_only``: optional flags.
* ``steps``: each a string, or ``{"step": <string>, ...}`` with extras. Step strings:

  - ``start``: the ``Started`` event;
  - ``ack HOST/EVENT`` / ``ok HOST/EVENT``: acknowledge / complete successfully the command the
    engine issued for that host and event (it need not be open any more: a late duplicate);
  - ``fail HOST/EVENT``: complete it failed; extras ``code`` (agent error code, default 4),
    ``script``, ``message``;
  - ``run HOST``: ack and complete successfully each next command of HOST until none is open;
  - ``lost HOST``: the host's agent went silent (``HostLost``);
  - ``stop``: ``StopRequested``.

  Extras checked after the step: ``open`` (the open commands as sorted ``HOST/EVENT``),
  ``status`` (deployment status), ``noop`` (``true``: the step's decisions were empty).
* ``expect`` (final state): ``status``, ``error_code`` (``null`` for none), ``targets`` (every
  host's target status) and ``health`` (``healthy``/``unhealthy`` per host that got a health
  update; no other host may get one) are required. Optional: ``message`` (substrings of the
  error message), ``started`` (hosts in the order they got their first command), ``events``
  (per host: one status for every event, or ``{event: status, "*": status of the rest}``),
  ``diagnostics`` (``HOST/EVENT`` -> members its diagnostics must have, compared exactly).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from opendeploy.core.configs import predefined_config
from opendeploy.core.deployments import (
    TRANSITIONS,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventStatus,
    InstanceTarget,
    TargetStatus,
    advance,
)
from opendeploy.core.engine import (
    CommandAcked,
    CommandCompleted,
    Decision,
    Event,
    HealthUpdate,
    HostLost,
    Snapshot,
    Started,
    StopRequested,
    decide,
)
from opendeploy.core.errors import IllegalTransition
from opendeploy.core.lifecycle import LIFECYCLE_ERROR_CODES, events_for, lifecycle_error_code
from opendeploy.core.planner import InstanceHealth, plan_targets
from opendeploy.core.revisions import revision_identity

SCENARIOS = sorted((Path(__file__).parent / "scenarios" / "engine").glob("*.json"))

DEPLOYMENT_ID = "d-ENGINE001"
T0 = 1_700_000_000.0
REVISION: Mapping[str, Any] = {
    "revisionType": "S3",
    "s3Location": {"bucket": "releases", "key": "shop.zip", "bundleType": "zip", "eTag": "e-2"},
}
IDENTITY = revision_identity(REVISION)
OLD_IDENTITY = revision_identity(
    {
        "revisionType": "S3",
        "s3Location": {"bucket": "releases", "key": "shop.zip", "bundleType": "zip", "eTag": "e-1"},
    }
)
HEALTH = {
    "unhealthy": InstanceHealth(False, OLD_IDENTITY),
    "unknown": InstanceHealth(True, None),
    "old": InstanceHealth(True, OLD_IDENTITY),
    "current": InstanceHealth(True, IDENTITY),
}
EVENTS = events_for()
ONE_AT_A_TIME = "CodeDeployDefault.OneAtATime"
HALF_AT_A_TIME = "CodeDeployDefault.HalfAtATime"
ALL_AT_ONCE = "CodeDeployDefault.AllAtOnce"
FINISHED = (CommandStatus.SUCCEEDED, CommandStatus.FAILED)
OPEN_EVENT = (EventStatus.PENDING, EventStatus.IN_PROGRESS)


# --- the simulator -----------------------------------------------------------------------------


def minimum_of(config: str | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if isinstance(config, str):
        predefined = predefined_config(config)
        assert predefined is not None and predefined.minimum_healthy_hosts is not None, config
        return config, predefined.minimum_healthy_hosts
    return "Custom.Config", config


def new_snapshot(
    hosts: Sequence[str | Mapping[str, str]],
    config: str | Mapping[str, Any] = ONE_AT_A_TIME,
    *,
    events: Sequence[str] = EVENTS,
    ignore_application_stop_failures: bool = False,
    outdated_only: bool = False,
) -> Snapshot:
    """A Created deployment of ``REVISION`` with targets planned by ``core.planner``."""
    names: list[str] = []
    health: dict[str, InstanceHealth] = {}
    for host in hosts:
        name = host if isinstance(host, str) else host["name"]
        names.append(name)
        if not isinstance(host, str) and "health" in host:
            health[name] = HEALTH[host["health"]]
    config_name, minimum = minimum_of(config)
    deployment = Deployment(
        deployment_id=DEPLOYMENT_ID,
        application_id="app-1",
        application_name="shop",
        group_id="dg-1",
        group_name="web",
        config_name=config_name,
        minimum_healthy_hosts=minimum,
        revision=REVISION,
        status=DeploymentStatus.CREATED,
        create_time=T0,
        ignore_application_stop_failures=ignore_application_stop_failures,
    )
    targets = plan_targets(
        DEPLOYMENT_ID,
        names,
        health,
        revision_identity=IDENTITY,
        events=tuple(events),
        now=T0,
        outdated_only=outdated_only,
    )
    return Snapshot(deployment, {t.instance_name: t for t in targets})


class Sim:
    """Plays the store: feeds events, applies decisions, remembers what was issued."""

    def __init__(self, snapshot: Snapshot, *, offline: Sequence[str] = ()) -> None:
        self.snapshot = snapshot
        self.now = T0
        #: Hosts whose agents never poll: their commands are never handed over.
        self.offline = set(offline)
        #: Every command ever issued, by (host, event).
        self.issued: dict[tuple[str, str], str] = {}
        #: Hosts in the order they received their first command.
        self.started: list[str] = []
        self.health: list[HealthUpdate] = []
        self.decisions: list[Decision] = []

    # events

    def feed(self, event: Event) -> Decision:
        self.now += 1
        was_active = self.snapshot.deployment.active
        decision = decide(self.snapshot, event, self.now)
        self.apply(decision)
        self.decisions.append(decision)
        self.check_invariants()
        if was_active and not self.deployment.active:
            assert self.deployment.complete_time == self.now
        return decision

    def start(self) -> Decision:
        return self.feed(Started())

    def stop(self) -> Decision:
        return self.feed(StopRequested())

    def command_id(self, host: str, event: str) -> str:
        assert (host, event) in self.issued, f"the engine never issued {host}/{event}"
        return self.issued[host, event]

    def ack(self, host: str, event: str) -> Decision:
        return self.feed(CommandAcked(self.command_id(host, event)))

    def ok(self, host: str, event: str) -> Decision:
        return self.feed(CommandCompleted(self.command_id(host, event), succeeded=True))

    def fail(
        self,
        host: str,
        event: str,
        *,
        code: int = 4,
        script: str = "",
        message: str = "",
        log_tail: str = "",
    ) -> Decision:
        return self.feed(
            CommandCompleted(
                self.command_id(host, event),
                succeeded=False,
                agent_code=code,
                script_name=script,
                message=message,
                log_tail=log_tail,
            )
        )

    def lost(self, host: str) -> Decision:
        return self.feed(HostLost(host, silent_seconds=310, timeout_seconds=300))

    def run(self, host: str) -> list[Decision]:
        """Ack and succeed each next command of ``host`` until it has none open."""
        assert host in self.snapshot.commands, f"{host} has no open command to run"
        decisions = []
        while host in self.snapshot.commands:
            event = self.snapshot.commands[host].event
            decisions += [self.ack(host, event), self.ok(host, event)]
        return decisions

    # state

    def apply(self, decision: Decision) -> None:
        targets = dict(self.snapshot.targets)
        for target in decision.targets:
            assert target.instance_name in targets, "a decision cannot invent targets"
            targets[target.instance_name] = target
        commands = dict(self.snapshot.commands)
        for command in decision.commands:
            held = commands.get(command.instance_name)
            if command.status in FINISHED:
                assert held is not None and held.command_id == command.command_id
                del commands[command.instance_name]
                continue
            assert held is None or held.command_id == command.command_id, (
                f"a second open command for {command.instance_name}"
            )
            if command.dispatched_time is None and command.instance_name not in self.offline:
                # Agents poll all the time: a new command is in its agent's hands at once.
                command = replace(command, dispatched_time=self.now)
            commands[command.instance_name] = command
            if held is None:
                key = (command.instance_name, command.event)
                assert key not in self.issued, f"{key} was issued twice"
                assert command.command_id not in self.issued.values(), "command id reused"
                self.issued[key] = command.command_id
                if command.instance_name not in self.started:
                    self.started.append(command.instance_name)
        self.health += decision.health
        self.snapshot = Snapshot(decision.deployment or self.snapshot.deployment, targets, commands)

    def check_invariants(self) -> None:
        deployment = self.snapshot.deployment
        for name, command in self.snapshot.commands.items():
            target = self.snapshot.targets[name]
            assert command.instance_name == name
            assert target.status is TargetStatus.IN_PROGRESS, f"{name} has a command but is idle"
            current = next(e for e in target.events if e.status in OPEN_EVENT)
            assert current.name == command.event, f"{name} runs {command.event} out of order"
        for target in self.snapshot.targets.values():
            statuses = {e.status for e in target.events}
            if target.status is TargetStatus.IN_PROGRESS:
                assert target.instance_name in self.snapshot.commands, f"{target} has no command"
            if target.status is TargetStatus.SKIPPED:
                assert statuses <= {EventStatus.SKIPPED}
            if target.status is TargetStatus.SUCCEEDED:
                assert statuses <= {EventStatus.SUCCEEDED}
            if target.status is TargetStatus.FAILED:
                assert not statuses & set(OPEN_EVENT)
        if not deployment.active:
            assert not self.snapshot.commands, "a finished deployment with open commands"
            assert deployment.complete_time is not None
            unfinished = {TargetStatus.PENDING, TargetStatus.IN_PROGRESS}
            assert not any(t.status in unfinished for t in self.snapshot.targets.values())

    def open(self) -> list[str]:
        return sorted(f"{c.instance_name}/{c.event}" for c in self.snapshot.commands.values())

    def target(self, host: str) -> InstanceTarget:
        return self.snapshot.targets[host]

    def event_statuses(self, host: str) -> dict[str, str]:
        return {e.name: e.status.value for e in self.target(host).events}

    def diagnostics(self, host: str, event: str) -> Mapping[str, str]:
        return self.target(host).event(event).diagnostics or {}

    @property
    def deployment(self) -> Deployment:
        return self.snapshot.deployment


def sim_for(
    hosts: Sequence[str | Mapping[str, str]],
    config: Any = ONE_AT_A_TIME,
    *,
    offline: Sequence[str] = (),
    **kw: Any,
) -> Sim:
    return Sim(new_snapshot(hosts, config, **kw), offline=offline)


def started_sim(hosts: Sequence[str], config: Any = ONE_AT_A_TIME, **kw: Any) -> Sim:
    sim = sim_for(hosts, config, **kw)
    sim.start()
    return sim


# --- scenario files ----------------------------------------------------------------------------


def split(spec: str) -> tuple[str, str]:
    host, _, event = spec.partition("/")
    assert host and event, f"expected HOST/EVENT, got {spec!r}"
    return host, event


def run_step(sim: Sim, step: str | Mapping[str, Any]) -> None:
    spec: Mapping[str, Any] = {"step": step} if isinstance(step, str) else step
    verb, _, arg = spec["step"].partition(" ")
    before = len(sim.decisions)
    if verb == "start":
        sim.start()
    elif verb == "stop":
        sim.stop()
    elif verb == "ack":
        sim.ack(*split(arg))
    elif verb == "ok":
        sim.ok(*split(arg))
    elif verb == "fail":
        sim.fail(
            *split(arg),
            code=spec.get("code", 4),
            script=spec.get("script", ""),
            message=spec.get("message", ""),
        )
    elif verb == "run":
        sim.run(arg)
    elif verb == "lost":
        sim.lost(arg)
    else:
        raise AssertionError(f"unknown step {spec['step']!r}")
    where = f"after step {spec['step']!r}"
    if "open" in spec:
        assert sim.open() == sorted(spec["open"]), where
    if "status" in spec:
        assert sim.deployment.status.value == spec["status"], where
    if "noop" in spec:
        assert all(d.empty for d in sim.decisions[before:]) is spec["noop"], where


def as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_expectations(sim: Sim, expect: Mapping[str, Any]) -> None:
    deployment = sim.deployment
    assert deployment.status.value == expect["status"]
    assert deployment.error_code == expect["error_code"]
    for part in as_list(expect.get("message", [])):
        assert part in (deployment.error_message or ""), deployment.error_message
    if "started" in expect:
        assert sim.started == expect["started"]
    assert {n: t.status.value for n, t in sim.snapshot.targets.items()} == expect["targets"]
    for host, wanted in expect.get("events", {}).items():
        if isinstance(wanted, str):
            wanted = {"*": wanted}
        rest = wanted.get("*")
        expected = {e: wanted.get(e, rest) for e in sim.event_statuses(host)}
        assert None not in expected.values(), f"events of {host} not fully pinned"
        assert sim.event_statuses(host) == expected, host
    for key, members in expect.get("diagnostics", {}).items():
        diagnostics = sim.diagnostics(*split(key))
        assert {k: diagnostics.get(k) for k in members} == members, key
    names = [u.instance_name for u in sim.health]
    assert len(names) == len(set(names)), "one health update per host"
    health = {u.instance_name: "healthy" if u.healthy else "unhealthy" for u in sim.health}
    assert health == expect["health"]
    for update in sim.health:
        assert update.revision_identity == (IDENTITY if update.healthy else None)


def test_scenario_files_exist() -> None:
    assert len(SCENARIOS) >= 12


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    case = json.loads(path.read_text())
    assert case.get("description"), "say what the scenario shows"
    sim = sim_for(
        case["hosts"],
        case["config"],
        events=case.get("events", EVENTS),
        ignore_application_stop_failures=case.get("ignore_application_stop_failures", False),
        outdated_only=case.get("update_outdated_instances_only", False),
        offline=case.get("offline_hosts", ()),
    )
    for step in case["steps"]:
        run_step(sim, step)
    check_expectations(sim, case["expect"])


# --- transition tables -------------------------------------------------------------------------

#: The tables as intended, written out independently of ``core.deployments``.
ALLOWED: dict[type[StrEnum], dict[str, set[str]]] = {
    DeploymentStatus: {
        "Created": {"Queued", "InProgress", "Failed", "Stopped"},
        "Queued": {"InProgress", "Failed", "Stopped"},
        "InProgress": {"Baking", "Ready", "Succeeded", "Failed", "Stopped"},
        "Baking": {"Succeeded", "Failed", "Stopped"},
        "Ready": {"InProgress", "Failed", "Stopped"},
        "Succeeded": set(),
        "Failed": set(),
        "Stopped": set(),
    },
    TargetStatus: {
        "Pending": {"InProgress", "Skipped"},
        "InProgress": {"Succeeded", "Failed", "Ready", "Skipped"},
        "Ready": {"InProgress", "Succeeded", "Failed"},
        "Succeeded": set(),
        "Failed": set(),
        "Skipped": set(),
        "Unknown": set(),
    },
    EventStatus: {
        "Pending": {"InProgress", "Succeeded", "Failed", "Skipped"},
        "InProgress": {"Succeeded", "Failed"},
        "Succeeded": set(),
        "Failed": set(),
        "Skipped": set(),
        "Unknown": set(),
    },
    CommandStatus: {
        "Pending": {"InProgress", "Succeeded", "Failed"},
        "InProgress": {"Succeeded", "Failed"},
        "Succeeded": set(),
        "Failed": set(),
    },
}
PAIRS = [
    pytest.param(kind, current, target, id=f"{kind.__name__}-{current.value}-{target.value}")
    for kind in ALLOWED
    for current in kind
    for target in kind
]


def test_tables_cover_every_status() -> None:
    assert set(TRANSITIONS) == set(ALLOWED)
    for kind, rows in ALLOWED.items():
        assert {s.value for s in kind} == set(rows), kind
        assert set(TRANSITIONS[kind]) == set(kind), kind


@pytest.mark.parametrize(("kind", "current", "target"), PAIRS)
def test_transition_pair(kind: type[Any], current: Any, target: Any) -> None:
    if current == target or target.value in ALLOWED[kind][current.value]:
        assert advance(current, target) is target
        return
    with pytest.raises(IllegalTransition) as raised:
        advance(current, target)
    assert (raised.value.kind, raised.value.current, raised.value.target) == (
        kind.__name__,
        current.value,
        target.value,
    )
    assert f"from {current.value} to {target.value}" in str(raised.value)


def test_terminal_statuses_are_the_inactive_ones() -> None:
    for status in DeploymentStatus:
        deployment = replace(new_snapshot(["i-1"]).deployment, status=status)
        assert deployment.active is bool(ALLOWED[DeploymentStatus][status.value])


# --- single rules ------------------------------------------------------------------------------


def test_start_dispatches_the_first_event_only() -> None:
    sim = sim_for(["i-1", "i-2"], ALL_AT_ONCE)
    decision = sim.start()
    assert decision.deployment is not None
    assert decision.deployment.status is DeploymentStatus.IN_PROGRESS
    assert decision.deployment.start_time == sim.now
    assert [(c.instance_name, c.event) for c in decision.new_commands] == [
        ("i-1", EVENTS[0]),
        ("i-2", EVENTS[0]),
    ]
    assert all(c.created_time == sim.now for c in decision.new_commands)
    assert [t.status for t in decision.targets] == [TargetStatus.IN_PROGRESS] * 2
    assert sim.feed(Started()).empty, "a second Started changes nothing"


def test_ack_marks_command_and_event_in_progress() -> None:
    sim = started_sim(["i-1"])
    decision = sim.ack("i-1", EVENTS[0])
    (command,) = decision.commands
    assert command.status is CommandStatus.IN_PROGRESS and command.acked_time == sim.now
    event = sim.target("i-1").event(EVENTS[0])
    assert event.status is EventStatus.IN_PROGRESS and event.start_time == sim.now
    assert decision.deployment is None and not decision.new_commands
    assert sim.ack("i-1", EVENTS[0]).empty, "a repeated ack changes nothing"


def test_ack_of_unknown_or_finished_command_does_nothing() -> None:
    sim = started_sim(["i-1", "i-2"])
    before = sim.snapshot
    assert sim.feed(CommandAcked("hc-no-such-command")).empty
    assert sim.snapshot == before
    sim.ack("i-1", EVENTS[0])
    sim.ok("i-1", EVENTS[0])
    assert sim.ack("i-1", EVENTS[0]).empty, "ack after completion"


def test_completion_of_unknown_command_does_nothing() -> None:
    sim = started_sim(["i-1"])
    assert sim.feed(CommandCompleted("hc-no-such-command", succeeded=False)).empty


@pytest.mark.parametrize("first_ok", [True, False], ids=["ok-then-failed", "failed-then-ok"])
def test_duplicate_completion_first_wins(first_ok: bool) -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    event = EVENTS[0]
    if first_ok:
        sim.ok("i-1", event)
    else:
        sim.fail("i-1", event, message="first")
    after_first = sim.snapshot
    second = CommandCompleted(sim.command_id("i-1", event), succeeded=not first_ok, message="2nd")
    assert sim.feed(second).empty
    assert sim.feed(second).empty
    assert sim.snapshot == after_first
    status = EventStatus.SUCCEEDED if first_ok else EventStatus.FAILED
    assert sim.target("i-1").event(event).status is status
    assert len(sim.health) == (0 if first_ok else 1)


def test_no_command_is_dispatched_twice_for_a_completed_event() -> None:
    sim = started_sim(["i-1"])
    sim.ok("i-1", EVENTS[0])
    assert sim.open() == [f"i-1/{EVENTS[1]}"]
    sim.ok("i-1", EVENTS[0])  # duplicate: must not reissue or advance
    assert sim.open() == [f"i-1/{EVENTS[1]}"]


def test_events_run_in_lifecycle_order_one_at_a_time() -> None:
    sim = started_sim(["i-1"])
    seen = []
    while sim.snapshot.commands:
        (command,) = sim.snapshot.commands.values()
        seen.append(command.event)
        sim.ok("i-1", command.event)
    assert tuple(seen) == EVENTS
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED
    event = sim.target("i-1").event(EVENTS[-1])
    assert event.diagnostics == {
        "errorCode": "Success",
        "scriptName": "",
        "message": "Succeeded",
        "logTail": "",
    }
    assert event.start_time == event.end_time == sim.now, "unacked: started when completed"


def test_a_completion_taking_the_next_command_issues_it_acknowledged() -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    sim.ack("i-1", EVENTS[0])
    sim.now += 1
    first = sim.command_id("i-1", EVENTS[0])
    decision = sim.feed(CommandCompleted(first, succeeded=True, take_next=True))
    (taken,) = [c for c in decision.commands if c.command_id != first]
    assert (taken.instance_name, taken.event) == ("i-1", EVENTS[1])
    assert taken.status is CommandStatus.IN_PROGRESS
    assert taken.dispatched_time == taken.acked_time == taken.created_time == sim.now
    assert not decision.new_commands, "the agent has it: no poll is woken for it"
    event = sim.target("i-1").event(EVENTS[1])
    assert event.status is EventStatus.IN_PROGRESS and event.start_time == sim.now
    assert sim.event_statuses("i-2")[EVENTS[0]] == "Pending", "other hosts are untouched"


def test_taking_the_next_command_runs_a_host_to_the_end_and_never_past_a_failure() -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    while "i-1" in sim.snapshot.commands:
        command = sim.snapshot.commands["i-1"]
        sim.feed(CommandCompleted(command.command_id, succeeded=True, take_next=True))
    assert sim.target("i-1").status is TargetStatus.SUCCEEDED
    failing = sim.snapshot.commands["i-2"]
    decision = sim.feed(CommandCompleted(failing.command_id, succeeded=False, take_next=True))
    assert "i-2" not in sim.snapshot.commands and not decision.new_commands
    assert sim.target("i-2").status is TargetStatus.FAILED


def test_a_completion_names_its_host_to_find_the_command_without_a_scan() -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    command_id = sim.command_id("i-1", EVENTS[0])
    assert sim.feed(CommandAcked(command_id, instance_name="i-2")).empty, "not i-2's command"
    assert not sim.feed(CommandAcked(command_id, instance_name="i-1")).empty


@pytest.mark.parametrize(
    "status", [DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.STOPPED]
)
def test_decide_on_a_terminal_deployment_is_empty(status: DeploymentStatus) -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    command_id = sim.command_id("i-1", EVENTS[0])
    frozen = Snapshot(
        replace(sim.deployment, status=status), sim.snapshot.targets, sim.snapshot.commands
    )
    events: list[Event] = [
        Started(),
        CommandAcked(command_id),
        CommandCompleted(command_id, succeeded=True),
        CommandCompleted(command_id, succeeded=False),
        HostLost("i-1", 400, 300),
        StopRequested(),
    ]
    for event in events:
        decision = decide(frozen, event, T0 + 50)
        assert decision == Decision() and decision.empty, event


def run_everything(config: str, hosts: Sequence[str]) -> Sim:
    sim = started_sim(hosts, config)
    while sim.snapshot.commands:
        for host in sorted(sim.snapshot.commands):
            sim.run(host)
    return sim


def test_command_ids_are_deterministic_and_unique() -> None:
    hosts = ["i-b", "i-a", "i-c"]
    first, second = run_everything(ALL_AT_ONCE, hosts), run_everything(ALL_AT_ONCE, hosts)
    assert first.issued == second.issued
    assert len(first.issued) == len(hosts) * len(EVENTS)
    assert len(set(first.issued.values())) == len(first.issued)
    assert all(DEPLOYMENT_ID in c for c in first.issued.values())
    # the order in which hosts finish does not change which id a host/event gets
    one_by_one = run_everything(ONE_AT_A_TIME, hosts)
    assert one_by_one.issued == first.issued


def test_command_ids_differ_between_deployments() -> None:
    sim = started_sim(["i-1"])
    other = new_snapshot(["i-1"])
    other_deployment = replace(other.deployment, deployment_id="d-OTHER0001")
    other_targets = {n: replace(t, deployment_id="d-OTHER0001") for n, t in other.targets.items()}
    decision = decide(Snapshot(other_deployment, other_targets), Started(), T0)
    assert {c.command_id for c in decision.commands}.isdisjoint(sim.issued.values())


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "Success"),
        (1, "ScriptMissing"),
        (2, "ScriptNotExecutable"),
        (3, "ScriptTimedOut"),
        (4, "ScriptFailed"),
        (5, "UnknownError"),
        (6, "ScriptFailed"),
        (7, "UnknownError"),
        (42, "UnknownError"),
        (-1, "UnknownError"),
    ],
)
def test_lifecycle_error_codes(code: int, name: str) -> None:
    assert lifecycle_error_code(code) == name


def test_agent_codes_map_to_api_lifecycle_error_codes() -> None:
    api_codes = {"Success", "ScriptMissing", "ScriptNotExecutable", "ScriptTimedOut"}
    api_codes |= {"ScriptFailed", "UnknownError"}
    assert set(LIFECYCLE_ERROR_CODES) == set(range(8))
    assert set(LIFECYCLE_ERROR_CODES.values()) == api_codes


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "UnknownError"),  # a failure never reports errorCode Success
        (1, "ScriptMissing"),
        (2, "ScriptNotExecutable"),
        (3, "ScriptTimedOut"),
        (4, "ScriptFailed"),
        (5, "UnknownError"),
        (6, "ScriptFailed"),
        (7, "UnknownError"),
    ],
)
def test_failed_event_diagnostics(code: int, name: str) -> None:
    sim = started_sim(["i-1"])
    sim.ok("i-1", "ApplicationStop")
    sim.ok("i-1", "DownloadBundle")
    sim.fail(
        "i-1",
        "BeforeInstall",
        code=code,
        script="scripts/prepare.sh",
        message="it broke",
        log_tail="[stderr] boom",
    )
    assert sim.diagnostics("i-1", "BeforeInstall") == {
        "errorCode": name,
        "scriptName": "scripts/prepare.sh",
        "message": "it broke",
        "logTail": "[stderr] boom",
    }


def test_failure_without_a_message_still_says_something() -> None:
    sim = started_sim(["i-1"])
    sim.fail("i-1", "ApplicationStop", code=5)
    assert sim.diagnostics("i-1", "ApplicationStop")["message"]


def test_failure_message_names_host_event_script_and_message() -> None:
    sim = started_sim(["web-1"])
    sim.fail(
        "web-1",
        "ApplicationStop",
        script="scripts/stop.sh",
        message="Script at specified location: scripts/stop.sh failed with exit code 3",
    )
    deployment = sim.deployment
    assert deployment.status is DeploymentStatus.FAILED
    assert deployment.error_code == "HEALTH_CONSTRAINTS"
    message = deployment.error_message or ""
    assert message.startswith("The overall deployment failed because too many")
    assert (
        "web-1 (ApplicationStop, scripts/stop.sh): "
        "Script at specified location: scripts/stop.sh failed with exit code 3" in message
    )


def test_failure_message_lists_every_failed_host_in_plan_order() -> None:
    sim = started_sim(["i-b", "i-a"], ALL_AT_ONCE)
    sim.fail("i-b", "ApplicationStop", script="stop.sh", message="b broke")
    sim.ok("i-a", "ApplicationStop")
    sim.fail("i-a", "DownloadBundle", code=5, message="no bundle")
    message = sim.deployment.error_message or ""
    assert "i-a (DownloadBundle): no bundle; i-b (ApplicationStop, stop.sh): b broke" in message


def test_lost_host_alone_is_agent_issue() -> None:
    sim = started_sim(["i-1", "i-2"])
    sim.ack("i-1", "ApplicationStop")
    decision = sim.lost("i-1")
    (command,) = decision.commands
    assert command.status is CommandStatus.FAILED
    deployment = sim.deployment
    assert deployment.status is DeploymentStatus.FAILED
    assert deployment.error_code == "AGENT_ISSUE"
    assert "i-1 (ApplicationStop): Agent heartbeat lost" in (deployment.error_message or "")
    assert "310 s" in (deployment.error_message or "")
    diagnostics = sim.diagnostics("i-1", "ApplicationStop")
    assert diagnostics["errorCode"] == "UnknownError"
    assert diagnostics["scriptName"] == ""
    assert sim.target("i-2").status is TargetStatus.SKIPPED
    assert [(u.instance_name, u.healthy) for u in decision.health] == [("i-1", False)]


def test_lost_host_with_a_script_failure_is_health_constraints() -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    sim.lost("i-1")
    assert sim.open() == ["i-2/ApplicationStop"], "still running: i-2 may yet succeed"
    sim.fail("i-2", "ApplicationStop", script="stop.sh", message="exit 1")
    assert sim.deployment.status is DeploymentStatus.FAILED
    assert sim.deployment.error_code == "HEALTH_CONSTRAINTS"
    message = sim.deployment.error_message or ""
    assert "i-1 (ApplicationStop): Agent heartbeat lost" in message
    assert "i-2 (ApplicationStop, stop.sh): exit 1" in message


def test_two_lost_hosts_are_still_agent_issue() -> None:
    sim = started_sim(["i-1", "i-2"], ALL_AT_ONCE)
    sim.lost("i-2")
    sim.lost("i-1")
    assert (sim.deployment.status, sim.deployment.error_code) == (
        DeploymentStatus.FAILED,
        "AGENT_ISSUE",
    )


def test_lost_host_without_work_does_nothing() -> None:
    sim = started_sim(["i-1", "i-2"])
    assert sim.lost("i-2").empty, "i-2 has not been given anything yet"
    assert sim.lost("i-9").empty, "not a target at all"
    sim.run("i-1")
    assert sim.lost("i-1").empty, "i-1 finished"


def test_ignore_application_stop_failures_forgives_application_stop() -> None:
    stop_event = "ApplicationStop"
    sim = started_sim(["i-1"], ignore_application_stop_failures=True)
    sim.fail("i-1", stop_event, code=4, script="stop.sh", message="exit 1")
    event = sim.target("i-1").event(stop_event)
    assert event.status is EventStatus.SUCCEEDED
    assert event.diagnostics is not None
    assert event.diagnostics["errorCode"] == "ScriptFailed"
    assert event.diagnostics["message"].endswith("exit 1")
    assert "ignoreApplicationStopFailures" in event.diagnostics["message"]
    assert sim.open() == ["i-1/DownloadBundle"]
    sim.run("i-1")
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED
    assert sim.target("i-1").status is TargetStatus.SUCCEEDED
    assert [(u.instance_name, u.healthy) for u in sim.health] == [("i-1", True)]


def test_ignore_application_stop_failures_does_not_forgive_before_install() -> None:
    sim = started_sim(["i-1"], ignore_application_stop_failures=True)
    sim.ok("i-1", "ApplicationStop")
    sim.ok("i-1", "DownloadBundle")
    sim.fail("i-1", "BeforeInstall", script="before.sh", message="exit 2")
    assert sim.target("i-1").event("BeforeInstall").status is EventStatus.FAILED
    assert sim.target("i-1").status is TargetStatus.FAILED
    assert sim.deployment.status is DeploymentStatus.FAILED
    assert not sim.open()


def test_application_stop_failure_fails_without_the_flag() -> None:
    sim = started_sim(["i-1"])
    sim.fail("i-1", "ApplicationStop", script="stop.sh", message="exit 1")
    assert sim.target("i-1").event("ApplicationStop").status is EventStatus.FAILED
    assert sim.deployment.status is DeploymentStatus.FAILED


def test_ignore_flag_forgives_block_traffic_hooks_too() -> None:
    events = ("BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic", "ApplicationStop")
    sim = sim_for(["i-1"], events=events, ignore_application_stop_failures=True)
    sim.start()
    sim.fail("i-1", "BeforeBlockTraffic")
    assert sim.open() == ["i-1/BlockTraffic"]
    sim.ok("i-1", "BlockTraffic")
    sim.fail("i-1", "AfterBlockTraffic")
    assert sim.open() == ["i-1/ApplicationStop"]
    sim.fail("i-1", "ApplicationStop")
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED


def test_stop_with_nothing_in_flight_on_a_running_deployment() -> None:
    # e.g. between zones: InProgress, but no instance is deploying
    snapshot = new_snapshot(["i-1", "i-2"])
    running = Snapshot(
        replace(snapshot.deployment, status=DeploymentStatus.IN_PROGRESS, start_time=T0),
        snapshot.targets,
    )
    sim = Sim(running)
    decision = sim.stop()
    assert decision.deployment is not None
    assert decision.deployment.status is DeploymentStatus.STOPPED
    assert decision.deployment.error_code == "MANUAL_STOP"
    assert decision.deployment.error_message == "Deployment stopped by user."
    assert decision.deployment.complete_time == sim.now
    assert not decision.commands and not decision.health
    for host in ("i-1", "i-2"):
        assert sim.target(host).status is TargetStatus.SKIPPED
        assert set(sim.event_statuses(host).values()) == {"Skipped"}


def test_stop_before_start_stops_at_once() -> None:
    sim = sim_for(["i-1", "i-2"])
    sim.feed(StopRequested("changed my mind"))
    assert sim.deployment.status is DeploymentStatus.STOPPED
    assert (sim.deployment.error_code, sim.deployment.error_message) == (
        "MANUAL_STOP",
        "changed my mind",
    )
    assert {t.status for t in sim.snapshot.targets.values()} == {TargetStatus.SKIPPED}
    assert sim.start().empty, "a stopped deployment does not start"
    assert not sim.issued


@pytest.mark.parametrize("acked", [True, False], ids=["acked", "not-acked"])
@pytest.mark.parametrize("result", ["ok", "fail"])
def test_stop_with_a_command_in_flight_waits_for_it(acked: bool, result: str) -> None:
    sim = started_sim(["i-1", "i-2", "i-3"])
    sim.run("i-1")
    if acked:
        sim.ack("i-2", "ApplicationStop")
    decision = sim.stop()
    assert decision.deployment is not None
    assert decision.deployment.status is DeploymentStatus.IN_PROGRESS
    assert decision.deployment.stop_requested
    assert decision.deployment.error_code == "MANUAL_STOP"
    assert not decision.new_commands
    assert sim.open() == ["i-2/ApplicationStop"], "the running command is left alone"
    assert sim.target("i-3").status is TargetStatus.SKIPPED
    assert sim.stop().empty, "a second stop changes nothing"
    if result == "ok":
        sim.ok("i-2", "ApplicationStop")
    else:
        sim.fail("i-2", "ApplicationStop", message="exit 1")
    assert sim.open() == [], "nothing new is dispatched after a stop"
    assert sim.deployment.status is DeploymentStatus.STOPPED
    assert sim.deployment.error_code == "MANUAL_STOP"
    events = sim.event_statuses("i-2")
    assert events["ApplicationStop"] == ("Succeeded" if result == "ok" else "Failed")
    assert {events[e] for e in EVENTS[1:]} == {"Skipped"}
    assert sim.target("i-2").status is TargetStatus.FAILED, "cut short: not a success"
    assert sim.target("i-1").status is TargetStatus.SUCCEEDED
    assert set(sim.event_statuses("i-3").values()) == {"Skipped"}
    assert [(u.instance_name, u.healthy) for u in sim.health] == [("i-1", True), ("i-2", False)]


def test_stop_while_the_last_event_runs_keeps_a_finished_host_succeeded() -> None:
    sim = started_sim(["i-1", "i-2"])
    for event in EVENTS[:-1]:
        sim.ok("i-1", event)
    sim.stop()
    sim.ok("i-1", EVENTS[-1])
    assert sim.deployment.status is DeploymentStatus.STOPPED
    assert sim.target("i-1").status is TargetStatus.SUCCEEDED
    assert set(sim.event_statuses("i-1").values()) == {"Succeeded"}
    assert [(u.instance_name, u.healthy, u.revision_identity) for u in sim.health] == [
        ("i-1", True, IDENTITY)
    ]


def test_start_fails_with_no_instances() -> None:
    sim = sim_for([])
    decision = sim.start()
    assert decision.deployment is not None
    deployment = decision.deployment
    assert deployment.status is DeploymentStatus.FAILED
    assert deployment.error_code == "NO_INSTANCES"
    assert deployment.error_message
    assert deployment.start_time == deployment.complete_time == sim.now
    assert not decision.commands and not decision.health


def test_start_fails_half_at_a_time_on_one_host() -> None:
    sim = sim_for(["i-1"], HALF_AT_A_TIME)
    decision = sim.start()
    assert sim.deployment.status is DeploymentStatus.FAILED
    assert sim.deployment.error_code == "HEALTH_CONSTRAINTS_INVALID"
    assert not decision.commands and not sim.issued
    assert sim.target("i-1").status is TargetStatus.SKIPPED
    assert set(sim.event_statuses("i-1").values()) == {"Skipped"}


def test_one_at_a_time_on_one_host() -> None:
    sim = started_sim(["i-1"])
    sim.run("i-1")
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED


# --- updateOutdatedInstancesOnly ---------------------------------------------------------------


def test_plan_outdated_only_skips_hosts_at_the_revision() -> None:
    health = {"i-1": HEALTH["current"], "i-2": HEALTH["old"], "i-3": HEALTH["unhealthy"]}
    names = ["i-1", "i-2", "i-3", "i-4"]
    kwargs: dict[str, Any] = {"revision_identity": IDENTITY, "events": EVENTS, "now": T0}
    planned = plan_targets(DEPLOYMENT_ID, names, health, outdated_only=True, **kwargs)
    assert [(t.instance_name, t.status) for t in planned] == [
        ("i-3", TargetStatus.PENDING),
        ("i-4", TargetStatus.PENDING),
        ("i-2", TargetStatus.PENDING),
        ("i-1", TargetStatus.SKIPPED),
    ]
    assert [t.position for t in planned] == [0, 1, 2, 3]
    assert {e.status for e in planned[-1].events} == {EventStatus.SKIPPED}
    assert {e.status for e in planned[0].events} == {EventStatus.PENDING}
    everything = plan_targets(DEPLOYMENT_ID, names, health, **kwargs)
    assert {t.status for t in everything} == {TargetStatus.PENDING}
    # an unhealthy host at the current revision is retried even when outdated only
    health["i-3"] = InstanceHealth(False, IDENTITY)
    planned = plan_targets(DEPLOYMENT_ID, names, health, outdated_only=True, **kwargs)
    assert {t.instance_name for t in planned if t.status is TargetStatus.SKIPPED} == {"i-1"}


def test_outdated_only_hosts_do_not_count_in_n() -> None:
    hosts = [
        {"name": "i-1", "health": "current"},
        {"name": "i-2", "health": "current"},
        {"name": "i-3", "health": "old"},
        {"name": "i-4", "health": "old"},
    ]
    # HalfAtATime over N=2 (not 4): M=1, so one at a time
    sim = sim_for(hosts, HALF_AT_A_TIME, outdated_only=True)
    sim.start()
    assert sim.open() == ["i-3/ApplicationStop"]
    sim.run("i-3")
    assert sim.open() == ["i-4/ApplicationStop"]
    sim.fail("i-4", "ApplicationStop")
    # N - F = 1 >= M = 1 with one success: Succeeded
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED
    assert {n: t.status.value for n, t in sim.snapshot.targets.items()} == {
        "i-1": "Skipped",
        "i-2": "Skipped",
        "i-3": "Succeeded",
        "i-4": "Failed",
    }
    assert {u.instance_name for u in sim.health} == {"i-3", "i-4"}
    # without the flag all four count: two at a time
    sim = sim_for(hosts, HALF_AT_A_TIME)
    sim.start()
    assert sim.open() == ["i-3/ApplicationStop", "i-4/ApplicationStop"]


def test_outdated_only_start_check_uses_the_remaining_hosts() -> None:
    hosts = [{"name": "i-1", "health": "current"}, {"name": "i-2", "health": "old"}]
    sim = sim_for(
        [*hosts, {"name": "i-3", "health": "current"}], HALF_AT_A_TIME, outdated_only=True
    )
    sim.start()
    assert (sim.deployment.status, sim.deployment.error_code) == (
        DeploymentStatus.FAILED,
        "HEALTH_CONSTRAINTS_INVALID",
    )
    sim = sim_for([hosts[0]], ONE_AT_A_TIME, outdated_only=True)
    sim.start()
    assert (sim.deployment.status, sim.deployment.error_code) == (
        DeploymentStatus.FAILED,
        "NO_INSTANCES",
    )
    assert sim.target("i-1").status is TargetStatus.SKIPPED
    assert not sim.health


# --- invariants over many small runs -----------------------------------------------------------


def drive(sim: Sim, failing: Iterable[tuple[str, str]]) -> None:
    """Run every open command to its end, host by host in name order, failing the listed ones."""
    failing = set(failing)
    while sim.snapshot.commands:
        host = sorted(sim.snapshot.commands)[0]
        event = sim.snapshot.commands[host].event
        sim.ack(host, event)
        if (host, event) in failing:
            sim.fail(host, event)
        else:
            sim.ok(host, event)


@pytest.mark.parametrize("config", [ONE_AT_A_TIME, HALF_AT_A_TIME, ALL_AT_ONCE])
def test_every_single_failure_ends_consistently(config: str) -> None:
    hosts = ["i-1", "i-2", "i-3", "i-4"]
    for host in hosts:
        for event in EVENTS:
            sim = started_sim(hosts, config)
            drive(sim, [(host, event)])
            deployment = sim.deployment
            assert not deployment.active
            failed = [n for n, t in sim.snapshot.targets.items() if t.status is TargetStatus.FAILED]
            assert failed == [host]
            if deployment.status is DeploymentStatus.SUCCEEDED:
                assert deployment.error_code is None
            else:
                assert deployment.error_code == "HEALTH_CONSTRAINTS"
                assert f"{host} ({event}" in (deployment.error_message or "")
            if config == ONE_AT_A_TIME:
                assert (deployment.status is DeploymentStatus.SUCCEEDED) is (host == "i-4")
            else:
                assert deployment.status is DeploymentStatus.SUCCEEDED
            assert len(sim.health) == sum(
                t.status is not TargetStatus.SKIPPED for t in sim.snapshot.targets.values()
            )


def test_events_that_move_no_target_do_not_replan_the_rollout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ack or a completion followed by the host's next event leaves every target's status
    as it was: re-planning the whole fleet for them made each event cost O(hosts)."""
    import opendeploy.core.engine as engine

    sim = Sim(new_snapshot(["a", "b", "c"], ALL_AT_ONCE))
    sim.start()
    plan = engine._rollout
    calls: list[str] = []

    def counting(work: Any) -> Any:
        calls.append("plan")
        return plan(work)

    monkeypatch.setattr(engine, "_rollout", counting)
    for event in EVENTS[:-1]:
        sim.ack("a", event)
        sim.ok("a", event)
    assert calls == []
    sim.ack("a", EVENTS[-1])
    sim.ok("a", EVENTS[-1])
    assert calls == [], "a host finished, but with none left to start and others running"
    sim.run("b")
    assert calls == []
    sim.run("c")
    assert calls == ["plan"], "the last host finished: the plan says how the rollout ended"
    assert sim.deployment.status is DeploymentStatus.SUCCEEDED


def test_a_host_finishing_while_others_wait_to_start_plans_the_next_ones() -> None:
    sim = started_sim(["a", "b", "c"], ONE_AT_A_TIME)
    assert sim.open() == [f"a/{EVENTS[0]}"]
    sim.run("a")
    assert sim.open() == [f"b/{EVENTS[0]}"]


def test_the_failure_message_names_ten_failed_hosts_and_counts_the_rest() -> None:
    hosts = [f"h{index:02d}" for index in range(25)]
    sim = Sim(new_snapshot(hosts, ALL_AT_ONCE))
    sim.start()
    for host in hosts:
        sim.ack(host, EVENTS[0])
        sim.fail(host, EVENTS[0], script="stop.sh", message="exit 1")
    message = sim.deployment.error_message or ""
    assert sim.deployment.status is DeploymentStatus.FAILED
    assert "h00 (ApplicationStop, stop.sh): exit 1" in message
    assert "h09 (ApplicationStop" in message and "h10 (" not in message
    assert message.endswith("; and 15 more failed instances")


def test_the_per_deployment_ceiling_comes_with_the_start_event() -> None:
    hosts = [f"h{index}" for index in range(5)]
    capped = Sim(new_snapshot(hosts, ALL_AT_ONCE))
    capped.feed(Started(max_instances=4))
    assert capped.deployment.status is DeploymentStatus.FAILED
    assert capped.deployment.error_code == "OVER_MAX_INSTANCES"
    roomy = Sim(new_snapshot(hosts, ALL_AT_ONCE))
    roomy.feed(Started(max_instances=5))
    assert roomy.deployment.status is DeploymentStatus.IN_PROGRESS
    assert sorted(roomy.snapshot.commands) == hosts
