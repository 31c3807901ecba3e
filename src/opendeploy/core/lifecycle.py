"""Lifecycle events of Server deployments and what each one needs (codedeploy-spec §7.2).

The agent runs every event; DownloadBundle and Install are built in, the others run the
appspec's scripts. ApplicationStop (and the block-traffic hooks) run the scripts of the last
revision successfully installed on the host, all others those of the revision being deployed.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "IN_PLACE_EVENTS",
    "LAST_REVISION_EVENTS",
    "LIFECYCLE_ERROR_CODES",
    "STOP_EVENTS",
    "events_for",
    "lifecycle_error_code",
]

IN_PLACE_EVENTS: tuple[str, ...] = (
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
)
#: Events whose scripts come from the last successful revision on the host.
LAST_REVISION_EVENTS = frozenset({"ApplicationStop", "BeforeBlockTraffic", "AfterBlockTraffic"})
#: Events whose failure ``ignoreApplicationStopFailures`` forgives.
STOP_EVENTS = LAST_REVISION_EVENTS

#: The agent's diagnostics ``error_code`` (agent-protocol §1.6) -> the API's LifecycleErrorCode.
LIFECYCLE_ERROR_CODES: Mapping[int, str] = {
    0: "Success",
    1: "ScriptMissing",
    2: "ScriptNotExecutable",
    3: "ScriptTimedOut",
    4: "ScriptFailed",
    5: "UnknownError",
    6: "ScriptFailed",
    7: "UnknownError",
}
AGENT_RESTARTED = 7


def lifecycle_error_code(agent_code: int) -> str:
    return LIFECYCLE_ERROR_CODES.get(agent_code, "UnknownError")


def events_for(deployment_type: str = "IN_PLACE") -> tuple[str, ...]:
    """The ordered events every instance of a deployment of this type goes through."""
    if deployment_type != "IN_PLACE":
        raise ValueError(f"deployment type {deployment_type} is not supported yet")
    return IN_PLACE_EVENTS
