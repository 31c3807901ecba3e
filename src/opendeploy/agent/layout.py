"""The agent's deployment root, laid out as the stock CodeDeploy agent lays it out.

::

    <root>/<group_id>/<deployment_id>/bundle.tar            the downloaded bundle, whatever its type
    <root>/<group_id>/<deployment_id>/deployment-archive/    the unpacked revision
    <root>/<group_id>/<deployment_id>/logs/scripts.log       timestamped hook output (appended)
    <root>/deployment-instructions/<group_id>_last_successful_install
    <root>/deployment-instructions/<group_id>_most_recent_install
    <root>/deployment-instructions/<group_id>-install.json
    <root>/deployment-instructions/<group_id>-cleanup
    <root>/ongoing-deployment/<deployment_id>

Keeping the same names lets this agent replace a stock agent in place and honour its history
(which revision's ApplicationStop runs next, which files the next Install deletes).

Group and deployment ids come from the server and become directory names, so they are checked
to be one plain path component; the stock agent joins them into paths and shell commands
unchecked.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "DEFAULT_MAX_REVISIONS",
    "DeploymentPaths",
    "LayoutError",
    "PruneResult",
    "check_deployment_id",
    "check_group_id",
    "cleanup_file",
    "deployment_paths",
    "install_instructions_file",
    "instructions_dir",
    "last_successful_install_file",
    "most_recent_install_file",
    "ongoing_deployment_dir",
    "ongoing_deployment_file",
    "prune_revisions",
    "read_last_successful_install",
    "read_most_recent_install",
    "write_atomically",
    "write_last_successful_install",
    "write_most_recent_install",
]

DEFAULT_MAX_REVISIONS: Final = 5

INSTRUCTIONS_DIR: Final = "deployment-instructions"
ONGOING_DIR: Final = "ongoing-deployment"
DEPLOYMENT_LOGS_DIR: Final = "deployment-logs"
ARCHIVE_DIR: Final = "deployment-archive"
BUNDLE_FILE: Final = "bundle.tar"

_RESERVED: Final = frozenset({INSTRUCTIONS_DIR, ONGOING_DIR, DEPLOYMENT_LOGS_DIR})
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LayoutError(OpenDeployError):
    """An id that cannot be a directory name, or a bad retention setting."""


@dataclass(frozen=True, slots=True)
class DeploymentPaths:
    """Where one deployment of one group lives on disk."""

    root: Path
    group_id: str
    deployment_id: str

    @property
    def group_dir(self) -> Path:
        return self.root / self.group_id

    @property
    def directory(self) -> Path:
        """``<root>/<group_id>/<deployment_id>``: what last-successful-install files point at."""
        return self.root / self.group_id / self.deployment_id

    @property
    def bundle(self) -> Path:
        return self.directory / BUNDLE_FILE

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_DIR

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def script_log(self) -> Path:
        return self.logs / "scripts.log"


def check_group_id(group_id: str) -> str:
    """Return ``group_id`` if it is a safe directory name, else raise ``LayoutError``.

    The names of the root's own directories (``deployment-instructions`` ...) are refused too, so
    a group can never overwrite the agent's bookkeeping.
    """
    _check_component(group_id, "deployment group id")
    if group_id in _RESERVED:
        raise LayoutError(f"deployment group id {group_id!r} is reserved by the agent's layout")
    return group_id


def check_deployment_id(deployment_id: str) -> str:
    """Return ``deployment_id`` if it is a safe directory name, else raise ``LayoutError``."""
    return _check_component(deployment_id, "deployment id")


def _check_component(value: str, what: str) -> str:
    if not isinstance(value, str) or not _COMPONENT.fullmatch(value) or value in (".", ".."):
        raise LayoutError(
            f"{what} {value!r} cannot be used as a directory name: it must be 1 to 128 letters,"
            " digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def deployment_paths(root: Path, group_id: str, deployment_id: str) -> DeploymentPaths:
    """The paths of one deployment, after checking both ids."""
    return DeploymentPaths(root, check_group_id(group_id), check_deployment_id(deployment_id))


def instructions_dir(root: Path) -> Path:
    return root / INSTRUCTIONS_DIR


def cleanup_file(root: Path, group_id: str) -> Path:
    """One path per line that the group's last Install created (read by the next Install)."""
    return instructions_dir(root) / f"{check_group_id(group_id)}-cleanup"


def install_instructions_file(root: Path, group_id: str) -> Path:
    return instructions_dir(root) / f"{check_group_id(group_id)}-install.json"


def last_successful_install_file(root: Path, group_id: str) -> Path:
    return instructions_dir(root) / f"{check_group_id(group_id)}_last_successful_install"


def most_recent_install_file(root: Path, group_id: str) -> Path:
    return instructions_dir(root) / f"{check_group_id(group_id)}_most_recent_install"


def ongoing_deployment_dir(root: Path) -> Path:
    return root / ONGOING_DIR


def ongoing_deployment_file(root: Path, deployment_id: str) -> Path:
    """Holds the host command id of the in-flight event, for crash recovery."""
    return ongoing_deployment_dir(root) / check_deployment_id(deployment_id)


def read_last_successful_install(root: Path, group_id: str) -> Path | None:
    """The deployment directory whose Install last succeeded, or None if there is none.

    The stored value is an absolute path with no newline (the stock agent's format); it is
    returned as written, whether or not the directory still exists.
    """
    return _read_pointer(last_successful_install_file(root, group_id))


def write_last_successful_install(root: Path, group_id: str, deployment_dir: Path) -> None:
    _write_pointer(last_successful_install_file(root, group_id), deployment_dir)


def read_most_recent_install(root: Path, group_id: str) -> Path | None:
    """The deployment directory of the group's latest DownloadBundle, or None."""
    return _read_pointer(most_recent_install_file(root, group_id))


def write_most_recent_install(root: Path, group_id: str, deployment_dir: Path) -> None:
    _write_pointer(most_recent_install_file(root, group_id), deployment_dir)


def _read_pointer(path: Path) -> Path | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text or not text.startswith("/"):
        return None
    return Path(text)


def _write_pointer(path: Path, target: Path) -> None:
    write_atomically(path, str(target.absolute()).encode())


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never half.

    Creates the parent directory when missing. ``durable``: the content reaches the disk
    before the rename (an fsync), so it also survives a crash of the machine; without it, it
    survives a crash of the process only (the page cache outlives the process).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune_revisions`` removed, and what it tried and failed to remove (with why)."""

    removed: tuple[Path, ...] = ()
    failed: tuple[tuple[Path, str], ...] = ()


def prune_revisions(root: Path, group_id: str, keep: int, current: str) -> PruneResult:
    """Delete the group's oldest deployment directories so that ``keep`` remain.

    The count includes ``current`` (the deployment being downloaded), which is never deleted,
    and the last successful one is never deleted either (its ApplicationStop runs next), as in
    the stock agent; age is the directory's mtime. Only real directories count: symlinks and
    files in the group directory are left alone and never followed. Retention must not fail a
    deployment, so a directory that cannot be removed is reported in ``failed`` instead of
    raising.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise LayoutError(f"max_revisions must be a whole number of at least 1, not {keep!r}")
    check_deployment_id(current)
    group_dir = root / check_group_id(group_id)
    try:
        entries = [entry for entry in os.scandir(group_dir) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return PruneResult()
    others = [entry for entry in entries if entry.name != current]
    extra = len(others) - keep + 1
    if extra <= 0:
        return PruneResult()
    last = read_last_successful_install(root, group_id)
    protected = last.name if last is not None and last.parent == group_dir else None
    candidates = sorted(
        (entry for entry in others if entry.name != protected),
        key=lambda entry: (entry.stat(follow_symlinks=False).st_mtime, entry.name),
    )
    removed: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for entry in candidates[:extra]:
        path = Path(entry.path)
        try:
            shutil.rmtree(path)
        except OSError as exc:
            failed.append((path, exc.strerror or str(exc)))
        else:
            removed.append(path)
    return PruneResult(tuple(removed), tuple(failed))
