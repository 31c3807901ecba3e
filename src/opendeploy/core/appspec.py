"""AppSpec validation for the Server (EC2/On-premises) compute platform.

``validate_appspec`` takes an already-parsed mapping (from YAML or JSON) and returns an immutable
``AppSpec``, or raises ``AppSpecError`` naming the file, the key path and, when the caller knows
it, the line. The rules are CodeDeploy's and its stock agent's, with deliberate differences:

* mistakes the stock agent silently ignores are errors here: an unknown top-level section (a typo
  such as ``permission:`` drops every permission), an unknown lifecycle event name (its scripts
  never run), and an entry key that looks like a misspelt known key (``timout:``);
* Lambda and ECS appspecs and ``os: windows`` are recognised and refused, because OpenDeploy
  deploys only to Linux hosts;
* explicit script timeouts are capped at 3600 s each and per event, the limit CodeDeploy puts on
  one lifecycle event (scripts without ``timeout`` get the 3600 s default and are not summed).

Paths are kept as written (``source: /`` and ``source: .`` both mean the bundle root); only a
source or script location that climbs out of the bundle with ``..`` is refused.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NoReturn, TypeAlias

from opendeploy.core.errors import AppSpecError

__all__ = [
    "AGENT_EVENTS",
    "DEFAULT_HOOK_TIMEOUT",
    "FILE_EXISTS_BEHAVIORS",
    "MAX_EVENT_TIMEOUT",
    "PERMISSION_TYPES",
    "SERVER_HOOK_EVENTS",
    "AppSpec",
    "FileExistsBehavior",
    "FileMapping",
    "Hook",
    "Permission",
    "SELinuxContext",
    "validate_appspec",
]

FileExistsBehavior: TypeAlias = Literal["DISALLOW", "OVERWRITE", "RETAIN"]

SERVER_HOOK_EVENTS: Final[tuple[str, ...]] = (
    "BeforeBlockTraffic",
    "AfterBlockTraffic",
    "ApplicationStop",
    "BeforeInstall",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
    "BeforeAllowTraffic",
    "AfterAllowTraffic",
)
"""Lifecycle events of Server in-place and blue/green deployments that run appspec scripts."""

AGENT_EVENTS: Final[tuple[str, ...]] = ("BlockTraffic", "DownloadBundle", "Install", "AllowTraffic")
"""Lifecycle events the agent or load balancer performs itself; they cannot have scripts."""

DEFAULT_HOOK_TIMEOUT: Final = 3600
MAX_EVENT_TIMEOUT: Final = 3600
FILE_EXISTS_BEHAVIORS: Final[tuple[FileExistsBehavior, ...]] = ("DISALLOW", "OVERWRITE", "RETAIN")
PERMISSION_TYPES: Final[tuple[str, ...]] = ("file", "directory")

_SECTIONS: Final = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
_FILE_KEYS: Final = ("source", "destination")
_PERMISSION_KEYS: Final = (
    "object",
    "pattern",
    "except",
    "owner",
    "group",
    "mode",
    "acls",
    "context",
    "type",
)
_HOOK_KEYS: Final = ("location", "timeout", "runas")
_CONTEXT_KEYS: Final = ("name", "user", "type", "range")

_DIGITS = re.compile(r"[0-9]+")
_SYMBOLIC_MODE = re.compile(r"[ugoa]*[-+=][rwxXst]*(?:,[ugoa]*[-+=][rwxXst]*)*")
_ACCOUNT = re.compile(r"[^\s:/-][^\s:/]*")
_ACL_PERMS = re.compile(r"[0-7]|[rwx-]{1,3}")
_ACL_DEFAULT: Final = ("d", "default")
_ACL_TAGS: Final = {
    "u": "user",
    "user": "user",
    "g": "group",
    "group": "group",
    "m": "mask",
    "mask": "mask",
    "o": "other",
    "other": "other",
}
_SELINUX_RANGE = re.compile(
    r"s([0-9]+)(?:-s([0-9]+))?"
    r"(?::(c[0-9]+(?:\.c[0-9]+)?(?:,c[0-9]+(?:\.c[0-9]+)?)*))?"
)
_MAX_SELINUX_CATEGORY: Final = 1023


@dataclass(frozen=True, slots=True)
class FileMapping:
    """One ``files`` entry: copy ``source`` (relative to the bundle root) into ``destination``."""

    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class SELinuxContext:
    """SELinux file context of a permissions entry; ``user`` comes from ``name`` or ``user``."""

    type: str
    user: str | None = None
    range: str | None = None


@dataclass(frozen=True, slots=True)
class Permission:
    """One ``permissions`` entry; ``except_`` is the appspec's ``except`` key."""

    object: str
    pattern: str = "**"
    except_: tuple[str, ...] = ()
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    acls: tuple[str, ...] = ()
    context: SELinuxContext | None = None
    type: tuple[str, ...] = PERMISSION_TYPES


@dataclass(frozen=True, slots=True)
class Hook:
    """One script of a lifecycle event; ``location`` is relative to the bundle root."""

    location: str
    timeout: int = DEFAULT_HOOK_TIMEOUT
    runas: str | None = None


@dataclass(frozen=True, slots=True)
class AppSpec:
    """A validated Server-platform appspec. ``hooks`` keeps the file's event order."""

    version: str = "0.0"
    os: str = "linux"
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    hooks: Mapping[str, tuple[Hook, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    file_exists_behavior: FileExistsBehavior | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hooks, MappingProxyType):
            object.__setattr__(self, "hooks", MappingProxyType(dict(self.hooks)))


def validate_appspec(
    data: object,
    *,
    file: str = "appspec.yml",
    lines: Mapping[str, int] | None = None,
    custom_events: Collection[str] = (),
) -> AppSpec:
    """Validate a parsed appspec for the Server platform.

    ``lines`` maps key paths (``hooks.AfterInstall[0].timeout``) to 1-based lines; an error on a
    path without a line takes the line of its nearest ancestor. ``custom_events`` are extra event
    names allowed under ``hooks``, for local runs that name their own events (as
    ``codedeploy-local --events`` does); deployments run only ``SERVER_HOOK_EVENTS``.
    """
    return _Validator(file, lines or {}, frozenset(custom_events)).appspec(data)


class _Validator:
    def __init__(self, file: str, lines: Mapping[str, int], custom_events: frozenset[str]) -> None:
        self.file = file
        self.lines = lines
        self.custom_events = custom_events

    def fail(self, path: str, message: str) -> NoReturn:
        raise AppSpecError(message, file=self.file, field=path or None, line=self.line(path))

    def line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = _parent(path)
        return None

    def appspec(self, data: object) -> AppSpec:
        if data is None:
            self.fail("", "the appspec is empty; it needs at least version: 0.0 and os: linux")
        if not isinstance(data, Mapping):
            self.fail("", f"the appspec must be a mapping of sections, not {_kind(data)}")
        for key in data:
            if not isinstance(key, str):
                self.fail("", f"section names must be text, not {_kind(key)} {key!r}")
        self.refuse_other_platforms(data)
        self.version(data)
        self.os(data)
        for key in data:
            if key not in _SECTIONS:
                self.fail(key, self.unknown_section(key))
        return AppSpec(
            files=self.files(data.get("files")),
            file_exists_behavior=self.file_exists_behavior(data.get("file_exists_behavior")),
            permissions=self.permissions(data.get("permissions")),
            hooks=MappingProxyType(self.hooks(data.get("hooks"))),
        )

    def refuse_other_platforms(self, data: Mapping[str, object]) -> None:
        key = next((k for k in data if k.lower() == "resources"), None)
        if key is None:
            return
        types = list(_resource_types(key, data[key]))
        for path, rtype in types:
            if rtype == "AWS::Lambda::Function":
                self.fail(path, f"this is an AWS Lambda appspec ({rtype}); {_SERVER_ONLY}")
            if rtype == "AWS::ECS::Service":
                self.fail(path, f"this is an Amazon ECS appspec ({rtype}); {_SERVER_ONLY}")
        for path, rtype in types:
            self.fail(
                path,
                f"resource type {rtype!r} is neither AWS::Lambda::Function nor AWS::ECS::Service,"
                f" and Resources sections belong to Lambda and ECS appspecs anyway; {_SERVER_ONLY}",
            )
        self.fail(key, f"a Resources section belongs to Lambda and ECS appspecs; {_SERVER_ONLY}")

    def version(self, data: Mapping[str, object]) -> None:
        if "version" not in data:
            self.fail("version", "version is missing; an appspec starts with version: 0.0")
        value = data["version"]
        if isinstance(value, str) and value.strip() in ("0.0", "0"):
            self.fail(
                "version",
                f"version is the text {value!r}, but it must be the number 0.0: remove the quotes"
                " (the CodeDeploy agent refuses a quoted version)",
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value != 0:
            self.fail("version", f"version must be 0.0, the only AppSpec version, not {value!r}")

    def os(self, data: Mapping[str, object]) -> None:
        if "os" not in data:
            self.fail("os", "os is missing; OpenDeploy deploys to Linux hosts: add os: linux")
        value = data["os"]
        if value == "windows":
            self.fail("os", "os: windows is not supported: OpenDeploy deploys to Linux hosts only")
        if value == "linux":
            return
        if isinstance(value, str) and value.lower() in ("linux", "windows"):
            self.fail("os", f"os must be written in lower case (linux), not {value!r}")
        self.fail(
            "os",
            f"os must be linux, not {value!r}; linux covers every Linux distribution",
        )

    def unknown_section(self, key: str) -> str:
        event = _suggest(key, SERVER_HOOK_EVENTS, cutoff=0.9)
        if event is not None:
            return (
                f"{key!r} is not a section: lifecycle events belong under hooks, so indent it"
                f" below hooks: as {event}: (as written, its scripts would never run)"
            )
        guess = _suggest(key, _SECTIONS)
        if guess is not None:
            return f"unknown section {key!r}; did you mean {guess}? (as written it is ignored)"
        return f"unknown section {key!r}; an appspec has the sections {', '.join(_SECTIONS)}"

    def files(self, value: object) -> tuple[FileMapping, ...]:
        files = []
        for index, item in enumerate(self.sequence("files", value)):
            path = f"files[{index}]"
            entry = self.entry(path, item, _FILE_KEYS, "- source: app/ and destination: /srv/app")
            source = self.required_text(path, entry, "source")
            destination = self.required_text(path, entry, "destination")
            self.inside_bundle(f"{path}.source", source)
            if not destination.startswith("/"):
                self.fail(
                    f"{path}.destination",
                    f"destination {destination!r} must be an absolute path on the host"
                    " (starting with /)",
                )
            files.append(FileMapping(source, destination))
        return tuple(files)

    def file_exists_behavior(self, value: object) -> FileExistsBehavior | None:
        if value is None:
            return None
        for behavior in FILE_EXISTS_BEHAVIORS:
            if value == behavior:
                return behavior
        hint = " (values are upper case)" if str(value).upper() in FILE_EXISTS_BEHAVIORS else ""
        self.fail(
            "file_exists_behavior",
            f"file_exists_behavior must be one of {', '.join(FILE_EXISTS_BEHAVIORS)},"
            f" not {value!r}{hint}",
        )

    def permissions(self, value: object) -> tuple[Permission, ...]:
        permissions = []
        for index, item in enumerate(self.sequence("permissions", value)):
            path = f"permissions[{index}]"
            entry = self.entry(path, item, _PERMISSION_KEYS, "- object: /srv/app")
            target = self.required_text(path, entry, "object")
            if not target.startswith("/"):
                self.fail(
                    f"{path}.object",
                    f"object {target!r} must be the absolute path of an installed file or"
                    " directory",
                )
            pattern = self.optional_text(f"{path}.pattern", entry.get("pattern"))
            acls = self.text_list(f"{path}.acls", entry.get("acls"))
            for number, acl in enumerate(acls):
                self.acl(f"{path}.acls[{number}]", acl)
            permissions.append(
                Permission(
                    object=target,
                    pattern=pattern or "**",
                    except_=self.text_list(f"{path}.except", entry.get("except")),
                    owner=self.account(f"{path}.owner", entry.get("owner")),
                    group=self.account(f"{path}.group", entry.get("group")),
                    mode=self.mode(f"{path}.mode", entry.get("mode")),
                    acls=acls,
                    context=self.context(f"{path}.context", entry.get("context")),
                    type=self.types(f"{path}.type", entry.get("type")),
                )
            )
        return tuple(permissions)

    def mode(self, path: str, value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(path, f'mode must be octal digits such as "644", not {_kind(value)}')
        text = str(value).strip()
        if not _DIGITS.fullmatch(text):
            if _SYMBOLIC_MODE.fullmatch(text):
                self.fail(
                    path,
                    f'symbolic mode {text!r} is not supported; write octal digits such as "755"',
                )
            self.fail(path, f'mode {text!r} must be 1 to 4 octal digits (0-7), such as "644"')
        if len(text) > 4 or any(digit in "89" for digit in text):
            self.fail(path, f'mode {text!r} must be 1 to 4 octal digits (0-7), such as "644"')
        return text.rjust(3, "0")

    def acl(self, path: str, text: str) -> None:
        """Check one setfacl entry the way the stock agent's AceInfo parses it."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 4:
            self.fail(path, f"ACL entry {text!r} must look like u:bob:rw or d:g:staff:r-x")
        *qualifiers, perms = parts
        default = False
        if len(qualifiers) == 3:
            if qualifiers[0] not in _ACL_DEFAULT:
                self.fail(path, f"ACL entry {text!r}: {qualifiers[0]!r} must be d or default")
            default = True
            qualifiers = qualifiers[1:]
        tag: str | None = None
        if len(qualifiers) == 2:
            if qualifiers[0] in _ACL_DEFAULT and not default:
                default = True
            elif qualifiers[0] in _ACL_TAGS:
                tag = _ACL_TAGS[qualifiers[0]]
            else:
                self.fail(path, f"ACL entry {text!r}: {qualifiers[0]!r} is not u, g, m or o")
        name = qualifiers[-1]
        if tag is None and name in ("m", "mask", "o", "other"):
            tag, name = _ACL_TAGS[name], ""
        tag = tag or "user"
        if tag in ("mask", "other") and name:
            self.fail(path, f"ACL entry {text!r}: a {tag} entry takes no name")
        if not name and not default and tag != "mask":
            self.fail(
                path,
                f"ACL entry {text!r} names no user or group; set the base owner, group and"
                " other permissions with mode",
            )
        if not _ACL_PERMS.fullmatch(perms):
            self.fail(path, f"ACL entry {text!r}: permissions must be r, w, x, - or one digit 0-7")

    def context(self, path: str, value: object) -> SELinuxContext | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail(
                path, f"context must be a mapping with type (and name, range), not {_kind(value)}"
            )
        if "role" in value:
            self.fail(f"{path}.role", "an SELinux role cannot be set; give name, type and range")
        entry = self.entry(path, value, _CONTEXT_KEYS, "type: httpd_sys_content_t")
        if entry.get("name") is not None and entry.get("user") is not None:
            self.fail(path, "give the SELinux user once, as name or as user")
        user_key = "name" if entry.get("name") is not None else "user"
        selinux_type = self.required_text(path, entry, "type")
        selinux_range = self.optional_text(f"{path}.range", entry.get("range"))
        if selinux_range is not None:
            self.selinux_range(f"{path}.range", selinux_range)
        return SELinuxContext(
            type=selinux_type,
            user=self.optional_text(f"{path}.{user_key}", entry.get(user_key)),
            range=selinux_range,
        )

    def selinux_range(self, path: str, text: str) -> None:
        match = _SELINUX_RANGE.fullmatch(text)
        problem = None if match else "must look like s0, s0-s1 or s0:c0.c5,c9"
        if match:
            low, high, categories = match.groups()
            seen: list[int] = []
            for part in (categories or "").split(","):
                bounds = [int(c[1:]) for c in part.split(".")] if part else []
                seen.extend(range(bounds[0], bounds[-1] + 1) if bounds else [])
                if bounds and bounds[0] > bounds[-1]:
                    problem = f"category range {part} runs backwards"
            if high is not None and int(high) < int(low):
                problem = "the high sensitivity is below the low one"
            elif any(c > _MAX_SELINUX_CATEGORY for c in seen):
                problem = f"categories go up to c{_MAX_SELINUX_CATEGORY}"
            elif len(seen) != len(set(seen)):
                problem = "a category is listed twice"
        if problem is not None:
            self.fail(path, f"SELinux range {text!r}: {problem}")

    def types(self, path: str, value: object) -> tuple[str, ...]:
        if value is None:
            return PERMISSION_TYPES
        names = self.text_list(path, value)
        for index, name in enumerate(names):
            if name not in PERMISSION_TYPES:
                self.fail(f"{path}[{index}]", f"type must be file or directory, not {name!r}")
        return tuple(dict.fromkeys(names))

    def hooks(self, value: object) -> dict[str, tuple[Hook, ...]]:
        if value is None:
            return {}
        if isinstance(value, list):
            self.fail(
                "hooks",
                "hooks must map event names to lists of scripts (AfterInstall: then"
                " - location: ...); a list of '- Event: function' items is the Lambda/ECS form",
            )
        if not isinstance(value, Mapping):
            self.fail(
                "hooks", f"hooks must map event names to lists of scripts, not {_kind(value)}"
            )
        hooks: dict[str, tuple[Hook, ...]] = {}
        for event, scripts in value.items():
            path = f"hooks.{event}"
            if not isinstance(event, str):
                self.fail("hooks", f"event names must be text, not {_kind(event)} {event!r}")
            self.event(path, event)
            if scripts is None:
                self.fail(
                    path,
                    f"{event} has no scripts (its value is empty); list at least one"
                    " '- location: script' or remove the event",
                )
            if not isinstance(scripts, list):
                self.fail(path, f"{event} must be a list of scripts, not {_kind(scripts)}")
            parsed = [self.hook(f"{path}[{index}]", item) for index, item in enumerate(scripts)]
            total = sum(timeout for _, timeout in parsed if timeout is not None)
            if total > MAX_EVENT_TIMEOUT:
                self.fail(
                    path,
                    f"the timeouts of the {event} scripts add up to {total} s, but one lifecycle"
                    f" event may run for at most {MAX_EVENT_TIMEOUT} s",
                )
            hooks[event] = tuple(hook for hook, _ in parsed)
        return hooks

    def event(self, path: str, event: str) -> None:
        if event in SERVER_HOOK_EVENTS:
            return
        if event in AGENT_EVENTS:
            self.fail(
                path,
                f"{event} is carried out by the agent itself and cannot run scripts;"
                f" scripts can run at {', '.join(SERVER_HOOK_EVENTS)}",
            )
        if event in self.custom_events:
            return
        guess = _suggest(event, SERVER_HOOK_EVENTS)
        hint = f"did you mean {guess}? " if guess else ""
        self.fail(
            path,
            f"unknown lifecycle event {event!r}: {hint}scripts can run at"
            f" {', '.join(SERVER_HOOK_EVENTS)}",
        )

    def hook(self, path: str, item: object) -> tuple[Hook, int | None]:
        entry = self.entry(path, item, _HOOK_KEYS, "- location: scripts/start.sh")
        location = self.required_text(path, entry, "location")
        self.inside_bundle(f"{path}.location", location)
        timeout = self.timeout(f"{path}.timeout", entry.get("timeout"))
        runas = self.account(f"{path}.runas", entry.get("runas"))
        hook = Hook(location, DEFAULT_HOOK_TIMEOUT if timeout is None else timeout, runas)
        return hook, timeout

    def timeout(self, path: str, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"timeout must be a whole number of seconds, not {value!r}")
        if value <= 0:
            self.fail(path, f"timeout must be more than 0 seconds, not {value}")
        if value > MAX_EVENT_TIMEOUT:
            self.fail(
                path,
                f"timeout {value} is over {MAX_EVENT_TIMEOUT} s, the most one lifecycle event"
                " may run",
            )
        return value

    def sequence(self, path: str, value: object) -> Sequence[object]:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.fail(path, f"{path} must be a list ('- ' items), not {_kind(value)}")
        return value

    def entry(
        self, path: str, value: object, known: Sequence[str], example: str
    ) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(path, f"each entry must be a mapping like '{example}', not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be text, not {_kind(key)} {key!r}")
            if key in known:
                continue
            guess = _suggest(key, known, cutoff=0.8)
            if guess is not None:
                self.fail(f"{path}.{key}", f"unknown key {key!r}; did you mean {guess}?")
        return value

    def required_text(self, path: str, entry: Mapping[str, object], key: str) -> str:
        text = self.optional_text(f"{path}.{key}", entry.get(key))
        if text is None:
            self.fail(f"{path}.{key}", f"{key} is missing")
        return text

    def optional_text(self, path: str, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(path, f"{_last(path)} must be text, not {_kind(value)} {value!r}")
        text = value.strip()
        if not text:
            self.fail(path, f"{_last(path)} is empty")
        return text

    def text_list(self, path: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            self.fail(path, f"{_last(path)} must be a list ('- {value}'), not a single value")
        items = self.sequence(path, value)
        texts = []
        for index, item in enumerate(items):
            text = self.optional_text(f"{path}[{index}]", item)
            if text is None:
                self.fail(f"{path}[{index}]", f"{_last(path)} entries must not be empty")
            texts.append(text)
        return tuple(texts)

    def account(self, path: str, value: object) -> str | None:
        """A user or group name; a bare number is taken as a numeric id."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        text = self.optional_text(path, value)
        if text is not None and not _ACCOUNT.fullmatch(text):
            self.fail(path, f"{text!r} is not a user or group name")
        return text

    def inside_bundle(self, path: str, location: str) -> None:
        normal = posixpath.normpath(location.replace("\\", "/").lstrip("/"))
        if normal == ".." or normal.startswith("../"):
            self.fail(path, f"{location!r} points outside the bundle; paths are bundle-relative")


_SERVER_ONLY = (
    "OpenDeploy deploys only to servers (the EC2/On-premises compute platform), whose appspec"
    " has version, os, files, permissions and hooks"
)


def _resource_types(key: str, resources: object) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not isinstance(resources, list):
        return found
    for index, item in enumerate(resources):
        if not isinstance(item, Mapping):
            continue
        for name, body in item.items():
            if not isinstance(body, Mapping):
                continue
            for type_key, value in body.items():
                if isinstance(type_key, str) and type_key.lower() == "type":
                    found.append((f"{key}[{index}].{name}.{type_key}", str(value)))
    return found


def _suggest(word: str, choices: Sequence[str], cutoff: float = 0.75) -> str | None:
    """The choice ``word`` most likely misspells, ignoring case, spaces and punctuation."""
    squashed = _squash(word)
    for choice in choices:
        if _squash(choice) == squashed:
            return choice
    by_squashed = {_squash(choice): choice for choice in choices}
    close = difflib.get_close_matches(squashed, list(by_squashed), n=1, cutoff=cutoff)
    return by_squashed[close[0]] if close else None


def _squash(word: str) -> str:
    return re.sub(r"[^a-z0-9]", "", word.lower())


def _parent(path: str) -> str:
    if path.endswith("]") and "[" in path:
        return path[: path.rindex("[")]
    dot = path.rfind(".")
    return path[:dot] if dot >= 0 else ""


def _last(path: str) -> str:
    return re.sub(r"\[[0-9]+\]$", "", path).rpartition(".")[2]


def _kind(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
