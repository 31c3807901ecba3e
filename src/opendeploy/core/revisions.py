"""Revision locations: what identifies a revision, and which locations are well-formed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from opendeploy.core.errors import ServiceError

__all__ = ["check_revision", "revision_identity", "with_sha256"]

_SUB_OBJECT = {
    "S3": "s3Location",
    "GitHub": "gitHubLocation",
    "String": "string",
    "AppSpecContent": "appSpecContent",
}
ARCHIVE_BUNDLE_TYPES = ("tar", "tgz", "zip")


def _invalid(message: str) -> ServiceError:
    return ServiceError("InvalidRevisionException", message)


def check_revision(location: Mapping[str, Any], *, compute_platform: str = "Server") -> None:
    """Refuse a RevisionLocation that names no usable revision (codedeploy-spec §3.2)."""
    kind = location.get("revisionType")
    key = _SUB_OBJECT.get(kind or "")
    if key is None:
        raise _invalid(f"revision.revisionType {kind!r} is not one of {', '.join(_SUB_OBJECT)}.")
    body = location.get(key)
    if not isinstance(body, Mapping):
        raise _invalid(f"A {kind} revision needs revision.{key}.")
    if kind == "S3":
        for member in ("bucket", "key"):
            if not body.get(member):
                raise _invalid(f"revision.s3Location.{member} is required.")
        bundle = body.get("bundleType")
        if compute_platform == "Server" and bundle in ("YAML", "JSON"):
            raise _invalid(
                f"revision.s3Location.bundleType {bundle} is for Lambda and ECS; a Server "
                f"revision is an archive ({', '.join(ARCHIVE_BUNDLE_TYPES)})."
            )
    elif kind == "GitHub":
        for member in ("repository", "commitId"):
            if not body.get(member):
                raise _invalid(f"revision.gitHubLocation.{member} is required.")
        if compute_platform != "Server":
            raise _invalid("GitHub revisions are for the Server compute platform only.")
    else:
        content = body.get("content")
        if not isinstance(content, str) or not content:
            raise _invalid(f"revision.{key}.content is required.")
        given = body.get("sha256")
        if given and given.lower() != _sha256(content):
            raise _invalid(f"revision.{key}.sha256 does not match the sha256 of its content.")
        if kind == "String" and compute_platform != "Lambda":
            raise _invalid("String revisions are for the Lambda compute platform only.")
        if kind == "AppSpecContent" and compute_platform == "Server":
            raise _invalid("AppSpecContent revisions are for the Lambda and ECS platforms only.")


def revision_identity(location: Mapping[str, Any]) -> str:
    """A canonical string that is equal for two locations naming the same revision."""
    kind = location["revisionType"]
    body = location[_SUB_OBJECT[kind]]
    if kind == "S3":
        parts = [
            body["bucket"],
            body["key"],
            body.get("bundleType") or "",
            body.get("version") or "",
        ]
        parts.append((body.get("eTag") or "").strip('"'))
    elif kind == "GitHub":
        parts = [body["repository"], body["commitId"]]
    else:
        # Hex digests compare case-insensitively: an upper-case sha256 names the same content.
        parts = [(body.get("sha256") or _sha256(body["content"])).lower()]
    return "|".join([kind, *parts])


def with_sha256(location: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a String/AppSpecContent location with its sha256 filled in."""
    result = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in location.items()}
    kind = result.get("revisionType")
    if kind in ("String", "AppSpecContent"):
        body = result[_SUB_OBJECT[kind]]
        body.setdefault("sha256", _sha256(body["content"]))
    return result


def _sha256(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()
