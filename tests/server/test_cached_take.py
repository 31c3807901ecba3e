"""TakeHostCommand answered from memory (``AgentService.cached_take``): only for a cached
host that the cached, unexpired specification of the command's deployment targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opendeploy.core.model import OnPremisesInstance
from opendeploy.server.service.agent import AgentService, _execution_id
from opendeploy.server.service.context import Caller, ServiceContext
from opendeploy.store.database import Database, make_sqlite_url

SPEC = {"DeploymentSystem": "CodeDeploy", "DeploymentSpecification": {"GenericEnvelope": {}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _caller(name: str) -> Caller:
    arn = f"arn:aws:iam::1:user/agent-{name}"
    return Caller(user_name=f"agent-{name}", arn=arn, policies=frozenset(), access_key_id="AK")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[AgentService, Clock]]:
    database = Database(make_sqlite_url(tmp_path))
    clock = Clock()
    context = ServiceContext(
        db=database,
        secrets=None,  # type: ignore[arg-type]
        account_id="1",
        region="us-east-1",
        clock=clock,
    )
    agent = AgentService(context, host_ttl=60.0, spec_ttl=30.0)
    for name in ("web-1", "web-2", "db-1"):
        instance = OnPremisesInstance(name=name, instance_arn=f"arn:{name}", register_time=1.0)
        agent._remember(_caller(name), instance)
    # The specification of d-1, as its first take built it: it targets the two web hosts.
    agent._specs["d-1"] = (clock.now + 30.0, frozenset({"web-1", "web-2"}), SPEC)
    yield agent, clock
    database.dispose()


def _command(agent: AgentService, deployment_id: str) -> dict[str, Any]:
    return {
        "HostCommandIdentifier": "c-1",
        "DeploymentExecutionId": _execution_id(agent.ctx, deployment_id),
    }


def test_a_target_of_the_cached_specification_takes_from_memory(
    service: tuple[AgentService, Clock],
) -> None:
    agent, _ = service
    caller = _caller("web-2")
    command = _command(agent, "d-1")
    assert agent.cached_take(caller, caller.arn, command) == {"HostCommand": command, **SPEC}


def test_no_answer_from_memory_for_a_host_outside_it_or_an_uncached_host_or_deployment(
    service: tuple[AgentService, Clock],
) -> None:
    agent, _ = service
    outsider, stranger = _caller("db-1"), _caller("web-9")
    assert agent.cached_take(outsider, outsider.arn, _command(agent, "d-1")) is None
    assert agent.cached_take(stranger, stranger.arn, _command(agent, "d-1")) is None
    web = _caller("web-1")
    assert agent.cached_take(web, web.arn, _command(agent, "d-2")) is None


def test_no_answer_from_memory_once_the_specification_expired(
    service: tuple[AgentService, Clock],
) -> None:
    agent, clock = service
    caller = _caller("web-1")
    clock.now += 31.0
    assert agent.cached_take(caller, caller.arn, _command(agent, "d-1")) is None
