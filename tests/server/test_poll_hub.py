"""Held long polls: a wake-up that comes while a poll looks in the database is not lost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opendeploy.core.model import OnPremisesInstance
from opendeploy.server.agent_api import AgentApi, PollHub
from opendeploy.server.service.agent import Host
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

    def poll(self, caller: Caller, host_identifier: str | None) -> tuple[Host, Any]:
        self.hub.notify([HOST.instance.name])
        time.sleep(0.05)  # the wake-up is handled on the loop before the waiter exists
        return HOST, None

    def claim(self, host: Host) -> Any:
        self.claims += 1
        return COMMAND


class Idle:
    def __init__(self) -> None:
        self.claims = 0

    def poll(self, caller: Caller, host_identifier: str | None) -> tuple[Host, Any]:
        return HOST, None

    def claim(self, host: Host) -> Any:
        self.claims += 1
        return None


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
