"""Which instances a deployment group targets: tag filters and tag sets (codedeploy-spec §3.3).

A filter list is an OR: an instance matches when it matches any filter. A tag set is an AND of
such lists: the instance must match at least one filter in every group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opendeploy.core.errors import ServiceError

__all__ = [
    "MAX_TAG_SET_GROUPS",
    "check_tag_filters",
    "check_tag_set",
    "matches_any",
    "matches_filter",
    "matches_tag_set",
]

MAX_TAG_SET_GROUPS = 3
MAX_FILTERS_PER_GROUP = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
FILTER_TYPES = ("KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE")

TagFilter = Mapping[str, Any]


def matches_filter(tags: Mapping[str, str], tag_filter: TagFilter) -> bool:
    key, value = tag_filter.get("Key"), tag_filter.get("Value")
    kind = tag_filter.get("Type") or ("KEY_AND_VALUE" if key and value else "KEY_ONLY")
    if kind == "KEY_ONLY":
        return key in tags
    if kind == "VALUE_ONLY":
        return value in tags.values()
    return isinstance(key, str) and tags.get(key) == value


def matches_any(tags: Mapping[str, str], filters: Sequence[TagFilter]) -> bool:
    return any(matches_filter(tags, tag_filter) for tag_filter in filters)


def matches_tag_set(tags: Mapping[str, str], groups: Sequence[Sequence[TagFilter]]) -> bool:
    return bool(groups) and all(matches_any(tags, group) for group in groups)


def check_tag_filters(filters: Sequence[TagFilter], *, field: str, error_code: str) -> None:
    """Refuse filters that could never mean what the user wrote."""
    for index, tag_filter in enumerate(filters):
        where = f"{field}[{index}]"
        kind = tag_filter.get("Type")
        key, value = tag_filter.get("Key"), tag_filter.get("Value")
        if kind is not None and kind not in FILTER_TYPES:
            raise ServiceError(error_code, f"{where}.Type {kind!r} is not one of {FILTER_TYPES}.")
        if kind == "KEY_ONLY" and not key:
            raise ServiceError(error_code, f"{where} is KEY_ONLY but has no Key.")
        if kind == "VALUE_ONLY" and not value:
            raise ServiceError(error_code, f"{where} is VALUE_ONLY but has no Value.")
        if kind in (None, "KEY_AND_VALUE") and not key:
            raise ServiceError(error_code, f"{where} has no Key.")
        if key is not None and len(key) > MAX_TAG_KEY:
            raise ServiceError(error_code, f"{where}.Key is longer than {MAX_TAG_KEY} characters.")
        if value is not None and len(value) > MAX_TAG_VALUE:
            raise ServiceError(
                error_code, f"{where}.Value is longer than {MAX_TAG_VALUE} characters."
            )


def check_tag_set(groups: Sequence[Sequence[TagFilter]], *, field: str, error_code: str) -> None:
    if len(groups) > MAX_TAG_SET_GROUPS:
        raise ServiceError(
            "TagSetListLimitExceededException",
            f"{field} has {len(groups)} tag groups; the limit is {MAX_TAG_SET_GROUPS}.",
        )
    for index, group in enumerate(groups):
        if len(group) > MAX_FILTERS_PER_GROUP:
            raise ServiceError(
                error_code,
                f"{field}[{index}] has {len(group)} tags; the limit is {MAX_FILTERS_PER_GROUP}.",
            )
        check_tag_filters(group, field=f"{field}[{index}]", error_code=error_code)
