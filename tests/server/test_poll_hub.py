"""Held long polls: a wake-up that comes while a poll looks in the database is not lost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opendeploy.core.model import OnPremisesInstance
from opendeploy.server.agent_api import AgentApi, PollHub
from opendeploy.server.service.agent import Host, Look
from opendeploy.server.service.context import Caller

CALLER = Caller(
    user_name="agent", arn="arn:aws:iam::1:user/agent", policies=frozenset(), access_key_id="AKIA"
)
HOST = Host(
    instance=OnPremisesInstance(name="web-1", instance_arn="arn:i", register_time=1.0),
    identifier=CALLER.arn,
)
COMMAND = {"HostCommandIdentifier": "c-1"}


class WokenWhileLooking:
    """The first look finds nothing, and the command arrives (with its wake-up) during it."""

    def __init__(self, hub: PollHub) -> None:
        self.hub = hub
        self.claims = 0

    def poll(
        self, caller: Caller, host_identifier: str | None, *, took_at: float | None = None
    ) -> Look:
        self.hub.notify([HOST.instance.name])
        time.sleep(0.05)  # the wake-up is handled on the loop before the waiter exists
        return Look(HOST, None, pending=False)

    def claim(self, hosts: list[Host]) -> list[Any]:
        self.claims += 1
        return [COMMAND for _ in hosts]


class Idle:
    """Nothing for the host; ``pending``: it has a command handed over, not yet due again."""

    def __init__(self, pending: bool = False) -> None:
        self.claims = 0
        self.looks = 0
        self.quiet_polls = 0
        self.pending = pending

    def poll(
        self, caller: Caller, host_identifier: str | None, *, took_at: float | None = None
    ) -> Look:
        self.looks += 1
        return Look(HOST, None, pending=self.pending)

    def quiet_host(self, caller: Caller, host_identifier: str | None, host: Host) -> Host:
        self.quiet_polls += 1
        return host

    def claim(self, hosts: list[Host]) -> list[Any]:
        self.claims += 1
        return [None for _ in hosts]


def _api(service: Any, hub: PollHub, long_poll_seconds: float) -> AgentApi:
    return AgentApi(service, None, hub, long_poll_seconds=long_poll_seconds)  # type: ignore[arg-type]


def test_a_wake_up_during_the_first_look_answers_the_poll_at_once() -> None:
    async def scenario() -> tuple[Any, float]:
        hub = PollHub()
        service = WokenWhileLooking(hub)
        started = time.monotonic()
        command = await _api(service, hub, 30.0)._long_poll(CALLER, CALLER.arn)
        return command, time.monotonic() - started

    command, took = asyncio.run(scenario())

    assert command == COMMAND
    assert took < 5.0


def test_an_idle_poll_answers_empty_when_its_time_is_up_without_another_look() -> None:
    async def scenario() -> tuple[Any, float, int]:
        hub = PollHub()
        service = Idle()
        started = time.monotonic()
        command = await _api(service, hub, 0.3)._long_poll(CALLER, CALLER.arn)
        return command, time.monotonic() - started, service.claims

    command, took, claims = asyncio.run(scenario())

    assert command is None
    assert 0.25 <= took < 3.0
    assert claims == 0


def test_woken_since_tells_wake_ups_after_a_mark() -> None:
    async def scenario() -> None:
        hub = PollHub()
        mark = hub.mark()
        hub.wake_local(["a"])
        await asyncio.sleep(0.01)
        assert hub.woken_since("a", mark)
        assert not hub.woken_since("b", mark)
        assert not hub.woken_since("a", hub.mark())

    asyncio.run(scenario())


def _polls(api: AgentApi, count: int) -> None:
    async def scenario() -> None:
        for _ in range(count):
            assert await api._long_poll(CALLER, CALLER.arn) is None

    asyncio.run(scenario())


def test_a_host_found_with_nothing_pending_is_polled_without_a_look() -> None:
    hub, service = PollHub(), Idle()
    _polls(_api(service, hub, 0.05), 3)
    assert (service.looks, service.quiet_polls) == (1, 2)


def test_a_host_with_a_command_handed_over_is_looked_at_every_poll() -> None:
    hub, service = PollHub(), Idle(pending=True)
    _polls(_api(service, hub, 0.05), 3)
    assert (service.looks, service.quiet_polls) == (3, 0)


def test_a_wake_up_ends_the_quiet_and_the_next_poll_looks() -> None:
    async def scenario() -> tuple[int, int]:
        hub, service = PollHub(), Idle()
        api = _api(service, hub, 0.05)
        await api._long_poll(CALLER, CALLER.arn)
        hub.wake_local([HOST.instance.name])
        await asyncio.sleep(0.01)
        await api._long_poll(CALLER, CALLER.arn)
        await api._long_poll(CALLER, CALLER.arn)
        return service.looks, service.quiet_polls

    assert asyncio.run(scenario()) == (2, 1)


def test_a_wake_up_during_the_look_does_not_make_the_host_quiet() -> None:
    async def scenario() -> bool:
        hub = PollHub()
        await _api(WokenWhileLooking(hub), hub, 5.0)._long_poll(CALLER, CALLER.arn)
        return hub.is_quiet(HOST.instance.name)

    assert asyncio.run(scenario()) is False


def test_quiet_ends_after_its_time() -> None:
    hub, service = PollHub(), Idle()
    hub.quiet_seconds = 0.0
    _polls(_api(service, hub, 0.05), 2)
    assert (service.looks, service.quiet_polls) == (2, 0)


def test_without_listen_to_other_replicas_no_host_is_quiet() -> None:
    async def scenario() -> list[tuple[int, int]]:
        hub, service = PollHub(), Idle()
        api = _api(service, hub, 0.05)
        seen = []
        await api._long_poll(CALLER, CALLER.arn)
        hub.listening(False)  # wake-ups from other replicas may be lost from now on
        await asyncio.sleep(0.01)
        for _ in range(2):
            await api._long_poll(CALLER, CALLER.arn)
        seen.append((service.looks, service.quiet_polls))
        hub.listening(True)
        await asyncio.sleep(0.01)
        for _ in range(3):
            await api._long_poll(CALLER, CALLER.arn)
        seen.append((service.looks, service.quiet_polls))
        return seen

    assert asyncio.run(scenario()) == [(3, 0), (4, 2)]


def test_held_polls_look_again_when_listen_goes_down_or_comes_back() -> None:
    async def scenario() -> tuple[int, int]:
        hub, service = PollHub(), Idle(pending=True)
        api = _api(service, hub, 0.6)
        poll = asyncio.create_task(api._long_poll(CALLER, CALLER.arn))
        await asyncio.sleep(0.1)
        hub.listening(False)
        await asyncio.sleep(0.1)
        hub.listening(True)
        assert await poll is None
        return service.looks, service.claims

    assert asyncio.run(scenario()) == (1, 2)


def _caller_and_host(index: int) -> tuple[Caller, Host]:
    arn = f"arn:aws:iam::1:user/agent-{index}"
    caller = Caller(user_name=f"agent-{index}", arn=arn, policies=frozenset(), access_key_id="AK")
    instance = OnPremisesInstance(
        name=f"web-{index}", instance_arn=f"arn:i{index}", register_time=1
    )
    return caller, Host(instance=instance, identifier=arn)


class Fleet:
    """Many hosts, each found with a command handed over (held polls look at every wake-up);
    ``claim`` records each job's hosts, and fails the jobs ``failing`` counts down."""

    def __init__(self, count: int) -> None:
        self.hosts = dict(_caller_and_host(index) for index in range(count))
        self.jobs: list[list[str]] = []
        self.failing = 0
        self.seconds = 0.02

    def poll(
        self, caller: Caller, host_identifier: str | None, *, took_at: float | None = None
    ) -> Look:
        return Look(self.hosts[caller], None, pending=True)

    def claim(self, hosts: list[Host]) -> list[Any]:
        self.jobs.append([host.instance.name for host in hosts])
        time.sleep(self.seconds)
        if self.failing:
            self.failing -= 1
            raise RuntimeError("database is locked")
        return [{"HostCommandIdentifier": f"c-{host.instance.name}"} for host in hosts]


def _names(indexes: range) -> list[str]:
    return [f"web-{index}" for index in indexes]


async def _held(fleet: Fleet, hub: PollHub, api: AgentApi) -> list[asyncio.Task[Any]]:
    """Every host's poll, held."""
    polls = [asyncio.create_task(api._long_poll(caller, caller.arn)) for caller in fleet.hosts]
    while hub.waiting < len(polls):
        await asyncio.sleep(0.01)
    return polls


def _wake_all(fleet: Fleet, hub: PollHub, api: AgentApi) -> list[Any]:
    """Every host's poll held, then all woken at once; what each poll answered."""

    async def scenario() -> list[Any]:
        polls = await _held(fleet, hub, api)
        hub.wake_local(_names(range(len(polls))))
        return await asyncio.gather(*polls, return_exceptions=True)

    return asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_polls_woken_together_are_looked_for_in_one_job_each_getting_its_command() -> None:
    hub, fleet = PollHub(), Fleet(50)
    answers = _wake_all(fleet, hub, _api(fleet, hub, 10.0))
    assert fleet.jobs == [_names(range(50))]
    assert answers == [{"HostCommandIdentifier": f"c-web-{index}"} for index in range(50)]


def test_a_failed_claim_job_fails_its_polls_and_the_next_job_runs() -> None:
    hub, fleet = PollHub(), Fleet(3)
    fleet.failing = 1
    api = _api(fleet, hub, 10.0)
    failed = _wake_all(fleet, hub, api)
    assert all(isinstance(answer, RuntimeError) for answer in failed)
    answered = _wake_all(fleet, hub, api)
    assert answered == [{"HostCommandIdentifier": f"c-web-{index}"} for index in range(3)]
    assert len(fleet.jobs) == 2


def test_polls_woken_while_a_claim_job_runs_are_looked_for_together_in_the_next() -> None:
    hub, fleet = PollHub(), Fleet(12)
    fleet.seconds = 1.0  # the second and third wake-ups come well within the first job
    api = _api(fleet, hub, 10.0)

    async def scenario() -> list[Any]:
        polls = await _held(fleet, hub, api)
        hub.wake_local(_names(range(4)))
        await asyncio.sleep(0.05)
        hub.wake_local(_names(range(4, 8)))
        await asyncio.sleep(0.05)
        hub.wake_local(_names(range(8, 12)))
        return await asyncio.gather(*polls)

    answers = asyncio.run(asyncio.wait_for(scenario(), 5.0))
    assert fleet.jobs == [_names(range(4)), _names(range(4, 12))]
    assert answers == [{"HostCommandIdentifier": f"c-web-{index}"} for index in range(12)]


def test_a_poll_cancelled_before_its_claim_job_is_not_looked_for() -> None:
    hub, fleet = PollHub(), Fleet(3)
    api = _api(fleet, hub, 10.0)

    async def scenario() -> list[Any]:
        polls = await _held(fleet, hub, api)
        hub.wake_local(_names(range(3)))
        # The polls wake and queue their claims on the next pass; the job starts on the one
        # after: a poll cancelled in between is left out.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        polls[1].cancel()
        return await asyncio.gather(*polls, return_exceptions=True)

    answers = asyncio.run(asyncio.wait_for(scenario(), 5.0))
    assert fleet.jobs == [["web-0", "web-2"]]
    assert isinstance(answers[1], asyncio.CancelledError)
