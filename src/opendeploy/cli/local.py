"""``opendeploy local``: run a bundle's appspec on this machine, with no server.

Like CodeDeploy's ``codedeploy-local``, and through the agent's own code: the deployment root
is laid out as the agent lays it out, Install and the hooks are run by ``agent.executor``
(``agent.install``, ``agent.hooks``), so ApplicationStop runs the previous local run's scripts
and Install removes what the previous run installed, exactly as on a host.

DownloadBundle and Install are added to ``--events`` where they belong when left out; events
that are not CodeDeploy's are allowed (their scripts come from the bundle's appspec).
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.text import Text

from opendeploy.cli.render import (
    EXIT_CODES,
    EXIT_FAILED,
    OUTPUT,
    STATUS_STYLES,
    SYMBOLS,
    emit_json,
    format_duration,
    make_console,
)

__all__ = ["LocalRun", "local", "resolve_events"]

BUILTIN_EVENTS: Final = ("DownloadBundle", "Install")
DEFAULT_GROUP_ID: Final = "default-local-deployment-group"
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,99}")
_ID_ALPHABET: Final = string.ascii_uppercase + string.digits


def _default_root() -> Path:
    return Path.home() / ".opendeploy" / "local"


def resolve_events(requested: Sequence[str]) -> tuple[list[str], frozenset[str]]:
    """The events to run, in order, and which of them are custom.

    No events: the whole in-place lifecycle. Otherwise DownloadBundle is put before the first
    event that needs the new revision and Install before the first one that needs it
    installed, unless given; only ApplicationStop and the block-traffic events (which run the
    previous revision's scripts) may come before DownloadBundle, and only those and
    BeforeInstall before Install (codedeploy-local's rules).
    """
    from opendeploy.core.appspec import AGENT_EVENTS, SERVER_HOOK_EVENTS
    from opendeploy.core.lifecycle import IN_PLACE_EVENTS, LAST_REVISION_EVENTS

    if not requested:
        return list(IN_PLACE_EVENTS), frozenset()
    events: list[str] = []
    for name in requested:
        if not _EVENT_NAME.fullmatch(name):
            raise click.BadParameter(
                f"{name!r} is not an event name (letters, digits, - and _)", param_hint="--events"
            )
        if name in AGENT_EVENTS and name not in BUILTIN_EVENTS:
            raise click.BadParameter(
                f"{name} is a load-balancer step of blue/green deployments; it cannot run locally",
                param_hint="--events",
            )
        if name in events:
            raise click.BadParameter(f"{name} is listed twice", param_hint="--events")
        events.append(name)
    custom = frozenset(e for e in events if e not in SERVER_HOOK_EVENTS and e not in BUILTIN_EVENTS)
    before_download = frozenset(LAST_REVISION_EVENTS)
    before_install = before_download | {"DownloadBundle", "BeforeInstall"}
    if "DownloadBundle" not in events:
        index = next((i for i, e in enumerate(events) if e not in before_download), len(events))
        events.insert(index, "DownloadBundle")
    if "Install" not in events:
        start = events.index("DownloadBundle") + 1
        index = next(
            (i for i in range(start, len(events)) if events[i] not in before_install), len(events)
        )
        events.insert(index, "Install")
    for limit, allowed in (("DownloadBundle", before_download), ("Install", before_install)):
        early = [e for e in events[: events.index(limit)] if e not in allowed]
        if early:
            raise click.BadParameter(
                f"{', '.join(early)} cannot run before {limit}: only "
                f"{', '.join(sorted(allowed))} may (the others need the new revision"
                + (" installed)" if limit == "Install" else ")"),
                param_hint="--events",
            )
    return events, custom


@dataclass
class EventResult:
    name: str
    status: str
    seconds: float
    scripts: int
    note: str = ""
    diagnostics: dict[str, Any] | None = None
    output: str = ""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "durationSeconds": round(self.seconds, 3),
            "scripts": self.scripts,
        }
        if self.note:
            document["note"] = self.note
        if self.diagnostics:
            document["diagnostics"] = self.diagnostics
        return document


def _new_deployment_id() -> str:
    return "d-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9)) + "-local"


class _NoServer:
    """The executor's client: a local run has no server to stream logs or bundles from."""

    def put_log(self, command_id: str, offset: int, text: str) -> None:
        return None

    def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None:
        raise RuntimeError("a local run has no server to download bundles from")


class LocalRun:
    """One local deployment: the bundle, the events, and the agent executor that runs them."""

    def __init__(
        self,
        bundle: Path,
        *,
        bundle_type: str,
        events: list[str],
        custom_events: frozenset[str],
        application_name: str,
        group_name: str,
        group_id: str,
        root: Path,
        destination_root: Path,
        file_exists_behavior: str | None,
        appspec_filename: str,
        hook_environment: dict[str, str],
    ) -> None:
        from opendeploy.agent import layout
        from opendeploy.agent.config import AgentConfig
        from opendeploy.agent.executor import DeploymentSpec

        self.bundle = bundle
        self.bundle_type = bundle_type
        self.events = events
        self.custom_events = custom_events
        self.root = root
        self.group_id = layout.check_group_id(group_id)
        self.deployment_id = _new_deployment_id()
        self.paths = layout.deployment_paths(root, self.group_id, self.deployment_id)
        behavior: Any = file_exists_behavior
        self.spec = DeploymentSpec(
            deployment_id=self.deployment_id,
            group_id=self.group_id,
            group_name=group_name,
            application_name=application_name,
            file_exists_behavior=behavior,
            appspec_filename=appspec_filename,
            revision_type="Local Directory" if bundle_type == "directory" else "Local File",
        )
        config = AgentConfig(
            endpoint="local://",
            region="local",
            instance_name="local",
            host_identifier="local",
            access_key_id="local",
            secret_access_key="",
            root_dir=root,
            spec_signer_certificate="",
            destination_root=destination_root,
            hook_environment=hook_environment,
        )
        self.executor = _executor(config, custom_events)

    # -- events ------------------------------------------------------------------------------

    def run_event(self, name: str) -> EventResult:
        start = self._log_size()
        began = time.monotonic()
        if name == "DownloadBundle":
            outcome = self._download()
            scripts = 0
            note = "copied" if self.bundle_type == "directory" else f"unpacked ({self.bundle_type})"
        else:
            scripts, note = self._scripts(name)
            outcome = self.executor.execute(
                name, self.spec, host_command_id=f"{self.deployment_id}-{name}"
            )
        seconds = time.monotonic() - began
        output = self._log_since(start)
        if not outcome.succeeded:
            return EventResult(
                name,
                "Failed",
                seconds,
                scripts,
                diagnostics=dict(outcome.diagnostics),
                output=output,
            )
        status = "Succeeded" if name in BUILTIN_EVENTS or scripts else "Skipped"
        return EventResult(name, status, seconds, scripts, note=note, output=output)

    def _download(self) -> Any:
        from opendeploy.agent import layout
        from opendeploy.agent.executor import SUCCESS, failure
        from opendeploy.agent.unpack import BundleError, extract
        from opendeploy.core.errors import OpenDeployError

        try:
            layout.prune_revisions(self.root, self.group_id, 5, self.deployment_id)
            self.paths.directory.mkdir(parents=True, exist_ok=True)
            if self.bundle_type == "directory":
                shutil.copytree(self.bundle, self.paths.archive, symlinks=True)
            else:
                shutil.copyfile(self.bundle, self.paths.bundle)
                kind: Any = self.bundle_type
                extract(self.paths.bundle, kind, self.paths.archive)
            layout.write_most_recent_install(self.root, self.group_id, self.paths.directory)
        except (BundleError, OpenDeployError) as error:
            return failure(str(error))
        except OSError as error:
            return failure(f"DownloadBundle failed: {error}")
        return SUCCESS

    def _scripts(self, name: str) -> tuple[int, str]:
        """How many scripts the event runs, and why none when none."""
        from opendeploy.agent import layout
        from opendeploy.agent.appspec_file import read_appspec
        from opendeploy.core.errors import OpenDeployError
        from opendeploy.core.lifecycle import LAST_REVISION_EVENTS

        if name == "Install":
            return 0, f"files installed under {self.executor.config.destination_root}"
        directory = self.paths.directory
        if name in LAST_REVISION_EVENTS:
            previous = layout.read_last_successful_install(self.root, self.group_id)
            if previous is None or not (previous / layout.ARCHIVE_DIR).is_dir():
                return 0, "nothing to run: no revision was installed here before"
            directory = previous
        archive = directory / layout.ARCHIVE_DIR
        try:
            appspec = read_appspec(
                archive,
                self.spec.appspec_filename,
                custom_events=self.custom_events | _previous_events(archive, self.paths),
            )
        except OpenDeployError:
            return 0, ""  # the executor reports it
        count = len(appspec.hooks.get(name, ()))
        if count:
            return count, "previous revision's scripts" if directory != self.paths.directory else ""
        return 0, "the appspec has no scripts for it"

    def _log_size(self) -> int:
        try:
            return self.paths.script_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.paths.script_log, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def _executor(config: Any, custom_events: frozenset[str]) -> Any:
    """The agent's Executor, also reading custom event names in the appspec and running them."""
    from opendeploy.agent.appspec_file import read_appspec
    from opendeploy.agent.executor import Executor, Outcome, failure
    from opendeploy.agent.layout import ARCHIVE_DIR, deployment_paths
    from opendeploy.core.appspec import AppSpec
    from opendeploy.core.errors import OpenDeployError

    class LocalExecutor(Executor):
        def _appspec(self, deployment_dir: Path, spec: Any) -> AppSpec:
            archive = deployment_dir / ARCHIVE_DIR
            if not archive.is_dir():
                return super()._appspec(deployment_dir, spec)
            current = deployment_paths(self.root, spec.group_id, spec.deployment_id)
            return read_appspec(
                archive,
                spec.appspec_filename,
                custom_events=custom_events | _previous_events(archive, current),
            )

        def execute(self, command_name: str, spec: Any, *, host_command_id: str) -> Outcome:
            if command_name not in custom_events:
                return super().execute(command_name, spec, host_command_id=host_command_id)
            try:
                return self._hook(command_name, spec, host_command_id)
            except OpenDeployError as error:
                return failure(str(error))
            except OSError as error:
                return failure(f"{command_name} failed: {error}")

    return LocalExecutor(config, _NoServer())


def _previous_events(archive: Path, current: Any) -> frozenset[str]:
    """The event names of an earlier local run's appspec (it may have had custom events):
    its ApplicationStop must still run when this run names other events."""
    if archive == current.archive:
        return frozenset()
    import yaml

    from opendeploy.agent.appspec_file import find_appspec
    from opendeploy.core.errors import OpenDeployError

    try:
        data = yaml.safe_load(find_appspec(archive).read_text(encoding="utf-8"))
    except (OpenDeployError, OSError, ValueError, yaml.YAMLError):
        return frozenset()
    hooks = data.get("hooks") if isinstance(data, dict) else None
    return frozenset(str(key) for key in hooks) if isinstance(hooks, dict) else frozenset()


def _bundle_type(bundle: Path, requested: str | None) -> str:
    from opendeploy.agent.unpack import BundleError, detect_bundle_type

    if bundle.is_dir():
        if requested not in (None, "directory"):
            raise click.BadParameter(
                f"{bundle} is a directory, not a {requested} archive", param_hint="--type"
            )
        return "directory"
    if requested == "directory":
        raise click.BadParameter(f"{bundle} is a file, not a directory", param_hint="--type")
    try:
        detected = detect_bundle_type(bundle)
    except BundleError as error:
        raise click.BadParameter(str(error), param_hint="--bundle") from None
    if requested is not None and (requested == "zip") != (detected == "zip"):
        raise click.BadParameter(
            f"{bundle} is a {detected} archive, not {requested}", param_hint="--type"
        )
    return requested or detected


def _check_appspec(bundle: Path, name: str, custom: frozenset[str]) -> None:
    from opendeploy.agent.appspec_file import read_appspec
    from opendeploy.core.errors import AppSpecError

    try:
        read_appspec(bundle, name, custom_events=custom)
    except AppSpecError as error:
        hint = ""
        if "unknown lifecycle event" in str(error):
            hint = " (to run a custom event, name it in --events)"
        raise click.ClickException(f"{bundle}: {error}{hint}") from None


def _hook_environment(values: tuple[str, ...]) -> dict[str, str]:
    from opendeploy.agent.config import ConfigError, validate_hook_environment

    pairs = {}
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint="--hook-env")
        pairs[key] = item
    try:
        return validate_hook_environment(pairs, file="--hook-env")
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--hook-env") from None


def _print_event(console: Console, result: EventResult, verbose: bool) -> None:
    style = STATUS_STYLES.get(result.status, "")
    line = Text(f"{SYMBOLS.get(result.status, '?')} {result.name:<18}", style=style)
    line.append(f"{format_duration(result.seconds):>7}  ", style="dim")
    if result.status == "Failed" and result.diagnostics:
        script = result.diagnostics.get("script_name") or ""
        message = str(result.diagnostics.get("message") or "").strip()
        line.append(f"{script}: {message}" if script else message, style="red")
    elif result.scripts:
        line.append(f"{result.scripts} script(s)")
        if result.note:
            line.append(f" ({result.note})", style="dim")
    elif result.note:
        line.append(result.note, style="dim")
    console.print(line)
    if result.output and (verbose or result.status == "Failed"):
        for text in result.output.rstrip("\n").splitlines():
            console.print(Text("    " + text, style="dim" if result.status != "Failed" else ""))


@click.command(epilog=EXIT_CODES, short_help="Run an appspec on this machine, no server.")
@click.option(
    "--bundle",
    "-l",
    "--bundle-location",
    "bundle",
    type=click.Path(exists=True, path_type=Path),
    default=Path("."),
    show_default=True,
    help="A bundle directory (appspec.yml at its root) or archive (tgz, tar, zip).",
)
@click.option(
    "--type",
    "-t",
    "bundle_type",
    type=click.Choice(["directory", "tgz", "tar", "zip"]),
    default=None,
    help="The bundle's type [default: detected].",
)
@click.option(
    "--events",
    "-e",
    "events",
    multiple=True,
    metavar="EVENT[,EVENT...]",
    help="Events to run, in order (comma-separated or repeated) [default: the whole in-place "
    "lifecycle]. DownloadBundle and Install are added when left out; names that are not "
    "CodeDeploy events run that appspec hook.",
)
@click.option(
    "--application-name",
    "-a",
    default=None,
    help="APPLICATION_NAME for the hooks [default: the bundle's name].",
)
@click.option(
    "--deployment-group-name",
    "-d",
    default="LocalFleet",
    show_default=True,
    help="DEPLOYMENT_GROUP_NAME for the hooks.",
)
@click.option(
    "--deployment-group-id",
    "-g",
    default=DEFAULT_GROUP_ID,
    show_default=True,
    help="The group's directory under --root; runs with the same id share history (the "
    "previous run's ApplicationStop, Install's cleanup).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The deployment root (revisions, logs) [default: ~/.opendeploy/local].",
)
@click.option(
    "--destination-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Prefix of every appspec destination (install into a scratch directory with it). "
    "Hooks are not told; pass --hook-env if they need to know.",
)
@click.option(
    "--file-exists-behavior",
    "-b",
    type=click.Choice(["DISALLOW", "OVERWRITE", "RETAIN"], case_sensitive=False),
    metavar="[DISALLOW|OVERWRITE|RETAIN]",
    default=None,
    help="What Install does with files it did not put there [default DISALLOW; the "
    "appspec's file_exists_behavior wins].",
)
@click.option(
    "--appspec-filename",
    "-A",
    default="appspec.yml",
    show_default=True,
    help="The appspec's name at the bundle root (appspec.yaml is tried too).",
)
@click.option(
    "--hook-env",
    "hook_env",
    multiple=True,
    metavar="NAME=VALUE",
    help="A variable every hook sees (repeat).",
)
@click.option("--verbose", "-v", is_flag=True, help="Show every event's script output.")
@OUTPUT
def local(
    bundle: Path,
    bundle_type: str | None,
    events: tuple[str, ...],
    application_name: str | None,
    deployment_group_name: str,
    deployment_group_id: str,
    root: Path | None,
    destination_root: Path,
    file_exists_behavior: str | None,
    appspec_filename: str,
    hook_env: tuple[str, ...],
    verbose: bool,
    output: str,
) -> None:
    """Run a bundle's appspec on this machine, with no server (like codedeploy-local).

    The agent's own code does the work: the bundle is copied (a directory) or safely
    unpacked (an archive), Install copies the files and applies permissions, and each hook
    runs with the environment a deployment gives it. Stops at the first failed event.

    \b
    Examples:
      opendeploy local --bundle ./build --destination-root /tmp/try
      opendeploy local --bundle app.tgz --events BeforeInstall,AfterInstall,RunTests
    """
    from opendeploy.agent.layout import LayoutError

    bundle = bundle.absolute()
    kind = _bundle_type(bundle, bundle_type)
    requested = [name.strip() for value in events for name in value.split(",") if name.strip()]
    ordered, custom = resolve_events(requested)
    if kind == "directory":
        _check_appspec(bundle, appspec_filename, custom)
    root = (root or _default_root()).absolute()
    destination_root = destination_root.absolute()
    _quiet_agent_logs(verbose and output != "json")
    try:
        run = LocalRun(
            bundle,
            bundle_type=kind,
            events=ordered,
            custom_events=custom,
            application_name=application_name or bundle.name.replace(".", "-"),
            group_name=deployment_group_name,
            group_id=deployment_group_id,
            root=root,
            destination_root=destination_root,
            file_exists_behavior=file_exists_behavior.upper() if file_exists_behavior else None,
            appspec_filename=appspec_filename,
            hook_environment=_hook_environment(hook_env),
        )
    except LayoutError as error:
        raise click.BadParameter(str(error), param_hint="--deployment-group-id") from None
    console = make_console()
    if output != "json":
        console.print(
            f"local deployment [bold]{run.deployment_id}[/bold] of {bundle} ({kind})"
            f" into {destination_root}"
        )
    results: list[EventResult] = []
    for name in ordered:
        result = run.run_event(name)
        results.append(result)
        if output != "json":
            _print_event(console, result, verbose)
        if result.status == "Failed":
            break
    failed = any(r.status == "Failed" for r in results)
    if output == "json":
        emit_json(
            {
                "deploymentId": run.deployment_id,
                "deploymentGroupId": run.group_id,
                "status": "Failed" if failed else "Succeeded",
                "root": str(root),
                "destinationRoot": str(destination_root),
                "scriptsLog": str(run.paths.script_log),
                "events": [r.to_json() for r in results],
                "notRun": ordered[len(results) :],
            }
        )
    else:
        if failed:
            skipped = ordered[len(results) :]
            if skipped:
                console.print(f"not run: {', '.join(skipped)}", style="dim")
            console.print("✗ the local deployment failed", style="bold red")
        else:
            console.print("✓ the local deployment succeeded", style="bold green")
        console.print(f"scripts log: {run.paths.script_log}", style="dim")
    raise SystemExit(EXIT_FAILED if failed else 0)


def _quiet_agent_logs(verbose: bool) -> None:
    """The executor logs as the agent does; here its words go only to -v's stderr."""
    logger = logging.getLogger("opendeploy.agent")
    logger.propagate = False
    logger.handlers[:] = []
    if verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("  agent: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
