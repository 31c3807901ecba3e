"""Reading ``appspec.yml``: the YAML half of appspec handling (the rules are in core.appspec).

The loader resolves plain scalars with a narrow YAML 1.2-style schema instead of PyYAML's YAML 1.1
one, so the 1.1 traps cannot bite: ``mode: 0644`` stays the text ``"0644"`` (1.1 reads octal 420),
``yes``/``no``/``on``/``off`` stay text, and ``1:30``, ``0x1F`` or ``2024-01-02`` are never turned
into numbers or dates. Only ``true``/``false``, ``null``/``~``, decimal whole numbers without a
leading zero and decimal fractions (``version: 0.0``) are typed. Duplicate keys and aliases are
refused (the stock agent's YAML loader refuses aliases too), and every key path's line is recorded
so that validation errors point at the line.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath

import yaml
from yaml.composer import Composer, ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from opendeploy.core.appspec import AppSpec, validate_appspec
from opendeploy.core.errors import AppSpecError

__all__ = ["find_appspec", "load_appspec", "read_appspec"]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"

_INT_RE = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_BOOL_RE = re.compile(r"true|True|TRUE|false|False|FALSE")
_NULL_RE = re.compile(r"~|null|Null|NULL|")
_ALIAS_PROBLEM = "aliases (*name) are not allowed in an appspec"
_ALIAS_HINT = 'a value that starts with * must be quoted, e.g. pattern: "*.sh"'


class _Resolver(BaseResolver):
    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


for _tag, _pattern, _first in (
    (_BOOL, _BOOL_RE, "tTfF"),
    (_INT, _INT_RE, "-+0123456789"),
    (_FLOAT, _FLOAT_RE, "-+.0123456789"),
    (_NULL, _NULL_RE, ["~", "n", "N", ""]),
):
    _Resolver.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern.pattern})$"), list(_first))


class _Loader(Reader, Scanner, Parser, Composer, _Resolver):
    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, _ALIAS_PROBLEM, event.start_mark)
        return super().compose_node(parent, index)


def load_appspec(
    text: str, *, file: str = "appspec.yml", custom_events: Collection[str] = ()
) -> AppSpec:
    """Parse and validate appspec text; every problem is an ``AppSpecError`` with its line."""
    data, lines = _parse(text, file)
    return validate_appspec(data, file=file, lines=lines, custom_events=custom_events)


def find_appspec(bundle_dir: Path, name: str = "appspec.yml") -> Path:
    """The appspec at the bundle root: ``name``, or its ``.yaml`` twin when ``name`` is ``.yml``.

    Names are case-sensitive, as on the stock Linux agent; a near miss (``AppSpec.yml``, or an
    appspec one directory down) is named in the error so the fix is obvious.
    """
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise AppSpecError(f"appspec name {name!r} must be a path inside the bundle", file=name)
    candidates = [name]
    if name.endswith(".yml"):
        candidates.append(name[: -len(".yml")] + ".yaml")
    for candidate in candidates:
        path = bundle_dir / candidate
        if path.is_file():
            return path
    if not bundle_dir.is_dir():
        raise AppSpecError(f"bundle directory {bundle_dir} does not exist", file=name)
    wanted = " or ".join(candidates)
    near = _near_misses(bundle_dir, candidates)
    hint = (
        f"; found {', '.join(near)}: rename or move it (names are case-sensitive)" if near else ""
    )
    raise AppSpecError(f"the bundle has no {wanted} at its root{hint}", file=name)


def read_appspec(
    bundle_dir: Path, name: str = "appspec.yml", *, custom_events: Collection[str] = ()
) -> AppSpec:
    """Find, read (UTF-8) and validate the appspec of an unpacked bundle."""
    path = find_appspec(bundle_dir, name)
    file = path.relative_to(bundle_dir).as_posix()
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise AppSpecError("the appspec is not UTF-8 text", file=file, line=line) from None
    return load_appspec(text, file=file, custom_events=custom_events)


def _near_misses(bundle_dir: Path, candidates: list[str]) -> list[str]:
    lowered = {candidate.lower() for candidate in candidates}
    found = []
    for entry in sorted(bundle_dir.iterdir()):
        if entry.name.lower() in lowered and entry.is_file():
            found.append(entry.name)
        elif entry.is_dir():
            found.extend(
                f"{entry.name}/{candidate}"
                for candidate in candidates
                if (entry / candidate).is_file()
            )
    return found


def _parse(text: str, file: str) -> tuple[object, dict[str, int]]:
    loader: _Loader | None = None
    try:
        loader = _Loader(text.removeprefix("\ufeff"))
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: character U+{exc.character:04X} is not allowed ({exc.reason})"
        raise AppSpecError(message, file=file, line=line) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise AppSpecError(
            "the appspec is empty; it needs at least version: 0.0 and os: linux", file=file
        )
    builder = _Builder(file)
    return builder.build(node, ""), builder.lines


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> AppSpecError:
    mark = exc.problem_mark or exc.context_mark
    context = f" ({exc.context})" if exc.context else ""
    message = f"invalid YAML{context}: {exc.problem}"
    if mark is not None:
        message += f" at column {mark.column + 1}"
    if exc.context == "while scanning an alias" or exc.problem == _ALIAS_PROBLEM:
        message += f"; {_ALIAS_HINT}"
    if exc.problem is not None and "'\\t'" in exc.problem:
        message += "; indent with spaces, not tabs"
    if exc.problem == "mapping values are not allowed here":
        message += (
            "; a key on this or an earlier line may lack its colon, or a value containing"
            " ': ' needs quotes"
        )
    return AppSpecError(message, file=file, line=mark.line + 1 if mark is not None else None)


class _Builder:
    """Turns composed YAML nodes into plain values, recording the line of every key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}

    def fail(self, node: Node, path: str, message: str) -> AppSpecError:
        return AppSpecError(
            message, file=self.file, field=path or None, line=node.start_mark.line + 1
        )

    def build(self, node: Node, path: str) -> object:
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            items = []
            for index, child in enumerate(node.value):
                item_path = f"{path}[{index}]"
                self.lines[item_path] = child.start_mark.line + 1
                items.append(self.build(child, item_path))
            return items
        if isinstance(node, MappingNode) and node.tag == _MAP:
            return self.mapping(node, path)
        raise self.fail(node, path, f"YAML tag {node.tag} is not supported in an appspec")

    def mapping(self, node: MappingNode, path: str) -> dict[str, object]:
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, path, "keys must be plain text, not lists or mappings")
            key = key_node.value
            key_path = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key == "<<" and key_node.style is None:
                raise self.fail(key_node, key_path, "merge keys (<<) are not allowed")
            if key in first_line:
                raise self.fail(
                    key_node, key_path, f"duplicate key {key!r} (first on line {first_line[key]})"
                )
            first_line[key] = line
            self.lines[key_path] = line
            result[key] = self.build(value_node, key_path)
        return result

    def scalar(self, node: ScalarNode, path: str) -> object:
        value: str = node.value
        if node.tag == _STR:
            return value
        if node.tag == _NULL and _NULL_RE.fullmatch(value):
            return None
        if node.tag == _BOOL and _BOOL_RE.fullmatch(value):
            return value.lower() == "true"
        if node.tag == _INT and _INT_RE.fullmatch(value):
            return int(value)
        if node.tag == _FLOAT and _FLOAT_RE.fullmatch(value):
            return float(value)
        if node.tag in (_INT, _FLOAT):
            raise self.fail(node, path, f"{value!r} is not a decimal number")
        raise self.fail(node, path, f"{value!r}: YAML tag {node.tag} is not supported")
