"""The Install lifecycle event: copy the appspec's ``files`` into place and apply ``permissions``.

Semantics follow the stock agent (agent-protocol §2.4, codedeploy-spec §7.1):

* A directory ``source`` has its contents copied into ``destination``; a file ``source`` goes
  to ``destination/<basename>``; ``/`` is the whole bundle. Missing ancestors are created.
* Files the previous Install of the group created are deleted first (its cleanup list, newest
  first; directories only when empty), so files dropped from the revision disappear and files
  the agent did not create are never touched.
* A destination that already exists follows ``file_exists_behavior``: the appspec's value, else
  the deployment's, else DISALLOW. OVERWRITE replaces it (and records it, so the next
  deployment deletes it); RETAIN keeps it (unrecorded).
* ``permissions`` apply only to objects this Install creates.
* Every path created is appended to the new cleanup list before it is created, one line each,
  flushed as it goes; a torn last line is ignored when read, so a crash loses nothing.

Fixed here: every check (conflicts under DISALLOW, two sources for one destination, unknown
owners, missing ACL/SELinux tools) runs before anything is deleted, so a failed Install leaves
the previous revision installed (the stock agent deletes first and checks afterwards).
Replacing a file is atomic (copy to a temporary name, then rename), symbolic links are copied
as links and never followed, and modes are never applied through a link.

``destination_root`` prefixes every absolute destination and permissions object, so several
agents can share one machine in tests.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import posixpath
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from opendeploy.agent import layout
from opendeploy.core.appspec import AppSpec, FileExistsBehavior, Permission
from opendeploy.core.errors import OpenDeployError

__all__ = [
    "CleanupList",
    "InstallError",
    "InstallResult",
    "install",
    "read_cleanup_list",
]

_SEMANAGE_PREFIX: Final = "semanage\0"
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_LISTED: Final = 5


class InstallError(OpenDeployError):
    """The Install step failed; the message says which file or appspec entry, and why."""


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What an Install did. ``created`` is the new cleanup list, in creation order."""

    file_exists_behavior: FileExistsBehavior
    created: tuple[Path, ...] = ()
    overwritten: tuple[Path, ...] = ()
    retained: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()


def install(
    appspec: AppSpec,
    *,
    root: Path,
    group_id: str,
    deployment_id: str,
    file_exists_behavior: FileExistsBehavior | None = None,
    destination_root: Path | None = None,
) -> InstallResult:
    """Install the deployment's unpacked revision (``<root>/<group>/<id>/deployment-archive``).

    ``file_exists_behavior`` is the deployment's override; the appspec's own value wins over
    it. On success ``<group>-install.json``, ``<group>-cleanup`` and
    ``<group>_last_successful_install`` are written under ``<root>/deployment-instructions``.
    """
    paths = layout.deployment_paths(root, group_id, deployment_id)
    behavior: FileExistsBehavior = (
        appspec.file_exists_behavior or file_exists_behavior or "DISALLOW"
    )
    if not paths.archive.is_dir():
        raise InstallError(f"the revision is not unpacked: {paths.archive} does not exist")
    cleanup_path = layout.cleanup_file(root, group_id)
    previous = read_cleanup_list(cleanup_path)
    vanishing = _simulate_removal(reversed(previous.paths))
    prefix = os.path.abspath(destination_root) if destination_root is not None else None
    if prefix == "/":
        prefix = None
    plan = _Planner(os.path.realpath(paths.archive), behavior, prefix, vanishing).plan(appspec)

    layout.write_atomically(
        layout.install_instructions_file(root, group_id),
        json.dumps({"instructions": plan.instructions()}).encode(),
    )
    removed = _remove_previous(previous)
    if prefix is not None:
        os.makedirs(prefix, exist_ok=True)
    with open(cleanup_path, "w", encoding="utf-8") as cleanup:
        created = _Executor(cleanup).run(plan)
        cleanup.flush()
        os.fsync(cleanup.fileno())
    layout.write_last_successful_install(root, group_id, paths.directory)
    return InstallResult(
        file_exists_behavior=behavior,
        created=tuple(Path(path) for path in created),
        overwritten=tuple(Path(path) for path in plan.overwritten),
        retained=tuple(Path(path) for path in plan.retained),
        removed=tuple(Path(path) for path in removed),
    )


@dataclass(frozen=True, slots=True)
class CleanupList:
    """A parsed cleanup file: created paths and SELinux file-context rules, oldest first."""

    paths: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()


def read_cleanup_list(path: Path) -> CleanupList:
    """Parse a cleanup file (ours or the stock agent's); a torn last line is dropped."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return CleanupList()
    lines = text.split("\n")
    lines.pop()
    paths: list[str] = []
    contexts: list[str] = []
    for line in lines:
        if line.startswith(_SEMANAGE_PREFIX):
            contexts.append(line.removeprefix(_SEMANAGE_PREFIX).strip())
        elif line.strip():
            paths.append(posixpath.normpath(line.strip()))
    return CleanupList(tuple(paths), tuple(contexts))


def _simulate_removal(newest_first: Iterable[str]) -> set[str]:
    """The recorded paths that deleting the cleanup list will really remove.

    Files and links go; a directory goes only if everything in it goes, exactly as
    ``_remove_previous`` behaves, so the plan can be checked against the state after cleanup
    without deleting anything yet.
    """
    gone: set[str] = set()
    for path in newest_first:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                children = os.listdir(path)
            except OSError:
                continue
            if all(os.path.join(path, child) in gone for child in children):
                gone.add(path)
        else:
            gone.add(path)
    return gone


def _remove_previous(previous: CleanupList) -> list[str]:
    removed: list[str] = []
    for path in reversed(previous.paths):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        try:
            if stat.S_ISDIR(info.st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                continue
            raise InstallError(
                f"cannot remove {path}, installed by the previous deployment: {exc.strerror or exc}"
            ) from None
        removed.append(path)
    if previous.contexts and shutil.which("semanage"):
        for path in reversed(previous.contexts):
            _tool(["semanage", "fcontext", "-d", path], check=False)
    return removed


@dataclass(frozen=True, slots=True)
class _Copy:
    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class _Mkdir:
    directory: str


@dataclass(frozen=True, slots=True)
class _SetPermissions:
    path: str
    permission: Permission
    entry: str
    uid: int
    gid: int
    selinux: str | None


@dataclass
class _Plan:
    steps: list[_Copy | _Mkdir] = field(default_factory=list)
    permissions: list[_SetPermissions] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    retained: list[str] = field(default_factory=list)

    def instructions(self) -> list[dict[str, object]]:
        """The stock agent's ``-install.json`` instruction list."""
        result: list[dict[str, object]] = []
        for step in self.steps:
            if isinstance(step, _Copy):
                result.append(
                    {"type": "copy", "source": step.source, "destination": step.destination}
                )
            else:
                result.append({"type": "mkdir", "directory": step.directory})
        for item in self.permissions:
            permission = item.permission
            if permission.mode is not None:
                result.append({"type": "chmod", "mode": permission.mode, "file": item.path})
            if permission.acls:
                result.append({"type": "setfacl", "acl": list(permission.acls), "file": item.path})
            if permission.context is not None:
                context = permission.context
                result.append(
                    {
                        "type": "semanage",
                        "context": {
                            "user": context.user,
                            "role": None,
                            "type": context.type,
                            "range": context.range,
                        },
                        "file": item.path,
                    }
                )
            if permission.owner is not None or permission.group is not None:
                result.append(
                    {
                        "type": "chown",
                        "owner": permission.owner,
                        "group": permission.group,
                        "file": item.path,
                    }
                )
        return result


class _Planner:
    """Turns the appspec into steps, checking everything against the post-cleanup state."""

    def __init__(
        self, archive: str, behavior: FileExistsBehavior, prefix: str | None, vanishing: set[str]
    ) -> None:
        self.archive = archive
        self.behavior = behavior
        self.prefix = prefix
        self.vanishing = vanishing
        self.result = _Plan()
        self.copies: dict[str, str] = {}
        self.directories: dict[str, None] = {}
        self.conflicts: list[str] = []
        self.with_permissions: set[str] = set()

    def plan(self, appspec: AppSpec) -> _Plan:
        for index, mapping in enumerate(appspec.files):
            entry = f"files[{index}]"
            source = self.source(entry, mapping.source)
            destination = self.destination(mapping.destination)
            if os.path.isdir(source) and not os.path.islink(source):
                self.ancestors(entry, destination)
                self.directory_copy(entry, source, destination)
            else:
                target = os.path.join(destination, os.path.basename(source))
                self.ancestors(entry, target)
                self.file_copy(entry, source, target)
        if self.conflicts:
            raise InstallError(self.conflict_message())
        for index, permission in enumerate(appspec.permissions):
            self.permission(f"permissions[{index}]", permission)
        return self.result

    def conflict_message(self) -> str:
        first, rest = self.conflicts[0], self.conflicts[1:]
        more = ""
        if rest:
            listed = ", ".join(rest[:_MAX_LISTED])
            extra = len(rest) - _MAX_LISTED
            more = f" (and {len(rest)} more: {listed}{f', ...{extra} more' if extra > 0 else ''})"
        return (
            f"The deployment failed because a specified file already exists at this location:"
            f" {first}{more}. Nothing was changed: the previous revision is still installed."
            " Remove the file, or set file_exists_behavior to OVERWRITE or RETAIN in the appspec"
            " (or for the deployment)."
        )

    def source(self, entry: str, source: str) -> str:
        relative = posixpath.normpath(source.replace("\\", "/").lstrip("/"))
        if relative == ".." or relative.startswith("../"):
            raise InstallError(f"{entry}: source {source!r} is outside the bundle")
        path = self.archive if relative == "." else os.path.join(self.archive, relative)
        parent = os.path.realpath(os.path.dirname(path))
        if path != self.archive and not _inside(parent, self.archive):
            raise InstallError(f"{entry}: source {source!r} leads outside the bundle")
        if not os.path.lexists(path):
            raise InstallError(f"{entry}: source {source!r} does not exist in the bundle")
        return path

    def destination(self, destination: str) -> str:
        normal = posixpath.normpath("/" + destination.lstrip("/"))
        if self.prefix is None:
            return normal
        return self.prefix if normal == "/" else self.prefix + normal

    def exists(self, path: str) -> bool:
        return os.path.lexists(path) and path not in self.vanishing

    def is_directory(self, path: str) -> bool:
        """A directory that will still be there after cleanup (links to directories count)."""
        return os.path.isdir(path) and path not in self.vanishing

    def ancestors(self, entry: str, path: str) -> None:
        missing: list[str] = []
        parent = os.path.dirname(path)
        while parent not in ("/", self.prefix) and not self.exists(parent):
            if parent in self.directories:
                break
            missing.append(parent)
            parent = os.path.dirname(parent)
        blocked = parent in self.copies or self.exists(parent)
        if blocked and parent not in self.directories and not self.is_directory(parent):
            raise InstallError(
                f"{entry}: cannot create directory {missing[-1] if missing else path}:"
                f" {parent} is a file, not a directory"
            )
        for directory in reversed(missing):
            self.mkdir(directory)

    def mkdir(self, directory: str) -> None:
        if directory in self.copies:
            raise InstallError(
                "The deployment failed because the application specification file includes an"
                f" mkdir command more than once for the same destination path ({directory})"
                f" from ({self.copies[directory]}). Update the files section of the AppSpec"
                " file, and then try again."
            )
        if directory not in self.directories:
            self.directories[directory] = None
            self.result.steps.append(_Mkdir(directory))

    def copy(self, source: str, destination: str) -> None:
        if destination in self.copies:
            raise InstallError(
                "The deployment failed because the application specification file specifies two"
                f" source files named {source} and {self.copies[destination]} for the same"
                f" destination ({destination}). Remove one of the source file paths from the"
                " AppSpec file, and then try again."
            )
        if destination in self.directories:
            raise InstallError(
                "The deployment failed because the application specification file calls for"
                f" installing the file {source}, but a file with that name already exists at the"
                f" location ({destination}). Update your AppSpec file or directory structure,"
                " and then try again."
            )
        if "\n" in destination:
            raise InstallError(f"cannot install {source!r}: its name contains a line break")
        self.copies[destination] = source
        self.result.steps.append(_Copy(source, destination))

    def directory_copy(self, entry: str, source: str, destination: str) -> None:
        if not self.is_directory(destination) and destination not in self.directories:
            if self.exists(destination) or destination in self.copies:
                raise InstallError(
                    f"{entry}: cannot install the directory {source} at {destination}:"
                    " a file is in the way"
                )
            self.mkdir(destination)
        with os.scandir(source) as scan:
            children = sorted(scan, key=lambda child: child.name)
        for child in children:
            target = os.path.join(destination, child.name)
            if child.is_dir(follow_symlinks=False):
                self.directory_copy(entry, child.path, target)
            elif child.is_file(follow_symlinks=False) or child.is_symlink():
                self.file_copy(entry, child.path, target)
            else:
                raise InstallError(
                    f"{entry}: {child.path} is neither a file, a directory nor a symbolic link"
                )

    def file_copy(self, entry: str, source: str, destination: str) -> None:
        if not self.exists(destination):
            self.copy(source, destination)
            return
        if os.path.isdir(destination) and not os.path.islink(destination):
            if self.behavior == "RETAIN":
                self.result.retained.append(destination)
                return
            raise InstallError(
                f"{entry}: cannot install the file {source} at {destination}: a directory is"
                " there, and a directory is never replaced by a file"
            )
        if self.behavior == "DISALLOW":
            self.conflicts.append(destination)
        elif self.behavior == "OVERWRITE":
            self.copy(source, destination)
            self.result.overwritten.append(destination)
        else:
            self.result.retained.append(destination)

    def permission(self, entry: str, permission: Permission) -> None:
        target = self.destination(permission.object)
        if target in self.copies:
            if "file" not in permission.type:
                return
            if permission.pattern != "**":
                raise InstallError(
                    f"{entry}: object {permission.object} is a file, so it cannot have a"
                    f" pattern ({permission.pattern}); remove the pattern"
                )
            if permission.except_:
                raise InstallError(
                    f"{entry}: object {permission.object} is a file, so it cannot have an"
                    " except list; remove it"
                )
            self.set_permissions(entry, target, permission)
        elif target in self.directories or self.is_directory(target):
            for match in self.matches(target, permission):
                self.set_permissions(entry, match, permission)

    def matches(self, target: str, permission: Permission) -> list[str]:
        """Created objects below ``target`` that the entry's type, pattern and except select."""
        found: list[str] = []
        candidates: list[str] = []
        if "file" in permission.type:
            candidates.extend(self.copies)
        if "directory" in permission.type:
            candidates.extend(self.directories)
        base = target.rstrip("/") + "/"
        for path in candidates:
            if not path.startswith(base):
                continue
            relative = path[len(base) :]
            if permission.pattern != "**" and not _simple_glob(relative, permission.pattern):
                continue
            if any(_simple_glob(relative, pattern) for pattern in permission.except_):
                continue
            found.append(path)
        return found

    def set_permissions(self, entry: str, path: str, permission: Permission) -> None:
        if path in self.with_permissions:
            raise InstallError(
                f"{entry}: the permissions of {path} are set more than once; each installed"
                " object may match one permissions entry"
            )
        self.with_permissions.add(path)
        is_directory = path in self.directories
        if permission.acls:
            if shutil.which("setfacl") is None:
                raise InstallError(
                    f"{entry} ({permission.object}) sets ACLs, but setfacl is not installed on"
                    " this host (install the acl package)"
                )
            if not is_directory and any(_acl_is_default(acl) for acl in permission.acls):
                raise InstallError(
                    f"{entry} ({permission.object}): default ACL entries (d:...) apply to"
                    f" directories only, and {path} is a file"
                )
        selinux = None
        if permission.context is not None:
            selinux = _selinux_tool()
            if selinux is None:
                raise InstallError(
                    f"{entry} ({permission.object}) sets an SELinux context, but neither"
                    " semanage with restorecon nor chcon is installed on this host"
                )
        uid = _account(entry, permission.owner, user=True)
        gid = _account(entry, permission.group, user=False)
        euid = os.geteuid()
        own_groups = {-1, os.getegid(), *os.getgroups()}
        if euid != 0 and (uid not in (-1, euid) or gid not in own_groups):
            raise InstallError(
                f"{entry} ({permission.object}) changes the owner or group of {path}, which"
                " only root may do; run the agent as root or remove owner/group"
            )
        self.result.permissions.append(_SetPermissions(path, permission, entry, uid, gid, selinux))


class _Executor:
    """Carries out a checked plan, recording every created path before creating it."""

    def __init__(self, cleanup: IO[str]) -> None:
        self.cleanup = cleanup
        self.created: list[str] = []

    def record(self, line: str) -> None:
        self.cleanup.write(line + "\n")
        self.cleanup.flush()

    def run(self, plan: _Plan) -> list[str]:
        for step in plan.steps:
            if isinstance(step, _Mkdir):
                self.record(step.directory)
                self.created.append(step.directory)
                _os(f"cannot create directory {step.directory}", os.mkdir, step.directory)
            else:
                self.record(step.destination)
                self.created.append(step.destination)
                _copy(step.source, step.destination)
        for item in plan.permissions:
            self.apply(item)
        return self.created

    def apply(self, item: _SetPermissions) -> None:
        path, permission = item.path, item.permission
        is_link = os.path.islink(path)
        if permission.mode is not None and not is_link:
            mode = int(permission.mode, 8)
            _os(f"{item.entry}: cannot set mode {permission.mode} on {path}", os.chmod, path, mode)
        if permission.acls and not is_link:
            acl = _full_acl(permission.acls, os.stat(path).st_mode)
            _tool(["setfacl", "--set", ",".join(acl), path], entry=item.entry)
        if permission.context is not None and not is_link:
            self.context(item)
        if item.uid != -1 or item.gid != -1:
            _os(
                f"{item.entry}: cannot change the owner of {path}",
                os.lchown,
                path,
                item.uid,
                item.gid,
            )

    def context(self, item: _SetPermissions) -> None:
        context = item.permission.context
        assert context is not None
        real = os.path.realpath(item.path)
        if item.selinux == "semanage":
            args = ["semanage", "fcontext", "-a"]
            args += ["-s", context.user] if context.user else []
            args += ["-t", context.type]
            args += ["-r", context.range] if context.range else []
            _tool([*args, real], entry=item.entry)
            self.record(_SEMANAGE_PREFIX + real)
            _tool(["restorecon", "-v", real], entry=item.entry)
        else:
            args = ["chcon"]
            args += ["-u", context.user] if context.user else []
            args += ["-t", context.type]
            args += ["-l", context.range] if context.range else []
            _tool([*args, real], entry=item.entry)


def _copy(source: str, destination: str) -> None:
    """Copy a file (content, mode, times) or recreate a link, replacing ``destination``
    atomically so that it never goes missing, even when it is overwritten."""
    parent, name = os.path.split(destination)
    temporary = os.path.join(parent, f".{name}.opendeploy-{os.getpid()}.tmp")
    try:
        if os.path.islink(source):
            os.symlink(os.readlink(source), temporary)
        else:
            shutil.copyfile(source, temporary, follow_symlinks=False)
            shutil.copystat(source, temporary, follow_symlinks=False)
        os.replace(temporary, destination)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise InstallError(f"cannot install {destination}: {exc.strerror or exc}") from None


def _os(message: str, function: Callable[..., object], *args: object) -> None:
    try:
        function(*args)
    except OSError as exc:
        raise InstallError(f"{message}: {exc.strerror or exc}") from None


def _tool(argv: list[str], *, entry: str = "", check: bool = True) -> None:
    environment = {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LC_ALL": "C"}
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )
    except OSError as exc:
        if check:
            raise InstallError(f"{entry}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        return
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise InstallError(
            f"{entry}: {' '.join(argv)} failed with exit code {done.returncode}"
            + (f": {detail}" if detail else "")
        )


def _selinux_tool() -> str | None:
    if shutil.which("semanage") and shutil.which("restorecon"):
        return "semanage"
    if shutil.which("chcon"):
        return "chcon"
    return None


def _account(entry: str, name: str | None, *, user: bool) -> int:
    """A user or group name (or number) as an id; -1 for "leave unchanged"."""
    if name is None:
        return -1
    try:
        if user:
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
    kind = "user" if user else "group"
    raise InstallError(f"{entry}: there is no {kind} {name!r} on this host")


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _simple_glob(name: str, pattern: str) -> bool:
    """The stock agent's pattern match: ``*`` is the only wildcard, and never crosses ``/``."""
    if "/" in name:
        return False
    expression = "[^/]*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(expression, name) is not None


def _acl_is_default(acl: str) -> bool:
    return acl.split(":", 1)[0] in ("d", "default")


_ACL_TAGS: Final = {"u": "u", "user": "u", "g": "g", "group": "g"}
_ACL_NAMELESS: Final = {"m": "m", "mask": "m", "o": "o", "other": "o"}


def _parse_acl(acl: str) -> tuple[bool, str, str]:
    """``(is_default, tag, name)`` of a setfacl entry, read the way the appspec validator reads
    it (``bob:rw``, ``u:bob:rw``, ``d:g:staff:rx``, ``d:bob:rw``, ``m:rw`` ...)."""
    qualifiers = acl.split(":")[:-1]
    default = False
    if len(qualifiers) == 3:
        default, qualifiers = True, qualifiers[1:]
    tag: str | None = None
    if len(qualifiers) == 2:
        if qualifiers[0] in ("d", "default") and not default:
            default = True
        else:
            tag = _ACL_TAGS.get(qualifiers[0]) or _ACL_NAMELESS.get(qualifiers[0], "u")
    name = qualifiers[-1] if qualifiers else ""
    if tag is None and name in _ACL_NAMELESS:
        tag, name = _ACL_NAMELESS[name], ""
    return default, tag or "u", name


def _full_acl(acls: Iterable[str], mode: int) -> list[str]:
    """The appspec's ACL entries plus the base entries ``setfacl --set`` needs.

    As in the stock agent: owner, group and other come from the file's mode, a mask is added
    when named entries exist without one, and the same for default entries.
    """
    entries = list(acls)
    parsed = [_parse_acl(acl) for acl in entries]
    access = [(tag, name) for default, tag, name in parsed if not default]
    defaults = {(tag, bool(name)) for default, tag, name in parsed if default}
    owner, group, other = (str(mode >> shift & 0o7) for shift in (6, 3, 0))
    entries += [f"u::{owner}", f"g::{group}", f"o::{other}"]
    if any(name for _, name in access) and not any(tag == "m" for tag, _ in access):
        entries.append(f"m::{group}")
    if defaults:
        for tag, bits in (("u", owner), ("g", group), ("o", other)):
            if (tag, False) not in defaults:
                entries.append(f"d:{tag}::{bits}")
        if any(named for _, named in defaults) and ("m", False) not in defaults:
            entries.append(f"d:m::{group}")
    return entries
