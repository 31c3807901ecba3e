"""The AWS Query protocol (form-encoded requests, XML responses), driven by botocore's model.

This is the wire codec behind the server's IAM endpoint. It knows nothing about IAM itself: every
shape, member name, list/map layout and constraint comes from the botocore ``ServiceModel`` passed
in (``botocore.session.get_session().get_service_model("iam")``, see :func:`iam_service_model`).

Requests
    :func:`parse_query_request` decodes ``Action=CreateUser&Version=2010-05-08&UserName=bob`` into
    ``("CreateUser", {"UserName": "bob"})`` -- the same parameter dict a boto3 caller passed in,
    with nested structures, lists (``Tags.member.1.Key``), maps (``Attrs.entry.1.key``), booleans,
    numbers, timestamps and blobs converted. Input members are checked against the model the way
    AWS does: required, type, length, range, pattern and enum. Every problem is collected into one
    ``ValidationError`` whose message reads like AWS's own::

        2 validation errors detected: Value null at 'userName' failed to satisfy constraint:
        Member must not be null; Value '0' at 'maxItems' failed to satisfy constraint: Member must
        have value greater than or equal to 1

    Member paths use AWS's lower-camel spelling (``tags.1.member.key``). Parameters that name no
    member of the input shape are ignored, as IAM does; malformed ones under a known member
    (``Tags.1.Key``, ``UserName.x``, a repeated key) are validation errors.

Error codes (all :class:`~opendeploy.core.errors.ServiceError`, HTTP 400)
    ``InvalidAction``        missing or unknown ``Action``, missing or wrong ``Version``; the
                             message is AWS's "Could not find operation X for version Y".
    ``ValidationError``      anything wrong with the members, including missing required ones
                             (IAM reports those as "Member must not be null", so one error can
                             list all the problems at once).
    ``MalformedQueryString`` a body that is not valid form encoding / UTF-8.

Responses
    :func:`serialize_query_response` writes ``<OpResponse><OpResult>...</OpResult>
    <ResponseMetadata>...`` following the output shape, :func:`serialize_query_error` writes
    ``<ErrorResponse>``. Both use :mod:`xml.etree.ElementTree`, so all data is escaped; characters
    that XML 1.0 cannot carry at all (NUL and other C0 controls, lone surrogates) are replaced
    with U+FFFD, and carriage returns are written as ``&#13;`` so they survive parsing.

Model patterns are Java regular expressions. They are translated for :mod:`re` (``\\p{L}``-style
Unicode categories are expanded, ``\\w``/``\\d``/``\\s`` are ASCII as in Java, surrogate-pair
escapes become code points) and matched against the whole value. A pattern that cannot be
translated is not enforced rather than rejecting valid requests.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import enum
import math
import re
import sys
import unicodedata
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qsl

import botocore.session  # type: ignore[import-untyped]
from botocore.model import ServiceModel, Shape  # type: ignore[import-untyped]

from opendeploy.core.errors import ServiceError

__all__ = [
    "IAM_XML_NAMESPACE",
    "iam_service_model",
    "parse_query_request",
    "serialize_query_error",
    "serialize_query_response",
]

IAM_XML_NAMESPACE: Final = "https://iam.amazonaws.com/doc/2010-05-08/"

#: Most form fields accepted in one request; far above anything IAM's model allows.
MAX_FIELDS: Final = 5000

#: Values longer than this are shortened when echoed in a validation message.
_ECHO_LIMIT: Final = 256

_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'

_INT_RE: Final = re.compile(r"[-+]?[0-9]+")
_FLOAT_RE: Final = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INDEX_RE: Final = re.compile(r"[1-9][0-9]*")
_EPOCH_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_XML_INVALID_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_INT_BOUNDS: Final[Mapping[str, tuple[int, int]]] = {
    "integer": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}
_SPECIAL_FLOATS: Final[Mapping[str, float]] = {
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "NaN": math.nan,
}


@lru_cache(maxsize=1)
def iam_service_model() -> ServiceModel:
    """botocore's IAM service model, loaded once."""
    return botocore.session.get_session().get_service_model("iam")


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


@dataclass
class _Node:
    """One dotted path segment of the form body: ``Tags`` -> ``member`` -> ``1`` -> ``Key``."""

    value: str | None = None
    repeated: bool = False
    children: dict[str, _Node] = field(default_factory=dict)


#: Stands for an absent value in a validation message ("Value null at ...").
_NULL: Final = object()


class _Problems:
    """Validation problems collected while walking the input shape."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(
        self, path: str, constraint: str, value: object = None, shape: Shape | None = None
    ) -> None:
        self.items.append(
            f"{_describe(value, shape)} at '{path}' failed to satisfy constraint: {constraint}"
        )

    def raise_if_any(self) -> None:
        if not self.items:
            return
        count = len(self.items)
        noun = "error" if count == 1 else "errors"
        raise ServiceError(
            "ValidationError", f"{count} validation {noun} detected: " + "; ".join(self.items)
        )


def _describe(value: object, shape: Shape) -> str:
    if value is _NULL:
        return "Value null"
    if not isinstance(value, str | int | float) or (
        shape is not None and shape.metadata.get("sensitive")
    ):
        return "Value"  # collections and blobs are not echoed, nor are secrets
    text = str(value)
    if len(text) > _ECHO_LIMIT:
        text = text[:_ECHO_LIMIT] + "..."
    return f"Value '{text}'"


def parse_query_request(body: bytes | str, model: ServiceModel) -> tuple[str, dict[str, Any]]:
    """Decode a Query-protocol form body into ``(operation name, input parameters)``.

    The parameters have the shape boto3 callers pass (``{"UserName": "bob", "Tags": [{"Key":
    "k", "Value": "v"}]}``). Raises :class:`ServiceError` with ``InvalidAction``,
    ``ValidationError`` or ``MalformedQueryString``; see the module docstring.
    """
    fields = _decode_form(body)
    action = _single_value(fields, "Action")
    version = _single_value(fields, "Version")
    api_version = str(model.metadata.get("apiVersion", ""))
    if not action:
        raise ServiceError(
            "InvalidAction", "The request must contain a valid Action parameter (none was given)."
        )
    if action not in model.operation_names or version != api_version:
        shown = version if version else "NO_VERSION_SPECIFIED"
        raise ServiceError(
            "InvalidAction", f"Could not find operation {action} for version {shown}"
        )

    operation = model.operation_model(action)
    input_shape = operation.input_shape
    if input_shape is None:
        return str(operation.name), {}

    root = _Node()
    for name, value in fields:
        if name in ("Action", "Version"):
            continue
        node = root
        for segment in name.split("."):
            node = node.children.setdefault(segment, _Node())
        if node.value is not None:
            node.repeated = True
        node.value = value

    problems = _Problems()
    params = _parse_structure(input_shape, root, "", problems)
    problems.raise_if_any()
    return str(operation.name), params


def _decode_form(body: bytes | str) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        return parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError as exc:
        raise ServiceError(
            "MalformedQueryString", f"The request body is not valid UTF-8 form data: {exc.reason}"
        ) from exc
    except ValueError as exc:
        raise ServiceError("MalformedQueryString", f"The request body is malformed: {exc}") from exc


def _single_value(fields: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in fields if key == name]
    if len(values) > 1:
        raise ServiceError("InvalidAction", f"The parameter {name} was given more than once.")
    return values[0] if values else None


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _wire_name(member_name: str, member_shape: Shape) -> str:
    """The form/XML name of a structure member (botocore's rule, flattened lists included)."""
    if member_shape.type_name == "list" and member_shape.serialization.get("flattened"):
        list_member_name = member_shape.member.serialization.get("name")
        if list_member_name:
            return str(list_member_name)
    return str(member_shape.serialization.get("name", member_name))


def _parse_value(shape: Shape, node: _Node, path: str, problems: _Problems) -> Any:
    """The value of ``node`` as ``shape``, or ``None`` after recording why it has none."""
    if node.repeated:
        problems.add(path, "Member must be given only once", node.value, shape)
        return None
    kind = str(shape.type_name)
    if kind == "structure":
        if node.value is not None:
            problems.add(path, "Member must be a structure", node.value, shape)
            return None
        return _parse_structure(shape, node, path, problems)
    if kind == "list":
        return _parse_list(shape, node, path, problems)
    if kind == "map":
        return _parse_map(shape, node, path, problems)
    if node.children or node.value is None:
        problems.add(path, f"Member must be a single {kind} value", node.value, shape)
        return None
    value = _parse_scalar(kind, shape, node.value, path, problems)
    if value is not None:
        _check_constraints(shape, value, path, problems)
    return value


def _parse_structure(shape: Shape, node: _Node, path: str, problems: _Problems) -> dict[str, Any]:
    result: dict[str, Any] = {}
    members: Mapping[str, Shape] = shape.members
    for member_name, member_shape in members.items():
        member_path = _join(path, _lower_camel(member_name))
        child = node.children.get(_wire_name(member_name, member_shape))
        if child is None:
            if member_name in shape.required_members:
                problems.add(member_path, "Member must not be null", _NULL)
            continue
        value = _parse_value(member_shape, child, member_path, problems)
        if value is not None:
            result[member_name] = value
    return result


def _indexed_children(
    node: _Node, path: str, problems: _Problems
) -> list[tuple[int, _Node]] | None:
    """Children named ``1``, ``2``, ... in index order, or ``None`` if any name is not an index."""
    indexed: list[tuple[int, _Node]] = []
    for name, child in node.children.items():
        if not _INDEX_RE.fullmatch(name):
            problems.add(
                path, f"Member must be indexed from 1 (found '{name}' instead of an index)"
            )
            return None
        indexed.append((int(name), child))
    indexed.sort(key=lambda pair: pair[0])
    return indexed


def _collection_items(
    shape: Shape, node: _Node, path: str, problems: _Problems, container: str
) -> list[tuple[int, _Node]] | None:
    """The indexed entries of a list or map node, or ``None`` if the node is malformed."""
    if node.value is not None:
        if node.value == "" and not node.children:
            return []  # botocore sends an empty list as ``Name=``
        problems.add(path, f"Member must be a {_kind_word(shape)}", node.value, shape)
        return None
    if shape.serialization.get("flattened"):
        return _indexed_children(node, path, problems)
    if set(node.children) != {container}:
        found = ", ".join(sorted(set(node.children) - {container})) or "nothing"
        problems.add(
            path,
            f"Member must be a {_kind_word(shape)} written as '{container}.N' (found '{found}')",
        )
        return None
    return _indexed_children(node.children[container], path, problems)


def _kind_word(shape: Shape) -> str:
    return "list" if shape.type_name == "list" else "map"


def _parse_list(shape: Shape, node: _Node, path: str, problems: _Problems) -> Any:
    member_shape = shape.member
    container = str(member_shape.serialization.get("name", "member"))
    items = _collection_items(shape, node, path, problems, container)
    if items is None:
        return None
    result: list[Any] = []
    for index, child in items:
        result.append(_parse_value(member_shape, child, f"{path}.{index}.member", problems))
    _check_constraints(shape, result, path, problems)
    return result


def _parse_map(shape: Shape, node: _Node, path: str, problems: _Problems) -> Any:
    key_name = str(shape.key.serialization.get("name", "key"))
    value_name = str(shape.value.serialization.get("name", "value"))
    items = _collection_items(shape, node, path, problems, "entry")
    if items is None:
        return None
    result: dict[Any, Any] = {}
    for index, entry in items:
        entry_path = f"{path}.{index}"
        parsed: dict[str, Any] = {}
        for part, part_name, part_shape in (
            ("key", key_name, shape.key),
            ("value", value_name, shape.value),
        ):
            child = entry.children.get(part_name)
            if child is None:
                problems.add(f"{entry_path}.{part}", "Member must not be null", _NULL)
                continue
            parsed[part] = _parse_value(part_shape, child, f"{entry_path}.{part}", problems)
        if parsed.get("key") is None or "value" not in parsed:
            continue
        if parsed["key"] in result:
            problems.add(f"{entry_path}.key", "Map keys must be unique", parsed["key"], shape.key)
            continue
        result[parsed["key"]] = parsed["value"]
    _check_constraints(shape, result, path, problems)
    return result


def _parse_scalar(kind: str, shape: Shape, text: str, path: str, problems: _Problems) -> Any:
    if kind in ("string", "character"):
        return text
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        problems.add(path, "Member must be a boolean (true or false)", text, shape)
        return None
    if kind in ("integer", "long", "short", "byte"):
        low, high = _INT_BOUNDS.get(kind, _INT_BOUNDS["integer"])
        if _INT_RE.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        problems.add(path, f"Member must be a valid {kind}", text, shape)
        return None
    if kind in ("float", "double"):
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
        if _FLOAT_RE.fullmatch(text):
            return float(text)
        problems.add(path, f"Member must be a valid {kind}", text, shape)
        return None
    if kind == "timestamp":
        parsed = _parse_timestamp(text)
        if parsed is None:
            problems.add(path, "Member must be an ISO 8601 timestamp", text, shape)
        return parsed
    if kind == "blob":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            problems.add(path, "Member must be base64-encoded", text, shape)
            return None
    return text


def _parse_timestamp(text: str) -> dt.datetime | None:
    try:
        if _EPOCH_RE.fullmatch(text):
            return dt.datetime.fromtimestamp(float(text), tz=dt.UTC)
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _check_constraints(shape: Shape, value: object, path: str, problems: _Problems) -> None:
    metadata: Mapping[str, Any] = shape.metadata
    kind = str(shape.type_name)
    if kind in ("string", "list", "map", "blob", "character") and isinstance(
        value, str | list | dict | bytes
    ):
        size = len(value)
        if "min" in metadata and size < metadata["min"]:
            problems.add(
                path,
                f"Member must have length greater than or equal to {metadata['min']}",
                value,
                shape,
            )
        if "max" in metadata and size > metadata["max"]:
            problems.add(
                path,
                f"Member must have length less than or equal to {metadata['max']}",
                value,
                shape,
            )
    if kind in ("integer", "long", "short", "byte", "float", "double") and isinstance(
        value, int | float
    ):
        if "min" in metadata and value < metadata["min"]:
            problems.add(
                path,
                f"Member must have value greater than or equal to {metadata['min']}",
                value,
                shape,
            )
        if "max" in metadata and value > metadata["max"]:
            problems.add(
                path,
                f"Member must have value less than or equal to {metadata['max']}",
                value,
                shape,
            )
    if isinstance(value, str):
        enum_values: list[str] | None = metadata.get("enum")
        if enum_values and value not in enum_values:
            problems.add(
                path,
                "Member must satisfy enum value set: [" + ", ".join(enum_values) + "]",
                value,
                shape,
            )
        source: str | None = metadata.get("pattern")
        if source is not None:
            pattern = _compile_java_pattern(source)
            if pattern is not None and not pattern.fullmatch(value):
                problems.add(
                    path,
                    f"Member must satisfy regular expression pattern: {source}",
                    value,
                    shape,
                )


# --------------------------------------------------------------------------------------------
# Java regular expressions from the model
# --------------------------------------------------------------------------------------------

_POSIX_CLASSES: Final[Mapping[str, str]] = {
    "Lower": "a-z",
    "Upper": "A-Z",
    "ASCII": "\\x00-\\x7f",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "Punct": "!-/:-@\\[-`{-~",
    "Graph": "!-~",
    "Print": " -~",
    "Blank": " \\t",
    "Cntrl": "\\x00-\\x1f\\x7f",
    "XDigit": "0-9a-fA-F",
    "Space": " \\t\\n\\x0b\\f\\r",
}

_UNICODE_ESCAPE_RE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")


class _Untranslatable(Exception):
    """A Java pattern feature this translator does not handle."""


@lru_cache(maxsize=1)
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges per two-letter Unicode general category (one scan, done lazily)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    current = unicodedata.category("\x00")
    start = 0
    for code_point in range(1, sys.maxunicode + 1):
        category = unicodedata.category(chr(code_point))
        if category != current:
            ranges.setdefault(current, []).append((start, code_point - 1))
            current, start = category, code_point
    ranges.setdefault(current, []).append((start, sys.maxunicode))
    return ranges


def _class_body_for_property(name: str) -> str:
    """The inside of a ``[...]`` class matching Java's ``\\p{name}``."""
    if name in _POSIX_CLASSES:
        return _POSIX_CLASSES[name]
    category = name.removeprefix("Is").removeprefix("general_category=").removeprefix("gc=")
    if not re.fullmatch(r"[LMNPSZC][a-z&]?", category):
        raise _Untranslatable(name)
    category = category.rstrip("&")
    wanted: list[tuple[int, int]] = []
    for key, spans in _category_ranges().items():
        if key.startswith(category):
            wanted.extend(spans)
    wanted.sort()
    merged: list[tuple[int, int]] = []
    for low, high in wanted:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return "".join(
        f"\\U{low:08x}" if low == high else f"\\U{low:08x}-\\U{high:08x}" for low, high in merged
    )


def _join_surrogate_escapes(source: str) -> str:
    """``\\uD83D\\uDE00`` (a UTF-16 pair, as Java reads it) -> ``\\U0001f600``."""

    def pair(match: re.Match[str]) -> str:
        high, low = int(match.group(1), 16), int(match.group(2), 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return re.sub(r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})", pair, source)


def _translate_java_pattern(source: str) -> str:
    source = _join_surrogate_escapes(source)
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\":
            if i + 1 >= len(source):
                raise _Untranslatable("trailing backslash")
            escaped = source[i + 1]
            if escaped in "pP":
                match = re.match(r"\{(\^?)([A-Za-z_=&]+)\}|([A-Z])", source[i + 2 :])
                if match is None:
                    raise _Untranslatable(source[i:])
                negated = (escaped == "P") != bool(match.group(1))
                body = _class_body_for_property(match.group(2) or match.group(3))
                if in_class:
                    if negated:
                        raise _Untranslatable("negated property inside a class")
                    out.append(body)
                else:
                    out.append(("[^" if negated else "[") + body + "]")
                i += 2 + match.end()
                continue
            if escaped in "QEhHvVRXzGk":
                raise _Untranslatable(f"\\{escaped}")
            out.append(source[i : i + 2])
            i += 2
            continue
        if char == "[":
            if in_class:
                raise _Untranslatable("nested character class")
            in_class = True
            out.append(char)
            i += 1
            if source[i : i + 1] == "^":
                out.append("^")
                i += 1
            continue
        if char == "]" and in_class:
            in_class = False
        elif in_class and char in "&~|-" and source[i + 1 : i + 2] == char:
            # Java has no set operations on doubled punctuation; keep them literal for re.
            out.append("\\" + char)
            i += 1
            continue
        out.append(char)
        i += 1
    if in_class:
        raise _Untranslatable("unterminated character class")
    return "".join(out)


@lru_cache(maxsize=512)
def _compile_java_pattern(source: str) -> re.Pattern[str] | None:
    """``source`` as a Python pattern with Java's meaning, or ``None`` if it cannot be."""
    try:
        translated = _translate_java_pattern(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(translated, re.ASCII)
    except (_Untranslatable, re.error, FutureWarning, DeprecationWarning):
        return None


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def _namespace(model: ServiceModel) -> str:
    metadata: Mapping[str, Any] = model.metadata
    namespace = metadata.get("xmlNamespace")
    if namespace:
        return str(namespace)
    return f"https://{metadata.get('endpointPrefix')}.amazonaws.com/doc/{metadata['apiVersion']}/"


def _xml_text(value: str) -> str:
    return _XML_INVALID_RE.sub("\ufffd", value)


def _to_bytes(root: ET.Element) -> bytes:
    # ElementTree escapes &, < and > in text but leaves a raw CR, which parsers turn into LF.
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8").replace(
        b"\r", b"&#13;"
    )


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = _xml_text(text)
    return child


def serialize_query_response(
    operation: str, result: Mapping[str, Any], model: ServiceModel, request_id: str
) -> bytes:
    """The XML body for a successful ``operation`` whose output is ``result``.

    ``result`` holds the output shape's members by their model names (``{"User": {...}}``); a
    ``None`` value is the same as leaving the member out. Timestamps are ``datetime`` (naive ones
    are taken as UTC), blobs ``bytes``. A member the output shape does not have, or a value of the
    wrong type, raises ``ValueError``/``TypeError``: that is a bug in the caller, not the client.
    """
    if operation not in model.operation_names:
        raise ValueError(f"{operation} is not an operation of this service model")
    operation_model = model.operation_model(operation)
    name = str(operation_model.name)
    root = ET.Element(f"{name}Response", {"xmlns": _namespace(model)})
    output_shape = operation_model.output_shape
    if output_shape is not None:
        wrapper = str(output_shape.serialization.get("resultWrapper", f"{name}Result"))
        _write_structure(_sub(root, wrapper), output_shape, result, name)
    elif any(value is not None for value in result.values()):
        raise ValueError(f"{name} has no output shape but was given {sorted(result)}")
    metadata = _sub(root, "ResponseMetadata")
    _sub(metadata, "RequestId", request_id)
    return _to_bytes(root)


def serialize_query_error(
    code: str,
    message: str,
    request_id: str,
    *,
    sender: bool = True,
    namespace: str = IAM_XML_NAMESPACE,
) -> bytes:
    """The XML body of a Query-protocol error; ``sender=False`` marks a server-side fault."""
    root = ET.Element("ErrorResponse", {"xmlns": namespace})
    error = _sub(root, "Error")
    _sub(error, "Type", "Sender" if sender else "Receiver")
    _sub(error, "Code", code)
    _sub(error, "Message", message)
    _sub(root, "RequestId", request_id)
    return _to_bytes(root)


def _write_value(element: ET.Element, shape: Shape, value: object, path: str) -> None:
    kind = str(shape.type_name)
    if kind == "structure":
        _write_structure(element, shape, value, path)
    elif kind == "list":
        if not isinstance(value, Iterable) or isinstance(value, str | bytes | Mapping):
            raise TypeError(f"{path} must be a list, not {type(value).__name__}")
        member_name = str(shape.member.serialization.get("name", "member"))
        for index, item in enumerate(value, 1):
            if item is None:
                raise TypeError(f"{path}[{index}] must not be None")
            _write_value(_sub(element, member_name), shape.member, item, f"{path}[{index}]")
    elif kind == "map":
        if not isinstance(value, Mapping):
            raise TypeError(f"{path} must be a mapping, not {type(value).__name__}")
        key_name = str(shape.key.serialization.get("name", "key"))
        value_name = str(shape.value.serialization.get("name", "value"))
        for key, item in value.items():
            entry = _sub(element, "entry")
            _write_value(_sub(entry, key_name), shape.key, key, f"{path} key")
            _write_value(_sub(entry, value_name), shape.value, item, f"{path}[{key!r}]")
    else:
        element.text = _xml_text(_scalar_text(kind, shape, value, path))


def _write_structure(element: ET.Element, shape: Shape, value: object, path: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{path} must be a mapping, not {type(value).__name__}")
    members: Mapping[str, Shape] = shape.members
    for member_name, member_value in value.items():
        member_path = f"{path}.{member_name}"
        if member_name not in members:
            raise ValueError(f"{member_path} is not a member of {shape.name}")
        if member_value is None:
            continue
        member_shape = members[member_name]
        wire_name = _wire_name(member_name, member_shape)
        if member_shape.serialization.get("xmlAttribute"):
            kind = str(member_shape.type_name)
            text = _scalar_text(kind, member_shape, member_value, member_path)
            element.set(wire_name, _xml_text(text))
        elif member_shape.type_name in ("list", "map") and member_shape.serialization.get(
            "flattened"
        ):
            _write_flattened(element, wire_name, member_shape, member_value, member_path)
        else:
            _write_value(_sub(element, wire_name), member_shape, member_value, member_path)


def _write_flattened(
    parent: ET.Element, wire_name: str, shape: Shape, value: object, path: str
) -> None:
    """Flattened lists/maps repeat ``wire_name`` directly under the parent."""
    if shape.type_name == "list":
        if not isinstance(value, Iterable) or isinstance(value, str | bytes | Mapping):
            raise TypeError(f"{path} must be a list, not {type(value).__name__}")
        for index, item in enumerate(value, 1):
            _write_value(_sub(parent, wire_name), shape.member, item, f"{path}[{index}]")
        return
    if not isinstance(value, Mapping):
        raise TypeError(f"{path} must be a mapping, not {type(value).__name__}")
    key_name = str(shape.key.serialization.get("name", "key"))
    value_name = str(shape.value.serialization.get("name", "value"))
    for key, item in value.items():
        entry = _sub(parent, wire_name)
        _write_value(_sub(entry, key_name), shape.key, key, f"{path} key")
        _write_value(_sub(entry, value_name), shape.value, item, f"{path}[{key!r}]")


def _scalar_text(kind: str, shape: Shape, value: object, path: str) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if kind in ("string", "character"):
        if isinstance(value, str):
            return value
    elif kind == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
    elif kind in ("integer", "long", "short", "byte"):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif kind in ("float", "double"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isnan(number):
                return "NaN"
            if math.isinf(number):
                return "Infinity" if number > 0 else "-Infinity"
            return repr(number)
    elif kind == "timestamp":
        if isinstance(value, dt.datetime):
            return _timestamp_text(value, shape.serialization.get("timestampFormat"))
    elif kind == "blob":
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(value).decode("ascii")
    else:
        return str(value)
    raise TypeError(f"{path} must be a {kind}, not {type(value).__name__}: {value!r}")


def _timestamp_text(value: dt.datetime, timestamp_format: str | None) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    if timestamp_format == "unixTimestamp":
        seconds = value.timestamp()
        return str(int(seconds)) if seconds.is_integer() else repr(seconds)
    if timestamp_format == "rfc822":
        return email.utils.format_datetime(value, usegmt=True)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
