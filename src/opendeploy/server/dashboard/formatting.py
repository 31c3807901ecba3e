"""Jinja filters: times in UTC, ages, durations, status classes, revision summaries."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from jinja2 import Undefined

__all__ = ["FILTERS", "ago", "duration", "event_duration", "revision_label", "status_class", "utc"]


def _given(value: Any) -> Any:
    """None for a member a template asked for but the dict does not have."""
    return None if isinstance(value, Undefined) else value


def utc(epoch: float | None, seconds: bool = True) -> str:
    epoch = _given(epoch)
    if epoch is None:
        return "—"
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"


def iso(epoch: float | None) -> str:
    epoch = _given(epoch)
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _span(seconds: float) -> str:
    if seconds < 0:
        seconds = 0
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def ago(epoch: float | None, now: float) -> str:
    epoch = _given(epoch)
    if epoch is None:
        return "—"
    seconds = now - epoch
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def duration(start: float | None, end: float | None, now: float | None = None) -> str:
    """How long something took, or has been running (``end`` None: until ``now``)."""
    start, end, now = _given(start), _given(end), _given(now)
    if start is None:
        return ""
    finish = end if end is not None else now
    if finish is None:
        return ""
    return _span(finish - start)


def event_duration(event: Mapping[str, Any], now: float) -> str:
    status = event.get("status")
    end = event.get("endTime")
    if end is None and status != "InProgress":
        return ""
    return duration(event.get("startTime"), end, now)


def status_class(status: str | None) -> str:
    return "st-" + (status or "unknown").lower()


def revision_label(revision: Mapping[str, Any] | None) -> str:
    """One line naming a revision the way its type does."""
    revision = _given(revision)
    if not revision:
        return "—"
    kind = revision.get("revisionType")
    if kind == "S3":
        s3 = revision.get("s3Location") or {}
        label = f"s3://{s3.get('bucket', '?')}/{s3.get('key', '?')}"
        if s3.get("version"):
            label += f" (version {s3['version']})"
        return label
    if kind == "GitHub":
        github = revision.get("gitHubLocation") or {}
        return f"GitHub {github.get('repository', '?')} @ {str(github.get('commitId', '?'))[:12]}"
    if kind in ("String", "AppSpecContent"):
        content = revision.get("string") or revision.get("appSpecContent") or {}
        digest = content.get("sha256")
        return f"inline appspec{f' (sha256 {digest[:12]}…)' if digest else ''}"
    return str(kind or "unknown revision")


def short_sha(revision: Mapping[str, Any] | None) -> str:
    """The bundle's content hash when the location carries one (pushed bundles do)."""
    revision = _given(revision)
    if not revision:
        return ""
    key = str((revision.get("s3Location") or {}).get("key", ""))
    tail = key.rsplit("/", 1)[-1]
    stem = tail.split(".", 1)[0]
    if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem):
        return stem[:12]
    return ""


def spaced(name: str) -> str:
    """``ApplicationStop`` -> ``Application Stop``, so grid headers can wrap."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)


def revision_short(revision: Mapping[str, Any] | None) -> str:
    """A pushed bundle by its hash prefix; any other revision by its label."""
    sha = short_sha(revision)
    return f"bundle {sha}" if sha else revision_label(revision)


FILTERS = {
    "revision_short": revision_short,
    "spaced": spaced,
    "utc": utc,
    "iso": iso,
    "ago": ago,
    "duration": duration,
    "event_duration": event_duration,
    "status_class": status_class,
    "revision_label": revision_label,
    "short_sha": short_sha,
}
