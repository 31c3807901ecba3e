"""Applications through a real boto3 client: CreateApplication, GetApplication,
BatchGetApplications, ListApplications, UpdateApplication, DeleteApplication
(codedeploy-spec §1.3, §1.4, §2, §3.1, §10)."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apitools import api_error, assert_no_nulls, forged_token, raw_call
from botocore.exceptions import ClientError

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
S3_REVISION = {
    "revisionType": "S3",
    "s3Location": {"bucket": "artifacts", "key": "app/build-1.zip", "bundleType": "zip"},
}


# -- helpers ---------------------------------------------------------------------------------


_CLIENTS: dict[str, Any] = {}


@pytest.fixture
def codedeploy(server: Any) -> Any:
    """conftest's admin client, but built once per server rather than once per test: making a
    boto3 client parses botocore's JSON models, about 0.1 s of CPU each time."""
    client = _CLIENTS.get(server.endpoint)
    if client is None:
        client = _CLIENTS[server.endpoint] = server.client("codedeploy")
    return client


def list_all_applications(codedeploy: Any) -> list[list[str]]:
    pages = codedeploy.get_paginator("list_applications").paginate()
    return [page["applications"] for page in pages]


def tags_of(codedeploy: Any, arn: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = codedeploy.list_tags_for_resource(ResourceArn=arn)["Tags"]
    return tags


@pytest.fixture
def app_arn(server: Any) -> Callable[[str], str]:
    return lambda name: f"arn:aws:codedeploy:us-east-1:{server.account_id}:application:{name}"


@pytest.fixture
def group_arn(server: Any) -> Callable[[str, str], str]:
    prefix = f"arn:aws:codedeploy:us-east-1:{server.account_id}:deploymentgroup"
    return lambda app, group: f"{prefix}:{app}/{group}"


@pytest.fixture
def application(codedeploy: Any, unique: Callable[[str], str]) -> Iterator[str]:
    name = unique("app")
    codedeploy.create_application(applicationName=name)
    yield name


# -- CreateApplication / GetApplication ----------------------------------------------------------


def test_create_returns_uuid_and_get_reports_application_info(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    name = unique("app")
    before = dt.datetime.now(dt.UTC)
    created, created_raw = raw_call(codedeploy, "create_application", applicationName=name)
    after = dt.datetime.now(dt.UTC)
    application_id = created["applicationId"]
    assert str(uuid.UUID(application_id)) == application_id
    assert set(created_raw) == {"applicationId"}

    got, raw = raw_call(codedeploy, "get_application", applicationName=name)
    info = got["application"]
    assert info["applicationId"] == application_id
    assert info["applicationName"] == name
    assert info["computePlatform"] == "Server"
    assert info["linkedToGitHub"] is False
    assert isinstance(info["createTime"], dt.datetime)
    assert info["createTime"].tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= info["createTime"] <= after + dt.timedelta(seconds=1)
    # No GitHub account: the member is left out, not null.
    assert "gitHubAccountName" not in info
    assert set(raw["application"]) == {
        "applicationId",
        "applicationName",
        "createTime",
        "linkedToGitHub",
        "computePlatform",
    }
    assert isinstance(raw["application"]["createTime"], int | float)
    assert_no_nulls(raw)


@pytest.mark.parametrize("platform", ["Server", "Lambda", "ECS"])
def test_create_keeps_compute_platform(
    codedeploy: Any, unique: Callable[[str], str], platform: str
) -> None:
    name = unique("app")
    codedeploy.create_application(applicationName=name, computePlatform=platform)
    info = codedeploy.get_application(applicationName=name)["application"]
    assert info["computePlatform"] == platform


def test_create_rejects_unknown_compute_platform(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    name = unique("app")
    code, message = api_error(
        codedeploy.create_application, applicationName=name, computePlatform="Mainframe"
    )
    assert code == "InvalidComputePlatformException"
    assert "computePlatform" in message
    assert "Mainframe" in message
    code, _ = api_error(codedeploy.get_application, applicationName=name)
    assert code == "ApplicationDoesNotExistException"


def test_create_duplicate_name_is_already_exists(codedeploy: Any, application: str) -> None:
    first_id = codedeploy.get_application(applicationName=application)["application"][
        "applicationId"
    ]
    code, message = api_error(
        codedeploy.create_application, applicationName=application, computePlatform="Lambda"
    )
    assert code == "ApplicationAlreadyExistsException"
    assert application in message
    info = codedeploy.get_application(applicationName=application)["application"]
    assert info["applicationId"] == first_id
    assert info["computePlatform"] == "Server"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("has space", "has space"),
        ("slash/inside", "slash/inside"),
        ("colon:inside", "colon:inside"),
        ("ünïcode", "ünïcode"),
        ("x" * 101, "100"),
    ],
)
def test_create_rejects_invalid_names(codedeploy: Any, name: str, fragment: str) -> None:
    code, message = api_error(codedeploy.create_application, applicationName=name)
    assert code == "InvalidApplicationNameException"
    assert fragment in message


def test_create_accepts_every_allowed_character_and_100_chars(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    special = unique("A+=,.@_-z9")
    codedeploy.create_application(applicationName=special)
    assert (
        codedeploy.get_application(applicationName=special)["application"]["applicationName"]
        == special
    )
    longest = unique("long")
    longest += "x" * (100 - len(longest))
    codedeploy.create_application(applicationName=longest)
    assert (
        codedeploy.get_application(applicationName=longest)["application"]["applicationName"]
        == longest
    )


def test_create_with_tags_stores_them(
    codedeploy: Any, unique: Callable[[str], str], app_arn: Callable[[str], str]
) -> None:
    name = unique("app")
    codedeploy.create_application(
        applicationName=name,
        tags=[{"Key": "team", "Value": "payments"}, {"Key": "env", "Value": ""}],
    )
    assert tags_of(codedeploy, app_arn(name)) == [
        {"Key": "env", "Value": ""},
        {"Key": "team", "Value": "payments"},
    ]


@pytest.mark.parametrize(
    ("tags", "fragment"),
    [
        ([{"Value": "no-key"}], "Key"),
        ([{"Key": "aws:reserved", "Value": "x"}], "aws:"),
        ([{"Key": "k" * 129, "Value": "x"}], "128"),
    ],
)
def test_create_with_bad_tags_creates_nothing(
    codedeploy: Any, unique: Callable[[str], str], tags: list[dict[str, str]], fragment: str
) -> None:
    name = unique("app")
    code, message = api_error(codedeploy.create_application, applicationName=name, tags=tags)
    assert code == "InvalidTagsToAddException"
    assert fragment in message
    code, _ = api_error(codedeploy.get_application, applicationName=name)
    assert code == "ApplicationDoesNotExistException"


def test_get_missing_application_uses_aws_message(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    name = unique("missing")
    code, message = api_error(codedeploy.get_application, applicationName=name)
    assert code == "ApplicationDoesNotExistException"
    assert message == f"No application found for name: {name}"


def test_get_invalid_name(codedeploy: Any) -> None:
    code, message = api_error(codedeploy.get_application, applicationName="bad name")
    assert code == "InvalidApplicationNameException"
    assert "bad name" in message


def test_names_are_case_sensitive(codedeploy: Any, unique: Callable[[str], str]) -> None:
    name = unique("CaseApp")
    codedeploy.create_application(applicationName=name)
    code, _ = api_error(codedeploy.get_application, applicationName=name.lower())
    assert code == "ApplicationDoesNotExistException"
    codedeploy.create_application(applicationName=name.lower())
    upper = codedeploy.get_application(applicationName=name)["application"]
    lower = codedeploy.get_application(applicationName=name.lower())["application"]
    assert upper["applicationId"] != lower["applicationId"]


# -- BatchGetApplications ----------------------------------------------------------------------


def test_batch_get_returns_requested_order_without_duplicates(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    names = [unique("batch") for _ in range(3)]
    platforms = ["Server", "Lambda", "ECS"]
    for name, platform in zip(names, platforms, strict=True):
        codedeploy.create_application(applicationName=name, computePlatform=platform)
    wanted = [names[2], names[0], names[2], names[1]]
    result, raw = raw_call(codedeploy, "batch_get_applications", applicationNames=wanted)
    infos = result["applicationsInfo"]
    assert [info["applicationName"] for info in infos] == [names[2], names[0], names[1]]
    assert [info["computePlatform"] for info in infos] == ["ECS", "Server", "Lambda"]
    for info in infos:
        assert isinstance(info["createTime"], dt.datetime)
        assert info["linkedToGitHub"] is False
        single = codedeploy.get_application(applicationName=info["applicationName"])
        assert single["application"] == info
    assert_no_nulls(raw)


def test_batch_get_names_the_missing_applications(
    codedeploy: Any, application: str, unique: Callable[[str], str]
) -> None:
    missing = unique("missing")
    code, message = api_error(
        codedeploy.batch_get_applications, applicationNames=[application, missing]
    )
    assert code == "ApplicationDoesNotExistException"
    assert missing in message
    assert application not in message


def test_batch_get_limit_is_100(codedeploy: Any, application: str) -> None:
    # 100 names is allowed (duplicates collapse into one answer) ...
    result = codedeploy.batch_get_applications(applicationNames=[application] * 100)
    assert [info["applicationName"] for info in result["applicationsInfo"]] == [application]
    # ... 101 is not, whether or not the names exist.
    code, message = api_error(
        codedeploy.batch_get_applications, applicationNames=[application] * 101
    )
    assert code == "BatchLimitExceededException"
    assert "101" in message
    assert "100" in message


def test_batch_get_empty_list_is_name_required(codedeploy: Any) -> None:
    code, message = api_error(codedeploy.batch_get_applications, applicationNames=[])
    assert code == "ApplicationNameRequiredException"
    assert "applicationNames" in message


def test_batch_get_invalid_name(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.batch_get_applications, applicationNames=[application, "bad*name"]
    )
    assert code == "InvalidApplicationNameException"
    assert "bad*name" in message


# -- ListApplications ------------------------------------------------------------------------


def create_many(codedeploy: Any, names: list[str]) -> None:
    """Create applications concurrently (boto3 clients are thread-safe)."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda name: codedeploy.create_application(applicationName=name), names))


def delete_many(codedeploy: Any, names: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda name: codedeploy.delete_application(applicationName=name), names))


def test_list_applications_pages_through_more_than_100(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    prefix = unique("pg")
    names = [f"{prefix}-{index:03d}" for index in range(101)]
    create_many(codedeploy, names)
    try:
        first = codedeploy.list_applications()
        assert len(first["applications"]) == 100
        assert isinstance(first["nextToken"], str)

        pages = list_all_applications(codedeploy)
        assert len(pages) >= 2
        assert all(0 < len(page) <= 100 for page in pages)
        assert pages[0] == first["applications"]
        listed = [name for page in pages for name in page]
        assert len(listed) == len(set(listed)), "an application was listed twice"
        assert set(names) <= set(listed)

        # Following the tokens by hand: the last page carries no token at all, not a null one.
        token = first["nextToken"]
        for page in pages[1:-1]:
            following = codedeploy.list_applications(nextToken=token)
            assert following["applications"] == page
            token = following["nextToken"]
        last, raw = raw_call(codedeploy, "list_applications", nextToken=token)
        assert last["applications"] == pages[-1]
        assert "nextToken" not in last
        assert "nextToken" not in raw

        # A token stays usable when the application it stopped at is deleted meanwhile.
        boundary = first["applications"][-1]
        codedeploy.delete_application(applicationName=boundary)
        rest: list[str] = []
        token = first["nextToken"]
        while token:
            page = codedeploy.list_applications(nextToken=token)
            rest += page["applications"]
            token = page.get("nextToken")
        assert rest == listed[100:]
    finally:
        delete_many(codedeploy, names)
    remaining = {name for page in list_all_applications(codedeploy) for name in page}
    assert not remaining & set(names)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "%%%",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        forged_token("deploymentconfigs", "a"),
        forged_token("applications", 5),
        forged_token("applications", {"name": "x"}),
    ],
    ids=[
        "garbage",
        "not-base64",
        "not-an-object",
        "foreign-scope",
        "int-position",
        "dict-position",
    ],
)
def test_list_applications_bad_token(codedeploy: Any, token: str) -> None:
    code, message = api_error(codedeploy.list_applications, nextToken=token)
    assert code == "InvalidNextTokenException"
    assert "nextToken" in message


def test_list_applications_bad_token_through_paginator(codedeploy: Any) -> None:
    paginator = codedeploy.get_paginator("list_applications")
    with pytest.raises(ClientError) as caught:
        list(paginator.paginate(PaginationConfig={"StartingToken": "bogus"}))
    assert caught.value.response["Error"]["Code"] == "InvalidNextTokenException"


# -- UpdateApplication -----------------------------------------------------------------------


def test_rename_moves_everything_to_the_new_name(
    codedeploy: Any,
    unique: Callable[[str], str],
    app_arn: Callable[[str], str],
    group_arn: Callable[[str, str], str],
) -> None:
    old, new = unique("old"), unique("new")
    application_id = codedeploy.create_application(
        applicationName=old, computePlatform="Server", tags=[{"Key": "k", "Value": "v"}]
    )["applicationId"]
    before = codedeploy.get_application(applicationName=old)["application"]
    codedeploy.create_deployment_group(
        applicationName=old,
        deploymentGroupName="blue",
        serviceRoleArn=ROLE,
        tags=[{"Key": "g", "Value": "1"}],
    )
    codedeploy.register_application_revision(applicationName=old, revision=S3_REVISION)

    result, raw = raw_call(
        codedeploy, "update_application", applicationName=old, newApplicationName=new
    )
    assert set(result) == {"ResponseMetadata"}
    assert raw == {}

    code, message = api_error(codedeploy.get_application, applicationName=old)
    assert code == "ApplicationDoesNotExistException"
    assert old in message
    after = codedeploy.get_application(applicationName=new)["application"]
    assert after == {**before, "applicationName": new}
    assert after["applicationId"] == application_id

    group = codedeploy.get_deployment_group(applicationName=new, deploymentGroupName="blue")
    assert group["deploymentGroupInfo"]["applicationName"] == new
    assert codedeploy.list_deployment_groups(applicationName=new)["deploymentGroups"] == ["blue"]
    revisions = codedeploy.list_application_revisions(applicationName=new)["revisions"]
    assert revisions == [S3_REVISION]
    assert tags_of(codedeploy, app_arn(new)) == [{"Key": "k", "Value": "v"}]
    assert tags_of(codedeploy, group_arn(new, "blue")) == [{"Key": "g", "Value": "1"}]

    # The old name is free again, and the new application starts empty.
    codedeploy.create_application(applicationName=old)
    assert codedeploy.list_deployment_groups(applicationName=old)["deploymentGroups"] == []
    assert codedeploy.list_application_revisions(applicationName=old)["revisions"] == []
    assert tags_of(codedeploy, app_arn(old)) == []


def test_rename_onto_existing_name_is_refused(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    first, second = unique("first"), unique("second")
    first_id = codedeploy.create_application(applicationName=first)["applicationId"]
    second_id = codedeploy.create_application(applicationName=second)["applicationId"]
    code, message = api_error(
        codedeploy.update_application, applicationName=first, newApplicationName=second
    )
    assert code == "ApplicationAlreadyExistsException"
    assert second in message
    assert (
        codedeploy.get_application(applicationName=first)["application"]["applicationId"]
        == first_id
    )
    assert (
        codedeploy.get_application(applicationName=second)["application"]["applicationId"]
        == second_id
    )


def test_rename_to_same_name_is_a_no_op(codedeploy: Any, application: str) -> None:
    before = codedeploy.get_application(applicationName=application)["application"]
    codedeploy.update_application(applicationName=application, newApplicationName=application)
    assert codedeploy.get_application(applicationName=application)["application"] == before


def test_rename_missing_application(codedeploy: Any, unique: Callable[[str], str]) -> None:
    missing, target = unique("missing"), unique("target")
    code, message = api_error(
        codedeploy.update_application, applicationName=missing, newApplicationName=target
    )
    assert code == "ApplicationDoesNotExistException"
    assert message == f"No application found for name: {missing}"
    code, _ = api_error(codedeploy.get_application, applicationName=target)
    assert code == "ApplicationDoesNotExistException"


def test_rename_to_invalid_name(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.update_application, applicationName=application, newApplicationName="no spaces"
    )
    assert code == "InvalidApplicationNameException"
    assert "no spaces" in message
    assert codedeploy.get_application(applicationName=application)["application"]


def test_rename_without_application_name(codedeploy: Any, unique: Callable[[str], str]) -> None:
    code, message = api_error(codedeploy.update_application, newApplicationName=unique("x"))
    assert code == "ApplicationNameRequiredException"
    assert "application name" in message


# -- DeleteApplication -----------------------------------------------------------------------


def test_delete_removes_groups_revisions_and_tags(
    codedeploy: Any,
    unique: Callable[[str], str],
    app_arn: Callable[[str], str],
    group_arn: Callable[[str, str], str],
) -> None:
    name, neighbour = unique("doomed"), unique("neighbour")
    old_id = codedeploy.create_application(
        applicationName=name, tags=[{"Key": "owner", "Value": "me"}]
    )["applicationId"]
    codedeploy.create_application(applicationName=neighbour)
    for app in (name, neighbour):
        codedeploy.create_deployment_group(
            applicationName=app,
            deploymentGroupName="grp",
            serviceRoleArn=ROLE,
            tags=[{"Key": "tier", "Value": "web"}],
        )
        codedeploy.register_application_revision(applicationName=app, revision=S3_REVISION)

    result, raw = raw_call(codedeploy, "delete_application", applicationName=name)
    assert set(result) == {"ResponseMetadata"}
    assert raw == {}

    code, message = api_error(codedeploy.get_application, applicationName=name)
    assert code == "ApplicationDoesNotExistException"
    assert name in message
    code, _ = api_error(
        codedeploy.get_deployment_group, applicationName=name, deploymentGroupName="grp"
    )
    assert code == "ApplicationDoesNotExistException"
    code, _ = api_error(codedeploy.list_application_revisions, applicationName=name)
    assert code == "ApplicationDoesNotExistException"
    assert name not in {n for page in list_all_applications(codedeploy) for n in page}

    # A new application of the same name inherits nothing.
    new_id = codedeploy.create_application(applicationName=name)["applicationId"]
    assert new_id != old_id
    assert codedeploy.list_deployment_groups(applicationName=name)["deploymentGroups"] == []
    assert codedeploy.list_application_revisions(applicationName=name)["revisions"] == []
    code, _ = api_error(
        codedeploy.get_application_revision, applicationName=name, revision=S3_REVISION
    )
    assert code == "RevisionDoesNotExistException"
    assert tags_of(codedeploy, app_arn(name)) == []
    codedeploy.create_deployment_group(
        applicationName=name, deploymentGroupName="grp", serviceRoleArn=ROLE
    )
    assert tags_of(codedeploy, group_arn(name, "grp")) == []
    assert tags_of(codedeploy, group_arn(neighbour, "grp")) == [{"Key": "tier", "Value": "web"}]

    # The neighbour is untouched.
    assert codedeploy.list_deployment_groups(applicationName=neighbour)["deploymentGroups"] == [
        "grp"
    ]
    assert codedeploy.list_application_revisions(applicationName=neighbour)["revisions"] == [
        S3_REVISION
    ]


def test_delete_is_idempotent(codedeploy: Any, application: str) -> None:
    codedeploy.delete_application(applicationName=application)
    codedeploy.delete_application(applicationName=application)
    code, _ = api_error(codedeploy.get_application, applicationName=application)
    assert code == "ApplicationDoesNotExistException"


def test_delete_never_existing_application_is_not_an_error(
    codedeploy: Any, unique: Callable[[str], str]
) -> None:
    result = codedeploy.delete_application(applicationName=unique("never"))
    assert set(result) == {"ResponseMetadata"}


def test_delete_invalid_name(codedeploy: Any) -> None:
    code, message = api_error(codedeploy.delete_application, applicationName="bad?name")
    assert code == "InvalidApplicationNameException"
    assert "bad?name" in message
