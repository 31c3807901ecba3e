"""One host command: DownloadBundle, Install, or a lifecycle hook event.

``DeploymentSpec.parse`` turns the verified specification JSON into a typed spec.
``Executor.execute(command_name, spec, host_command_id=...)`` runs the command and returns an
``Outcome``: whether it succeeded and the ``Diagnostics`` payload, shaped exactly as the stock
agent's (``{"error_code", "script_name", "message", "log"}``; success is code 0, message
``"Succeeded: "``, empty log). ``Executor.is_noop`` answers the acknowledgement's
``IsCommandNoop``.

* DownloadBundle prunes old revisions (``max_revisions``), fetches the bundle from the server's
  own store when the spec names one (``OpenDeploy.Bundle``: resumable, sha256-checked), else
  from S3 (boto3, the ``s3`` settings) or GitHub (``git`` against ``git_base_url``), unpacks it
  safely into ``deployment-archive`` and records the group's most recent install.
* Install copies the files (``install.install``) with the deployment's FileExistsBehavior and
  the configured ``destination_root``.
* A hook event runs the appspec's scripts for it: from the revision being deployed, or, for
  ApplicationStop and the block-traffic events, from the last successfully installed revision.
  No scripts for the event, or no previous revision, is a successful no-op.

Hooks get only LIFECYCLE_EVENT, DEPLOYMENT_ID, APPLICATION_NAME, DEPLOYMENT_GROUP_NAME,
DEPLOYMENT_GROUP_ID, the BUNDLE_* variables of the revision and a fixed PATH: the agent's own
environment and credentials never reach them. Their full output is kept in the deployment's
``logs/scripts.log`` and streamed to the server with PutHostCommandLog while they run.
"""

from __future__ import annotations

import codecs
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

from opendeploy.agent import layout
from opendeploy.agent.appspec_file import find_appspec, read_appspec
from opendeploy.agent.config import AgentConfig
from opendeploy.agent.hooks import ScriptLog, run_hooks
from opendeploy.agent.install import install
from opendeploy.agent.unpack import BundleType, extract
from opendeploy.core.appspec import SERVER_HOOK_EVENTS, AppSpec, FileExistsBehavior
from opendeploy.core.errors import OpenDeployError
from opendeploy.core.lifecycle import LAST_REVISION_EVENTS

__all__ = [
    "BUILTIN_COMMANDS",
    "HOOK_COMMANDS",
    "SUCCESS_DIAGNOSTICS",
    "DeploymentSpec",
    "Executor",
    "ExecutorClient",
    "GitHubRevision",
    "OpenDeployBundle",
    "Outcome",
    "S3Revision",
    "SpecError",
    "failure",
]

log = logging.getLogger(__name__)

BUILTIN_COMMANDS: Final = frozenset({"DownloadBundle", "Install"})
#: In a deployment directory: the identity of the revision unpacked there.
REVISION_MARKER: Final = "revision.id"
HOOK_COMMANDS: Final = frozenset(SERVER_HOOK_EVENTS)
HOOK_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUCCESS_DIAGNOSTICS: Final[Mapping[str, Any]] = {
    "error_code": 0,
    "script_name": "",
    "message": "Succeeded: ",
    "log": "",
}
UNKNOWN_ERROR: Final = 5
_LOG_CHUNK: Final = 256 * 1024
#: Parsed appspecs kept (a deployment reads its own and the last successful revision's).
_APPSPEC_CACHE_SIZE: Final = 8
_ROLLBACK: Final = "codeDeployRollback"
_BLOCK_TRAFFIC: Final = frozenset({"BeforeBlockTraffic", "AfterBlockTraffic"})
_ALLOW_TRAFFIC: Final = frozenset({"BeforeAllowTraffic", "AfterAllowTraffic"})


class SpecError(OpenDeployError):
    """A deployment specification the agent cannot act on."""


# -- the specification -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Revision:
    bucket: str
    key: str
    bundle_type: str
    version: str | None = None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class GitHubRevision:
    account: str
    repository: str
    commit_id: str
    bundle_type: str = "tar"


@dataclass(frozen=True, slots=True)
class OpenDeployBundle:
    """A bundle in the server's own store (``GET <endpoint><path>``)."""

    path: str
    sha256: str
    size: int | None
    bundle_type: str


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    deployment_id: str
    group_id: str
    group_name: str
    application_name: str
    creator: str = "user"
    deployment_type: str = "IN_PLACE"
    file_exists_behavior: FileExistsBehavior | None = None
    appspec_filename: str = "appspec.yml"
    revision_type: str | None = None
    s3: S3Revision | None = None
    github: GitHubRevision | None = None
    bundle: OpenDeployBundle | None = None

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> DeploymentSpec:
        """A spec from the specification JSON; SpecError names the bad field."""
        deployment_id = _text(document, "DeploymentId")
        if deployment_id.startswith("arn:"):
            deployment_id = deployment_id.rpartition("deployment/")[2]
        group_id = _text(document, "DeploymentGroupId")
        try:
            layout.check_deployment_id(deployment_id)
            layout.check_group_id(group_id)
        except layout.LayoutError as exc:
            raise SpecError(str(exc)) from None
        behavior = _overrides(document)
        revision = document.get("Revision")
        if revision is not None and not isinstance(revision, Mapping):
            raise SpecError("Revision must be an object")
        revision = revision or {}
        revision_type = revision.get("RevisionType")
        s3 = github = None
        if isinstance(revision.get("S3Revision"), Mapping):
            raw = revision["S3Revision"]
            s3 = S3Revision(
                bucket=_text(raw, "Bucket", "Revision.S3Revision"),
                key=_text(raw, "Key", "Revision.S3Revision"),
                bundle_type=str(raw.get("BundleType") or "tar").lower(),
                version=_optional_text(raw, "Version"),
                etag=_optional_text(raw, "ETag"),
            )
        if isinstance(revision.get("GitHubRevision"), Mapping):
            raw = revision["GitHubRevision"]
            github = GitHubRevision(
                account=_text(raw, "Account", "Revision.GitHubRevision"),
                repository=_text(raw, "Repository", "Revision.GitHubRevision"),
                commit_id=_text(raw, "CommitId", "Revision.GitHubRevision"),
                bundle_type=str(raw.get("BundleType") or "tar").lower(),
            )
        return cls(
            deployment_id=deployment_id,
            group_id=group_id,
            group_name=_text(document, "DeploymentGroupName"),
            application_name=_text(document, "ApplicationName"),
            creator=_optional_text(document, "DeploymentCreator") or "user",
            deployment_type=_optional_text(document, "DeploymentType") or "IN_PLACE",
            file_exists_behavior=behavior,
            appspec_filename=_optional_text(document, "AppSpecFilename") or "appspec.yml",
            revision_type=revision_type if isinstance(revision_type, str) else None,
            s3=s3,
            github=github,
            bundle=_bundle(document),
        )


def _text(document: Mapping[str, Any], key: str, parent: str = "") -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        where = f"{parent}.{key}" if parent else key
        raise SpecError(f"the deployment specification has no {where}")
    return value


def _optional_text(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) and value else None


def _overrides(document: Mapping[str, Any]) -> FileExistsBehavior | None:
    overrides = document.get("AgentActionOverrides")
    agent = overrides.get("AgentOverrides") if isinstance(overrides, Mapping) else None
    value = agent.get("FileExistsBehavior") if isinstance(agent, Mapping) else None
    if value is None or value == "":
        return None
    upper = str(value).upper()
    if upper == "DISALLOW":
        return "DISALLOW"
    if upper == "OVERWRITE":
        return "OVERWRITE"
    if upper == "RETAIN":
        return "RETAIN"
    raise SpecError(f"FileExistsBehavior {value!r} is not DISALLOW, OVERWRITE or RETAIN")


def _bundle(document: Mapping[str, Any]) -> OpenDeployBundle | None:
    ours = document.get("OpenDeploy")
    raw = ours.get("Bundle") if isinstance(ours, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    size = raw.get("Size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise SpecError(f"OpenDeploy.Bundle.Size {size!r} is not a byte count")
    return OpenDeployBundle(
        path=_text(raw, "Path", "OpenDeploy.Bundle"),
        sha256=_text(raw, "Sha256", "OpenDeploy.Bundle").lower(),
        size=size,
        bundle_type=str(raw.get("BundleType") or "tgz").lower(),
    )


# -- outcomes --------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """``(succeeded, diagnostics)``: how a command ended, and its Diagnostics payload."""

    succeeded: bool
    diagnostics: Mapping[str, Any]

    @property
    def status(self) -> str:
        """The PutHostCommandComplete CommandStatus."""
        return "Succeeded" if self.succeeded else "Failed"


def failure(
    message: str, *, code: int = UNKNOWN_ERROR, script: str = "", tail: str = ""
) -> Outcome:
    return Outcome(
        False, {"error_code": code, "script_name": script, "message": message, "log": tail}
    )


SUCCESS: Final = Outcome(True, SUCCESS_DIAGNOSTICS)


# -- the executor ----------------------------------------------------------------------------


class ExecutorClient(Protocol):
    """What the executor needs from the command client."""

    def put_log(self, command_id: str, offset: int, text: str) -> None: ...

    def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None: ...


class Executor:
    """Runs host commands for one agent (one at a time)."""

    def __init__(
        self,
        config: AgentConfig,
        client: ExecutorClient,
        *,
        s3_client_factory: Callable[[], Any] | None = None,
        log_flush_interval: float = 1.0,
        kill_grace: float = 5.0,
    ) -> None:
        self.config = config
        self.client = client
        self.root = config.root_dir
        self.s3_client_factory = s3_client_factory or self._default_s3_client
        self.log_flush_interval = log_flush_interval
        self._uploaders: list[LogUploader] = []
        self.kill_grace = kill_grace
        self._appspecs: dict[Path, tuple[tuple[int, int, int], AppSpec]] = {}

    # -- public ------------------------------------------------------------------------------

    def is_noop(self, command_name: str, spec: DeploymentSpec) -> bool:
        """The acknowledgement's IsCommandNoop; raises when the appspec cannot be read.

        DownloadBundle and Install are never no-ops; a hook event is one when there is no
        revision to take scripts from or its appspec has none for the event. Unknown commands
        are acknowledged as no-ops (and then fail), as the stock agent does.
        """
        if command_name in BUILTIN_COMMANDS:
            return False
        if command_name not in HOOK_COMMANDS:
            return True
        selected = self._hook_revision(command_name, spec)
        if selected is None:
            return True
        appspec = self._appspec(selected, spec)
        return not appspec.hooks.get(command_name)

    def execute(
        self,
        command_name: str,
        spec: DeploymentSpec,
        *,
        host_command_id: str,
        on_hook_start: Callable[[int], None] | None = None,
    ) -> Outcome:
        """Run one command; never raises for a command failure (that is the Outcome).

        ``on_hook_start`` is told the process id of each script as it starts.
        """
        try:
            if command_name == "DownloadBundle":
                return self._download_bundle(spec)
            if command_name == "Install":
                return self._install(spec)
            if command_name in HOOK_COMMANDS:
                return self._hook(command_name, spec, host_command_id, on_hook_start)
            return failure(f"Unsupported command type: {command_name}.")
        except OpenDeployError as exc:
            log.error("%s failed: %s", command_name, exc)
            return failure(str(exc))
        except OSError as exc:
            log.error("%s failed: %s", command_name, exc)
            return failure(f"{command_name} failed: {exc}")
        except Exception as exc:
            log.exception("%s failed unexpectedly", command_name)
            return failure(f"{command_name} failed: {type(exc).__name__}: {exc}")

    def drain_logs(self, timeout: float | None = None) -> None:
        """Wait until every finished hook's log has reached the server (or ``timeout``)."""
        for uploader in self._uploaders:
            uploader.wait(timeout)

    def abort(self) -> None:
        """Kill the process group of every running hook (second shutdown signal)."""
        for group in _hook_process_groups():
            log.warning("killing hook process group %d", group)
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue

    # -- DownloadBundle ----------------------------------------------------------------------

    def _download_bundle(self, spec: DeploymentSpec) -> Outcome:
        paths = layout.deployment_paths(self.root, spec.group_id, spec.deployment_id)
        pruned = layout.prune_revisions(
            self.root, spec.group_id, self.config.max_revisions, spec.deployment_id
        )
        for path in pruned.removed:
            log.info("removed old revision %s (max_revisions %d)", path, self.config.max_revisions)
        for path, why in pruned.failed:
            log.warning("could not remove old revision %s: %s", path, why)
        paths.directory.mkdir(parents=True, exist_ok=True)
        if paths.archive.exists() or paths.archive.is_symlink():
            _remove(paths.archive)
        identity = _revision_identity(spec)
        reused = self._reuse_archive(spec, identity, paths)
        if reused is not None:
            log.info("revision already on this host in %s: reusing it, nothing downloaded", reused)
        elif spec.bundle is not None:
            bundle = spec.bundle
            bundle_type = self._check_bundle_type(bundle.bundle_type)
            log.info("fetching bundle %s (%s bytes) from the server", bundle.sha256, bundle.size)
            self.client.download_bundle(
                bundle.path, paths.bundle, sha256=bundle.sha256, size=bundle.size
            )
            extract(paths.bundle, bundle_type, paths.archive)
        elif spec.s3 is not None:
            s3 = spec.s3
            bundle_type = self._check_bundle_type(s3.bundle_type)
            from opendeploy.bundles.fetch import fetch_s3

            log.info("fetching s3://%s/%s", s3.bucket, s3.key)
            fetch_s3(
                self.s3_client_factory(),
                s3.bucket,
                s3.key,
                version=s3.version,
                etag=s3.etag,
                dest=paths.bundle,
            )
            extract(paths.bundle, bundle_type, paths.archive)
        elif spec.github is not None:
            github = spec.github
            from opendeploy.bundles.fetch import fetch_git

            repository = f"{github.account}/{github.repository}"
            log.info("fetching commit %s of %s", github.commit_id, repository)
            try:
                fetch_git(self.config.git_base_url, repository, github.commit_id, paths.archive)
            except ValueError as exc:
                raise SpecError(str(exc)) from None
        else:
            kind = spec.revision_type or "none"
            return failure(f"DownloadBundle: unsupported revision type {kind!r}")
        if identity is not None:
            # Not fsynced: a marker lost in a crash of the machine costs one download later.
            marker = paths.directory / REVISION_MARKER
            layout.write_atomically(marker, identity.encode(), durable=False)
        layout.write_most_recent_install(self.root, spec.group_id, paths.directory)
        return SUCCESS

    def _reuse_archive(
        self, spec: DeploymentSpec, identity: str | None, paths: layout.DeploymentPaths
    ) -> Path | None:
        """Copy the unpacked revision from an earlier deployment of the group on this host.

        Rollbacks and redeployments of a revision still on disk then download nothing. Only
        revisions with a content identity qualify (a bundle's sha256, a git commit).
        """
        if identity is None:
            return None
        for candidate in sorted(paths.group_dir.iterdir(), key=_mtime, reverse=True):
            if candidate == paths.directory or candidate.is_symlink():
                continue
            marker = candidate / REVISION_MARKER
            archive = candidate / layout.ARCHIVE_DIR
            try:
                if marker.read_text() != identity or not archive.is_dir():
                    continue
            except OSError:
                continue
            partial = paths.archive.with_name(paths.archive.name + ".copying")
            if partial.exists():
                _remove(partial)
            shutil.copytree(archive, partial, symlinks=True)
            partial.rename(paths.archive)
            return candidate
        return None

    @staticmethod
    def _check_bundle_type(bundle_type: str) -> BundleType:
        if bundle_type == "tar":
            return "tar"
        if bundle_type == "tgz":
            return "tgz"
        if bundle_type == "zip":
            return "zip"
        raise SpecError(
            f"bundle type {bundle_type!r} cannot be deployed to a server; use tar, tgz or zip"
        )

    def _default_s3_client(self) -> Any:
        from opendeploy.bundles.store import s3_client

        s3 = self.config.s3
        if s3 is None:
            return s3_client(None, region_name=self.config.region)
        arguments: dict[str, Any] = {"region_name": s3.region or self.config.region}
        if s3.access_key_id is not None:
            arguments["aws_access_key_id"] = s3.access_key_id
            arguments["aws_secret_access_key"] = s3.secret_access_key
        return s3_client(s3.endpoint_url, **arguments)

    # -- Install -----------------------------------------------------------------------------

    def _install(self, spec: DeploymentSpec) -> Outcome:
        paths = layout.deployment_paths(self.root, spec.group_id, spec.deployment_id)
        appspec = self._appspec(paths.directory, spec)
        result = install(
            appspec,
            root=self.root,
            group_id=spec.group_id,
            deployment_id=spec.deployment_id,
            file_exists_behavior=spec.file_exists_behavior,
            destination_root=self.config.destination_root,
        )
        log.info(
            "installed %d paths (%d overwritten, %d retained, %d old ones removed)",
            len(result.created),
            len(result.overwritten),
            len(result.retained),
            len(result.removed),
        )
        return SUCCESS

    # -- hooks -------------------------------------------------------------------------------

    def _hook_revision(self, event: str, spec: DeploymentSpec) -> Path | None:
        """The deployment directory whose scripts run for ``event``; None: nothing to run."""
        rollback = spec.creator == _ROLLBACK and spec.deployment_type == "BLUE_GREEN"
        if rollback and event in _BLOCK_TRAFFIC:
            selected = layout.read_most_recent_install(self.root, spec.group_id)
        elif event in LAST_REVISION_EVENTS or (rollback and event in _ALLOW_TRAFFIC):
            selected = layout.read_last_successful_install(self.root, spec.group_id)
        else:
            return layout.deployment_paths(self.root, spec.group_id, spec.deployment_id).directory
        if selected is None:
            return None
        if not (selected / layout.ARCHIVE_DIR).is_dir():
            log.warning(
                "the previous revision %s is no longer on disk; %s has nothing to run",
                selected,
                event,
            )
            return None
        return selected

    def _appspec(self, deployment_dir: Path, spec: DeploymentSpec) -> AppSpec:
        """The revision's parsed appspec, parsed once per file version.

        Every event of a deployment asks for it twice (IsCommandNoop, then the run); the file
        is identified by inode, size and modification time, so an edit is read again.
        """
        archive = deployment_dir / layout.ARCHIVE_DIR
        if not archive.is_dir():
            raise SpecError(
                f"the revision is not unpacked: {archive} does not exist (DownloadBundle has"
                " not run for this deployment on this host)"
            )
        path = find_appspec(archive, spec.appspec_filename)
        info = path.stat()
        version = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._appspecs.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        appspec = read_appspec(archive, spec.appspec_filename)
        if len(self._appspecs) >= _APPSPEC_CACHE_SIZE:
            self._appspecs.pop(next(iter(self._appspecs)))
        self._appspecs[path] = (version, appspec)
        return appspec

    def _hook(
        self,
        event: str,
        spec: DeploymentSpec,
        host_command_id: str,
        on_hook_start: Callable[[int], None] | None = None,
    ) -> Outcome:
        selected = self._hook_revision(event, spec)
        if selected is None:
            log.info("%s: no previous revision, nothing to run", event)
            return SUCCESS
        appspec = self._appspec(selected, spec)
        hooks = appspec.hooks.get(event, ())
        if not hooks:
            log.info("%s: the appspec has no scripts for it", event)
            return SUCCESS
        paths = layout.deployment_paths(self.root, spec.group_id, spec.deployment_id)
        paths.logs.mkdir(parents=True, exist_ok=True)
        start = paths.script_log.stat().st_size if paths.script_log.exists() else 0
        uploader = LogUploader(
            self.client, host_command_id, paths.script_log, start, self.log_flush_interval
        )
        uploader.start()
        try:
            with ScriptLog(paths.script_log) as script_log:
                outcome = run_hooks(
                    hooks,
                    archive_dir=selected / layout.ARCHIVE_DIR,
                    env=self.environment(event, spec),
                    log=script_log,
                    event=event,
                    kill_grace=self.kill_grace,
                    on_spawn=on_hook_start,
                )
        finally:
            uploader.close()
            self._uploaders = [u for u in self._uploaders if u.sending] + [uploader]
        if outcome.succeeded:
            log.info("%s: %d script(s) succeeded in %.1f s", event, len(hooks), outcome.duration)
            return SUCCESS
        log.warning("%s failed: %s", event, outcome.message)
        return Outcome(False, outcome.diagnostics())

    def environment(self, event: str, spec: DeploymentSpec) -> dict[str, str]:
        """The whole environment of ``event``'s scripts."""
        env = {
            **self.config.hook_environment,
            "PATH": HOOK_PATH,
            "LIFECYCLE_EVENT": event,
            "DEPLOYMENT_ID": spec.deployment_id,
            "APPLICATION_NAME": spec.application_name,
            "DEPLOYMENT_GROUP_NAME": spec.group_name,
            "DEPLOYMENT_GROUP_ID": spec.group_id,
        }
        if spec.s3 is not None:
            env["BUNDLE_BUCKET"] = spec.s3.bucket
            env["BUNDLE_KEY"] = spec.s3.key
            if spec.s3.version:
                env["BUNDLE_VERSION"] = spec.s3.version
            if spec.s3.etag:
                env["BUNDLE_ETAG"] = spec.s3.etag
        elif spec.github is not None:
            env["BUNDLE_COMMIT"] = spec.github.commit_id
        return env


def _revision_identity(spec: DeploymentSpec) -> str | None:
    """What makes two revisions the same content, when the spec tells."""
    if spec.bundle is not None:
        return f"sha256:{spec.bundle.sha256}"
    if spec.github is not None:
        return f"git:{spec.github.account}/{spec.github.repository}@{spec.github.commit_id}"
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- the full log ----------------------------------------------------------------------------


class LogUploader:
    """Streams what is appended to a scripts.log after ``start`` to PutHostCommandLog.

    Offsets are characters of the command's log (the server's unit). What could not be sent is
    re-read from the file at the next flush (the server overwrites from the offset it is given,
    so a retried chunk is never duplicated). A server that refuses the log (a 4xx, e.g. one
    without the OpenDeploy extension) ends the streaming for this command; the file keeps it all.
    """

    def __init__(
        self,
        client: ExecutorClient,
        command_id: str,
        path: Path,
        start: int,
        interval: float,
    ) -> None:
        self.client = client
        self.command_id = command_id
        self.path = path
        self.position = start
        self.offset = 0
        self.interval = interval
        self.disabled = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-upload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
        self.flush(final=True)

    def close(self) -> None:
        """Stop streaming: the same thread sends the rest, in the background.

        The command's completion does not wait for its log: the full log is on disk, and the
        last chunk reaches the server moments later.
        """
        self._stop.set()

    @property
    def sending(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the final chunk is sent (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, *, final: bool = False) -> None:
        with self._lock:
            while not self.disabled:
                data = self._read()
                if not data:
                    return
                size = len(data) if final and len(data) < _LOG_CHUNK else _utf8_prefix(data)
                if size == 0:
                    return
                text = codecs.decode(data[:size], "utf-8", "replace")
                try:
                    self.client.put_log(self.command_id, self.offset, text)
                except Exception as exc:
                    retryable = getattr(exc, "retryable", True)
                    if not retryable:
                        self.disabled = True
                        log.warning("full log upload stopped for this command: %s", exc)
                    else:
                        log.warning("full log upload failed (will retry): %s", exc)
                    return
                self.position += size
                self.offset += len(text)

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.position)
                return handle.read(_LOG_CHUNK)
        except FileNotFoundError:
            return b""


def _utf8_prefix(data: bytes) -> int:
    """The length of ``data`` without a UTF-8 sequence cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the character's start
        if byte >= 0xF0:
            needed = 4
        elif byte >= 0xE0:
            needed = 3
        elif byte >= 0xC0:
            needed = 2
        else:
            needed = 1
        return len(data) if back >= needed else len(data) - back
    return len(data)


# -- helpers ---------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _hook_process_groups() -> list[int]:
    """Process groups led by this process's children that lead their own group (hooks)."""
    me = os.getpid()
    groups = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[1]) == me and int(fields[2]) == int(entry):
            groups.append(int(entry))
    return groups
