"""Use cases of the agent API (the CodeDeploy host command service), framework-free.

A caller is an agent user; the on-premises instance registered with that user's ARN is the
only host it may act for, and it sees only that host's commands.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opendeploy.bundles.store import BundleNotFound, sha256_from_location
from opendeploy.core.deployments import CommandStatus, Deployment, HostCommand
from opendeploy.core.engine import CommandAcked, CommandCompleted
from opendeploy.core.errors import ServiceError
from opendeploy.core.lifecycle import AGENT_RESTARTED
from opendeploy.core.model import OnPremisesInstance
from opendeploy.server.service.batches import Batches, Job
from opendeploy.server.service.context import Caller, ServiceContext
from opendeploy.server.service.engine_runner import feed, feed_taking_next
from opendeploy.server.signing import SpecSigner
from opendeploy.store import deployments as store
from opendeploy.store import polls
from opendeploy.store.contacts import ContactBook

__all__ = [
    "AgentService",
    "Host",
    "Look",
]

log = logging.getLogger(__name__)

#: A command handed to an agent that never acknowledged it is handed over again after this.
REDELIVER_AFTER_SECONDS = 60.0
#: Signed specifications (and their deployments' hosts) kept in memory, and for how long.
SPEC_CACHE_SIZE = 256
SPEC_CACHE_SECONDS = 30.0
#: Hosts kept in memory at most (the cache is emptied past this).
HOST_CACHE_SIZE = 50_000
#: Commands handed over by this process kept in memory at most (the map is emptied past this).
HANDED_CACHE_SIZE = 50_000
#: Why a command the agent lost before beginning it failed (``AgentService.poll``).
LOST_MESSAGE = (
    "Failed: the agent took new work without having begun this lifecycle event (it stopped or "
    "restarted after receiving it, or lost the answer to its acknowledgement); the event was "
    "not run."
)
#: A take fails only commands acknowledged this long before it arrived (replicas' clocks).
LOST_MARGIN_SECONDS = 2.0
#: The one lane of hand-overs (commands of any host).
_HAND_OVERS = "hand-overs"


def _client_error(message: str) -> ServiceError:
    return ServiceError("ClientException", message)


@dataclass(frozen=True)
class Look:
    """What a poll's first look found."""

    host: Host
    #: The command handed over, if one was waiting.
    command: dict[str, Any] | None
    #: Whether the host has any command not yet acknowledged (handed over or not).
    pending: bool


@dataclass(frozen=True)
class Host:
    """The instance an agent acts for (without its tags: no agent call needs them)."""

    instance: OnPremisesInstance
    identifier: str


def _check_identifier(caller: Caller, host_identifier: str | None) -> None:
    """The HostIdentifier an agent names must be its own (the caller's ARN)."""
    if host_identifier is not None and host_identifier != caller.arn:
        raise _client_error(
            f"HostIdentifier {host_identifier} does not belong to the caller {caller.arn}."
        )


def _execution_id(ctx: ServiceContext, deployment_id: str) -> str:
    arn = f"arn:aws:sds:{ctx.region}:{ctx.account_id}:deployment/{deployment_id}"
    return f"CodeDeploy/{ctx.region}/{ctx.account_id}/{arn}"


def _deployment_of_execution(execution_id: str) -> str:
    _, _, deployment_id = execution_id.rpartition("deployment/")
    if not deployment_id.startswith("d-"):
        raise _client_error(f"{execution_id!r} is not a deployment execution id.")
    return deployment_id


def _parse_diagnostics(diagnostics: Mapping[str, Any] | None) -> dict[str, Any]:
    if not diagnostics or diagnostics.get("Format") != "JSON":
        return {}
    try:
        payload = json.loads(diagnostics.get("Payload") or "{}")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class AgentService:
    """The agent API's use cases.

    Three things every request would otherwise pay for are kept briefly in memory: which
    instance an agent user stands for (``host_ttl``; a deregistration takes effect within
    it), when each host was last heard from (a :class:`ContactBook` writes them all every
    ``contact_interval``; the heartbeat timeout is many times longer), and each deployment's
    signed specification with the names of its hosts (``spec_ttl``: every host of a
    deployment asks for the same one, and building it reads all the deployment's targets and
    signs).

    An idle poll thus costs one read transaction: the caller's instance and whether a command
    waits for it (:meth:`poll`), and none at all while its host is quiet (``PollHub``).
    """

    def __init__(
        self,
        ctx: ServiceContext,
        signer: SpecSigner | None = None,
        *,
        host_ttl: float = 5.0,
        contact_interval: float = 5.0,
        spec_ttl: float = SPEC_CACHE_SECONDS,
    ) -> None:
        self.ctx = ctx
        self._signer = signer
        #: Told each lifecycle event's outcome and duration (metrics).
        self.observe_event: Callable[[str, str, float], None] | None = None
        self.host_ttl = host_ttl
        self.spec_ttl = spec_ttl
        self.contacts = ContactBook(ctx.db, interval=contact_interval)
        self._hosts: dict[str, tuple[float, Host]] = {}
        #: deployment id -> (expiry, its hosts' names, the signed specification response)
        self._specs: dict[str, tuple[float, frozenset[str], dict[str, Any]]] = {}
        #: deployment id -> the lock of the thread building its specification now
        self._spec_builds: dict[str, threading.Lock] = {}
        self._hand_overs: Batches[tuple[str, float], HostCommand | None] = Batches()
        #: command id -> the command as this process handed it over, until its completion:
        #: a completion then needs no read to know its deployment and host (which never
        #: change). Another replica's hand-overs are read from the database.
        self._handed_over: dict[str, HostCommand] = {}
        self._lock = threading.Lock()
        self._signer_lock = threading.Lock()

    def close(self) -> None:
        """Store the contacts still in memory (the server is stopping)."""
        self.contacts.close()

    def host(self, caller: Caller, host_identifier: str | None = None) -> Host:
        """The instance registered to the caller; the identifier it polls with must be its own."""
        cached = self._cached_host(caller, host_identifier)
        if cached is not None:
            return cached
        with self.ctx.db.read() as connection:
            instance = polls.instance_of_user(connection, caller.arn)
        return self._remember(caller, instance)

    def _cached_host(self, caller: Caller, host_identifier: str | None) -> Host | None:
        _check_identifier(caller, host_identifier)
        cached = self._hosts.get(caller.arn)
        if cached is not None and cached[0] > self.ctx.clock():
            return cached[1]
        return None

    def _remember(self, caller: Caller, instance: OnPremisesInstance | None) -> Host:
        if instance is None:
            raise _client_error(
                f"No registered on-premises instance has the IAM user ARN {caller.arn}."
            )
        host = Host(instance=instance, identifier=caller.arn)
        with self._lock:
            if len(self._hosts) >= HOST_CACHE_SIZE:
                self._hosts.clear()
            self._hosts[caller.arn] = (self.ctx.clock() + self.host_ttl, host)
        return host

    @property
    def signer(self) -> SpecSigner:
        """The installation's spec signer, loaded (or created) on first use."""
        if self._signer is None:
            # Its own lock: a thread waiting for its turn to write must not hold the lock of
            # the caches, which threads in the middle of a read transaction take.
            with self._signer_lock, self.ctx.db.write() as connection:
                if self._signer is None:
                    self._signer = SpecSigner.load_or_create(
                        connection, self.ctx.secrets, now=dt.datetime.now(dt.UTC)
                    )
        return self._signer

    def poll(
        self, caller: Caller, host_identifier: str | None = None, *, took_at: float | None = None
    ) -> Look:
        """A poll's first look: the caller's host, its next command (handed over) if any, and
        whether it has any command not yet acknowledged.

        The host and its commands are one read transaction; only a command found costs a
        write. The poll is contact.

        ``took_at`` (TakeHostCommand, OpenDeploy's agent: when the take arrived): the agent
        takes work only when it runs none and has reported every event it began, so a
        command of the host acknowledged before the take and not completed is one it lost
        before beginning it (stopped or killed between receiving it with a completion's
        answer and journaling it, say, or the acknowledgement's answer lost). Such a command
        would hold its deployment for ever: the agent keeps polling, so no heartbeat is lost.
        It is failed now with the agent-restart code, and never run. A command acknowledged
        after the take arrived (less ``LOST_MARGIN_SECONDS`` for replicas' clocks) is left
        alone: the take may be a late one, whose agent polled again meanwhile and runs it.
        """
        now = self.ctx.clock()
        host = self._cached_host(caller, host_identifier)
        with self.ctx.db.read() as connection:
            if host is None:
                instance, commands = polls.look(
                    connection, caller.arn, now=now, redeliver_after=REDELIVER_AFTER_SECONDS
                )
            else:
                commands = polls.commands_of(
                    connection,
                    host.instance.name,
                    now=now,
                    redeliver_after=REDELIVER_AFTER_SECONDS,
                )
        if host is None:
            host = self._remember(caller, instance)
        self.contacts.note(host.instance.name, now)
        spared = False
        if took_at is not None and commands.running:
            spared = self._fail_lost(host, acked_before=took_at - LOST_MARGIN_SECONDS)
        command = self._hand_over(host, now) if commands.waiting else None
        # A host with a command spared is not quiet: its next take looks again.
        return Look(host, command, commands.pending or spared or command is not None)

    def _fail_lost(self, host: Host, *, acked_before: float) -> bool:
        """Fail the host's commands acknowledged before ``acked_before`` and not completed;
        whether any acknowledged later was spared."""
        with self.ctx.db.read() as connection:
            running = store.running_commands(connection, host.instance.name)
        lost = [c for c in running if c.acked_time is not None and c.acked_time < acked_before]
        for command in lost:
            self._handed_over.pop(command.command_id, None)
            log.warning(
                "%s took new work with %s (%s) acknowledged and never reported: failing it",
                host.instance.name,
                command.command_id,
                command.event,
            )
            feed(
                self.ctx,
                command.deployment_id,
                CommandCompleted(
                    command_id=command.command_id,
                    succeeded=False,
                    agent_code=AGENT_RESTARTED,
                    message=LOST_MESSAGE,
                    instance_name=command.instance_name,
                ),
            )
        return len(lost) < len(running)

    def quiet_host(self, caller: Caller, host_identifier: str | None, host: Host) -> Host:
        """A poll of a host known to have nothing pending (``PollHub.is_quiet``), answered
        without a look: the identifier is checked as in a look, and the poll is contact."""
        _check_identifier(caller, host_identifier)
        self.contacts.note(host.instance.name, self.ctx.clock())
        return host

    def claim(self, hosts: Sequence[Host]) -> list[dict[str, Any] | None]:
        """The next command of each host (marked handed over), or None: held polls' later
        looks, of every poll woken together (a deployment's start wakes all its hosts).

        One read finds whether any has a command waiting, and one write transaction hands
        them over (``next_commands_for``: two statements): two thousand polls woken at once
        cost two transactions, not four thousand. Finding nothing is no contact; a command
        handed over is. A host named twice (an old poll still held beside a new one) gets its
        next two commands, if it has two.
        """
        now = self.ctx.clock()
        names = [host.instance.name for host in hosts]
        with self.ctx.db.read() as connection:
            waiting = polls.hosts_with_waiting_commands(
                connection, names, now=now, redeliver_after=REDELIVER_AFTER_SECONDS
            )
        if not waiting:
            return [None] * len(hosts)
        with self.ctx.db.write() as connection:
            found = store.next_commands_for(
                connection, names, now=now, redeliver_after=REDELIVER_AFTER_SECONDS
            )
        answers: list[dict[str, Any] | None] = []
        for host, command in zip(hosts, found, strict=True):
            if command is None:
                answers.append(None)
                continue
            # The heartbeat timeout then counts from here, not from a poll begun long before.
            self.contacts.note(host.instance.name, now)
            answers.append(self._handed(host, command))
        return answers

    def _hand_over(self, host: Host, now: float) -> dict[str, Any] | None:
        """Mark the host's next command handed over; hand-overs that wait for one another
        (a deployment's start wakes every host at once) share one transaction."""
        command = self._hand_overs.run(_HAND_OVERS, (host.instance.name, now), self._hand_over_all)
        return None if command is None else self._handed(host, command)

    def _hand_over_all(self, jobs: Sequence[Job[tuple[str, float], HostCommand | None]]) -> None:
        with self.ctx.db.write() as connection:
            # The batch's polls arrived moments apart: the latest time stands for all (a
            # command due again at an earlier poll's time is due at it too).
            now = max(job.item[1] for job in jobs)
            handed = store.next_commands_for(
                connection,
                [job.item[0] for job in jobs],
                now=now,
                redeliver_after=REDELIVER_AFTER_SECONDS,
            )
        for job, command in zip(jobs, handed, strict=True):
            job.result = command
        for job in jobs:
            job.done = True

    def _handed(self, host: Host, command: HostCommand) -> dict[str, Any]:
        """A command as the agent receives it (HostCommandInstance)."""
        if len(self._handed_over) >= HANDED_CACHE_SIZE:
            self._handed_over.clear()
        self._handed_over[command.command_id] = command
        return {
            "HostCommandIdentifier": command.command_id,
            "HostIdentifier": host.identifier,
            "DeploymentExecutionId": _execution_id(self.ctx, command.deployment_id),
            "CommandName": command.event,
            "Nonce": int(command.created_time * 1000),
        }

    def _command(self, host: Host, command_id: str | None) -> HostCommand:
        with self.ctx.db.read() as connection:
            command = store.command_by_id(connection, command_id or "")
        if command is None or command.instance_name != host.instance.name:
            raise _client_error(f"No command {command_id} for this host.")
        return command

    def cached_take(
        self, caller: Caller, host_identifier: str | None, command: dict[str, Any]
    ) -> dict[str, Any] | None:
        """TakeHostCommand's answer from memory (the caller's host and the deployment's
        specification both cached, the host among its targets), or None. No I/O: cheap
        enough for the event loop, so a deployment's first commands, taken by all its hosts
        at once, make no trip to a thread behind the completions of the hosts served first."""
        host = self._cached_host(caller, host_identifier)
        deployment_id = _deployment_of_execution(command["DeploymentExecutionId"])
        cached = self._fresh_spec(deployment_id, self.ctx.clock())
        if host is None or cached is None or host.instance.name not in cached[1]:
            return None
        return {"HostCommand": command, **cached[2]}

    def specification(self, host: Host, execution_id: str) -> dict[str, Any]:
        """The signed specification, for a host the deployment targets."""
        deployment_id = _deployment_of_execution(execution_id)
        now = self.ctx.clock()
        cached = self._fresh_spec(deployment_id, now)
        if cached is None:
            # Every host of a deployment asks at once: one of them builds, the others wait.
            with self._lock:
                building = self._spec_builds.setdefault(deployment_id, threading.Lock())
            with building:
                cached = self._fresh_spec(deployment_id, now)
                if cached is None:
                    cached = self._build_specification(deployment_id, now)
            with self._lock:
                self._spec_builds.pop(deployment_id, None)
        _, hosts, response = cached
        if host.instance.name not in hosts:
            raise _client_error(f"No deployment {deployment_id} for this host.")
        return response

    def _fresh_spec(
        self, deployment_id: str, now: float
    ) -> tuple[float, frozenset[str], dict[str, Any]] | None:
        """The deployment's cached specification (expiry, its hosts, the response), unless
        it is missing or expired."""
        cached = self._specs.get(deployment_id)
        return cached if cached is not None and cached[0] > now else None

    def _build_specification(
        self, deployment_id: str, now: float
    ) -> tuple[float, frozenset[str], dict[str, Any]]:
        with self.ctx.db.read() as connection:
            deployment = store.by_id(connection, deployment_id)
            hosts = store.target_names(connection, deployment_id) if deployment else frozenset()
        if deployment is None:
            raise _client_error(f"No deployment {deployment_id} for this host.")
        spec = self.spec_document(deployment)
        payload = json.dumps(spec, separators=(",", ":")).encode()
        response = {
            "DeploymentSystem": "CodeDeploy",
            "DeploymentSpecification": {
                "GenericEnvelope": {"Format": "PKCS7/JSON", "Payload": self.signer.sign(payload)}
            },
        }
        entry = (now + self.spec_ttl, hosts, response)
        with self._lock:
            if len(self._specs) >= SPEC_CACHE_SIZE:
                expired = [key for key, value in self._specs.items() if value[0] <= now]
                for key in expired or list(self._specs)[: SPEC_CACHE_SIZE // 2]:
                    del self._specs[key]
            self._specs[deployment_id] = entry
        return entry

    def spec_document(self, deployment: Deployment) -> dict[str, Any]:
        """The deployment specification JSON, in the stock agent's shape."""
        revision = deployment.revision
        spec: dict[str, Any] = {
            "DeploymentId": deployment.deployment_id,
            "DeploymentGroupId": deployment.group_id,
            "DeploymentGroupName": deployment.group_name,
            "ApplicationName": deployment.application_name,
            "DeploymentCreator": deployment.details.get("creator", "user"),
            "DeploymentType": deployment.deployment_type,
            "AgentActionOverrides": {
                "AgentOverrides": {
                    "FileExistsBehavior": deployment.file_exists_behavior or "DISALLOW"
                }
            },
        }
        if revision.get("revisionType") == "S3":
            s3 = revision["s3Location"]
            spec["Revision"] = {
                "RevisionType": "S3",
                "S3Revision": {
                    key: s3[member]
                    for key, member in (
                        ("Bucket", "bucket"),
                        ("Key", "key"),
                        ("BundleType", "bundleType"),
                        ("Version", "version"),
                        ("ETag", "eTag"),
                    )
                    if s3.get(member)
                },
            }
        elif revision.get("revisionType") == "GitHub":
            github = revision["gitHubLocation"]
            account, _, repository = str(github["repository"]).partition("/")
            spec["Revision"] = {
                "RevisionType": "GitHub",
                "GitHubRevision": {
                    "Account": account,
                    "Repository": repository,
                    "CommitId": github["commitId"],
                    "BundleType": "tar",
                },
            }
        bundle = self._own_bundle(revision)
        if bundle is not None:
            spec["OpenDeploy"] = {"Bundle": bundle}
        return spec

    def _own_bundle(self, revision: Mapping[str, Any]) -> dict[str, Any] | None:
        """Where the agent downloads a bundle kept in this server's own store."""
        bundles = self.ctx.bundles
        sha256 = None if bundles is None else sha256_from_location(bundles, revision)
        if bundles is None or sha256 is None:
            return None
        try:
            size = bundles.size(sha256)
        except BundleNotFound:
            # Gone from the store since the deployment was created: the agent's download
            # then fails with a message naming the bucket and key, not the spec fetch.
            return None
        return {
            "Path": f"/agent/bundles/{sha256}",
            "Sha256": sha256,
            "Size": size,
            "BundleType": "tgz",
        }

    def may_download(self, host: Host, sha256: str) -> bool:
        """Whether a deployment that targeted this host uses the bundle."""
        bundles = self.ctx.bundles
        if bundles is None:
            return False
        with self.ctx.db.read() as connection:
            revisions = store.revisions_deployed_to(connection, host.instance.name)
        return any(sha256_from_location(bundles, revision) == sha256 for revision in revisions)

    def acknowledge(self, host: Host, command_id: str | None) -> dict[str, Any]:
        command = self._command(host, command_id)
        if command.status in (CommandStatus.SUCCEEDED, CommandStatus.FAILED):
            return {"CommandStatus": command.status.value}
        self._touch(host)
        feed(self.ctx, command.deployment_id, CommandAcked(command.command_id, host.instance.name))
        return {"CommandStatus": CommandStatus.IN_PROGRESS.value}

    def complete(
        self,
        host: Host,
        command_id: str | None,
        status: str | None,
        diagnostics: Mapping[str, Any] | None,
        *,
        take_next: bool = False,
    ) -> dict[str, Any]:
        """Record the outcome; the first completion of a command wins, later ones are no-ops.

        ``take_next`` (PutHostCommandCompleteAndTakeNext, OpenDeploy's agent): the answer
        carries the host's next command of the deployment, already acknowledged, so a
        lifecycle event costs one request instead of poll, acknowledgement and completion.
        The host's other work, such as a rollback's first command, still comes by its poll.
        """
        command, completed = self._completion(host, command_id, status, diagnostics)
        if not take_next:
            feed(self.ctx, command.deployment_id, completed)
            return {}
        taken = feed_taking_next(
            self.ctx,
            command.deployment_id,
            replace(completed, take_next=True),
            host=host.instance.name,
        )
        return {} if taken is None else {"HostCommand": self._handed(host, taken)}

    def _completion(
        self,
        host: Host,
        command_id: str | None,
        status: str | None,
        diagnostics: Mapping[str, Any] | None,
    ) -> tuple[HostCommand, CommandCompleted]:
        # The first completion of a command this process handed over needs no read (a
        # resend finds it gone from the map and reads it). Should a stop or a lost
        # heartbeat have closed the command meanwhile, the engine ignores the completion.
        command = self._handed_over.get(command_id or "")
        first = command is not None and command.instance_name == host.instance.name
        if command is None or not first:
            command = self._command(host, command_id)
        else:
            self._handed_over.pop(command.command_id, None)
        self._touch(host)
        in_progress = first or command.status is CommandStatus.IN_PROGRESS
        if self.observe_event is not None and in_progress:
            began = command.acked_time or command.dispatched_time or command.created_time
            outcome = "Succeeded" if status == CommandStatus.SUCCEEDED.value else "Failed"
            self.observe_event(command.event, outcome, self.ctx.clock() - began)
        details = _parse_diagnostics(diagnostics)
        code = details.get("error_code")
        return command, CommandCompleted(
            command_id=command.command_id,
            succeeded=status == CommandStatus.SUCCEEDED.value,
            agent_code=code if isinstance(code, int) else 5,
            script_name=str(details.get("script_name") or ""),
            message=str(details.get("message") or ""),
            log_tail=str(details.get("log") or "")[-4096:],
            instance_name=command.instance_name,
        )

    def update(self, host: Host, command_id: str | None) -> dict[str, Any]:
        """A heartbeat while a command runs."""
        command = self._command(host, command_id)
        self._touch(host)
        with self.ctx.db.read() as connection:
            current = store.command_by_id(connection, command.command_id)
        return {"CommandStatus": (current or command).status.value}

    def put_log(self, host: Host, command_id: str | None, offset: int, text: str) -> dict[str, Any]:
        command = self._command(host, command_id)
        with self.ctx.db.write() as connection:
            try:
                store.append_log(connection, command.command_id, offset, text)
            except ValueError as error:
                raise _client_error(str(error)) from error
        return {}

    def _touch(self, host: Host) -> None:
        self.contacts.note(host.instance.name, self.ctx.clock())
