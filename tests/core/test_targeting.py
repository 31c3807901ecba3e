"""Tag filters and tag sets (codedeploy-spec §3.3): which instances a group targets."""

from __future__ import annotations

from typing import Any

import pytest

from opendeploy.core.errors import ServiceError
from opendeploy.core.targeting import (
    MAX_TAG_SET_GROUPS,
    check_tag_filters,
    check_tag_set,
    matches_any,
    matches_filter,
    matches_tag_set,
)

TAGS = {"env": "prod", "role": "web", "owner": ""}


@pytest.mark.parametrize(
    ("tag_filter", "expected"),
    [
        ({"Key": "env", "Type": "KEY_ONLY"}, True),
        ({"Key": "owner", "Type": "KEY_ONLY"}, True),
        ({"Key": "prod", "Type": "KEY_ONLY"}, False),
        ({"Key": "env", "Value": "dev", "Type": "KEY_ONLY"}, True),
        ({"Value": "web", "Type": "VALUE_ONLY"}, True),
        ({"Value": "role", "Type": "VALUE_ONLY"}, False),
        ({"Key": "env", "Value": "web", "Type": "VALUE_ONLY"}, True),
        ({"Key": "env", "Value": "prod", "Type": "KEY_AND_VALUE"}, True),
        ({"Key": "env", "Value": "web", "Type": "KEY_AND_VALUE"}, False),
        ({"Key": "missing", "Value": "prod", "Type": "KEY_AND_VALUE"}, False),
        ({"Key": "Env", "Value": "prod", "Type": "KEY_AND_VALUE"}, False),
        ({"Key": "env", "Value": "Prod", "Type": "KEY_AND_VALUE"}, False),
        # No Type: both given means the exact pair, a key alone means the key.
        ({"Key": "env", "Value": "prod"}, True),
        ({"Key": "env", "Value": "dev"}, False),
        ({"Key": "role"}, True),
        ({"Key": "nope"}, False),
    ],
)
def test_matches_filter(tag_filter: dict[str, str], expected: bool) -> None:
    assert matches_filter(TAGS, tag_filter) is expected


def test_an_instance_without_tags_matches_nothing() -> None:
    assert not matches_filter({}, {"Key": "env", "Type": "KEY_ONLY"})
    assert not matches_filter({}, {"Value": "", "Type": "VALUE_ONLY"})
    assert not matches_any({}, [{"Key": "env"}])
    assert not matches_tag_set({}, [[{"Key": "env"}]])


def test_matches_any_is_an_or() -> None:
    no, yes = {"Key": "nope"}, {"Key": "env", "Value": "prod"}
    assert matches_any(TAGS, [no, yes])
    assert matches_any(TAGS, [yes, no])
    assert not matches_any(TAGS, [no, {"Value": "nope", "Type": "VALUE_ONLY"}])
    assert not matches_any(TAGS, [])


def test_tag_set_is_an_and_of_ors() -> None:
    env_prod = [{"Key": "env", "Value": "prod"}, {"Key": "env", "Value": "staging"}]
    web_or_db = [{"Value": "web", "Type": "VALUE_ONLY"}, {"Value": "db", "Type": "VALUE_ONLY"}]
    windows = [{"Key": "os", "Value": "windows"}]
    assert matches_tag_set(TAGS, [env_prod])
    assert matches_tag_set(TAGS, [env_prod, web_or_db])
    assert not matches_tag_set(TAGS, [env_prod, web_or_db, windows])
    assert not matches_tag_set(TAGS, [windows, env_prod])
    # An empty set selects nothing rather than everything.
    assert not matches_tag_set(TAGS, [])
    # A tag group with no filters can never be satisfied.
    assert not matches_tag_set(TAGS, [env_prod, []])


@pytest.mark.parametrize(
    ("tag_filter", "fragments"),
    [
        ({"Key": "k", "Type": "KEY_OR_VALUE"}, ("f[0].Type", "KEY_OR_VALUE")),
        ({"Value": "v", "Type": "KEY_ONLY"}, ("f[0]", "KEY_ONLY", "no Key")),
        ({"Key": "", "Type": "KEY_ONLY"}, ("KEY_ONLY", "no Key")),
        ({"Key": "k", "Type": "VALUE_ONLY"}, ("VALUE_ONLY", "no Value")),
        ({"Value": "v", "Type": "KEY_AND_VALUE"}, ("f[0]", "no Key")),
        ({"Value": "v"}, ("f[0]", "no Key")),
        ({"Key": "k" * 129}, ("Key", "128")),
        ({"Key": "k", "Value": "v" * 257}, ("Value", "256")),
    ],
)
def test_check_tag_filters_refuses(tag_filter: dict[str, str], fragments: tuple[str, ...]) -> None:
    with pytest.raises(ServiceError) as caught:
        check_tag_filters([tag_filter], field="f", error_code="InvalidTagException")
    assert caught.value.code == "InvalidTagException"
    for fragment in fragments:
        assert fragment in caught.value.message


def test_check_tag_filters_names_the_offending_index() -> None:
    good: dict[str, Any] = {"Key": "k", "Value": "v", "Type": "KEY_AND_VALUE"}
    with pytest.raises(ServiceError) as caught:
        check_tag_filters([good, good, {"Type": "KEY_ONLY"}], field="x", error_code="E")
    assert caught.value.code == "E"
    assert "x[2]" in caught.value.message


def test_check_tag_filters_accepts_the_limits() -> None:
    check_tag_filters(
        [
            {"Key": "k" * 128, "Value": "v" * 256, "Type": "KEY_AND_VALUE"},
            {"Key": "k", "Type": "KEY_ONLY"},
            {"Value": "v", "Type": "VALUE_ONLY"},
            {"Key": "k"},
        ],
        field="f",
        error_code="E",
    )
    check_tag_filters([], field="f", error_code="E")


def test_check_tag_set_limits() -> None:
    group = [{"Key": "k", "Value": "v"}]
    check_tag_set([group] * MAX_TAG_SET_GROUPS, field="s", error_code="E")
    with pytest.raises(ServiceError) as caught:
        check_tag_set([group] * (MAX_TAG_SET_GROUPS + 1), field="s", error_code="E")
    assert caught.value.code == "TagSetListLimitExceededException"
    assert "s has 4 tag groups" in caught.value.message
    check_tag_set([[{"Key": f"k{i}"} for i in range(10)]], field="s", error_code="E")
    with pytest.raises(ServiceError) as caught:
        check_tag_set([group, [{"Key": f"k{i}"} for i in range(11)]], field="s", error_code="E")
    assert caught.value.code == "E"
    assert "s[1] has 11 tags" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        check_tag_set([group, [{"Type": "VALUE_ONLY"}]], field="s", error_code="E")
    assert "s[1][0]" in caught.value.message
