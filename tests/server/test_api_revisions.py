"""Application revisions through a real boto3 client: RegisterApplicationRevision,
GetApplicationRevision, BatchGetApplicationRevisions, ListApplicationRevisions
(codedeploy-spec §1.3, §1.4, §2, §3.2)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apitools import api_error, assert_no_nulls, raw_call

ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
LAMBDA_APPSPEC = (
    "version: 0.0\n"
    "Resources:\n"
    "  - fn:\n"
    "      Type: AWS::Lambda::Function\n"
    "      Properties: {Name: fn, Alias: live, CurrentVersion: '1', TargetVersion: '2'}\n"
)


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


def s3(key: str, bucket: str = "artifacts", bundle: str = "zip", **extra: str) -> dict[str, Any]:
    return {
        "revisionType": "S3",
        "s3Location": {"bucket": bucket, "key": key, "bundleType": bundle, **extra},
    }


def github(commit: str, repository: str = "octo/service") -> dict[str, Any]:
    return {
        "revisionType": "GitHub",
        "gitHubLocation": {"repository": repository, "commitId": commit},
    }


def content(kind: str, text: str, sha256: str | None = None) -> dict[str, Any]:
    member = "string" if kind == "String" else "appSpecContent"
    body = {"content": text} if sha256 is None else {"content": text, "sha256": sha256}
    return {"revisionType": kind, member: body}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def listed(codedeploy: Any, application: str, **filters: Any) -> list[dict[str, Any]]:
    pages = codedeploy.get_paginator("list_application_revisions").paginate(
        applicationName=application, **filters
    )
    return [revision for page in pages for revision in page["revisions"]]


@pytest.fixture
def make_app(codedeploy: Any, unique: Callable[[str], str]) -> Callable[..., str]:
    def make(platform: str = "Server") -> str:
        name = unique("revapp")
        codedeploy.create_application(applicationName=name, computePlatform=platform)
        return name

    return make


@pytest.fixture
def application(make_app: Callable[..., str]) -> str:
    return make_app()


# -- RegisterApplicationRevision / GetApplicationRevision --------------------------------------


def test_register_and_get_s3_revision(codedeploy: Any, application: str) -> None:
    revision = s3("builds/app-1.zip", version="3HL4kqtJlcpXroDTDmJ", eTag="abc123")
    before = dt.datetime.now(dt.UTC)
    registered, registered_raw = raw_call(
        codedeploy,
        "register_application_revision",
        applicationName=application,
        revision=revision,
        description="first build",
    )
    after = dt.datetime.now(dt.UTC)
    assert set(registered) == {"ResponseMetadata"}
    assert registered_raw == {}

    got, raw = raw_call(
        codedeploy, "get_application_revision", applicationName=application, revision=revision
    )
    assert got["applicationName"] == application
    assert got["revision"] == revision
    info = got["revisionInfo"]
    assert info["description"] == "first build"
    assert info["deploymentGroups"] == []
    assert isinstance(info["registerTime"], dt.datetime)
    assert (
        before - dt.timedelta(seconds=1) <= info["registerTime"] <= after + dt.timedelta(seconds=1)
    )
    # Never deployed: no first/last used times, left out rather than null.
    assert "firstUsedTime" not in info
    assert "lastUsedTime" not in info
    assert set(raw["revisionInfo"]) == {"description", "deploymentGroups", "registerTime"}
    assert_no_nulls(raw)


def test_get_distinguishes_version_etag_and_bundle_type(codedeploy: Any, application: str) -> None:
    registered = s3("builds/app.zip", version="v1", eTag="e1")
    codedeploy.register_application_revision(applicationName=application, revision=registered)
    for other in (
        s3("builds/app.zip", version="v2", eTag="e1"),
        s3("builds/app.zip", version="v1", eTag="e2"),
        s3("builds/app.zip", bundle="tgz", version="v1", eTag="e1"),
        s3("builds/app.zip"),
        s3("builds/app.zip", bucket="elsewhere", version="v1", eTag="e1"),
    ):
        code, message = api_error(
            codedeploy.get_application_revision, applicationName=application, revision=other
        )
        assert code == "RevisionDoesNotExistException"
        assert application in message


def test_register_without_description_leaves_it_out(codedeploy: Any, application: str) -> None:
    revision = s3("plain.zip")
    codedeploy.register_application_revision(applicationName=application, revision=revision)
    _, raw = raw_call(
        codedeploy, "get_application_revision", applicationName=application, revision=revision
    )
    assert "description" not in raw["revisionInfo"]
    assert_no_nulls(raw)


def test_register_again_is_one_revision_with_the_new_description(
    codedeploy: Any, application: str
) -> None:
    revision = s3("again.zip")
    codedeploy.register_application_revision(
        applicationName=application, revision=revision, description="one"
    )
    first = codedeploy.get_application_revision(applicationName=application, revision=revision)
    assert first["revisionInfo"]["description"] == "one"
    codedeploy.register_application_revision(
        applicationName=application, revision=revision, description="two"
    )
    second = codedeploy.get_application_revision(applicationName=application, revision=revision)
    assert second["revisionInfo"]["description"] == "two"
    assert listed(codedeploy, application) == [revision]


def test_register_and_get_github_revision(codedeploy: Any, application: str) -> None:
    revision = github("8f5b3c0d9e1a2b3c4d5e6f708192a3b4c5d6e7f8")
    codedeploy.register_application_revision(applicationName=application, revision=revision)
    got = codedeploy.get_application_revision(applicationName=application, revision=revision)
    assert got["revision"] == revision
    code, _ = api_error(
        codedeploy.get_application_revision,
        applicationName=application,
        revision=github("0000000000000000000000000000000000000000"),
    )
    assert code == "RevisionDoesNotExistException"


def test_description_limit_is_256(codedeploy: Any, application: str) -> None:
    codedeploy.register_application_revision(
        applicationName=application, revision=s3("ok.zip"), description="d" * 256
    )
    code, message = api_error(
        codedeploy.register_application_revision,
        applicationName=application,
        revision=s3("too-long.zip"),
        description="d" * 257,
    )
    assert code == "DescriptionTooLongException"
    assert "256" in message
    assert listed(codedeploy, application) == [s3("ok.zip")]


@pytest.mark.parametrize(
    ("revision", "fragment"),
    [
        ({"s3Location": {"bucket": "b", "key": "k.zip", "bundleType": "zip"}}, "revisionType"),
        ({"revisionType": "S3"}, "s3Location"),
        ({"revisionType": "S3", "s3Location": {"key": "k.zip", "bundleType": "zip"}}, "bucket"),
        ({"revisionType": "S3", "s3Location": {"bucket": "b", "bundleType": "zip"}}, "key"),
        (
            {"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k", "bundleType": "rar"}},
            "rar",
        ),
        (s3("appspec.yaml", bundle="YAML"), "YAML"),
        ({"revisionType": "GitHub", "gitHubLocation": {"commitId": "abc"}}, "repository"),
        ({"revisionType": "GitHub", "gitHubLocation": {"repository": "o/r"}}, "commitId"),
        ({"revisionType": "Docker", "s3Location": {"bucket": "b", "key": "k"}}, "Docker"),
        (content("String", LAMBDA_APPSPEC), "String"),
        (content("AppSpecContent", LAMBDA_APPSPEC), "AppSpecContent"),
    ],
    ids=[
        "no-type",
        "no-s3Location",
        "no-bucket",
        "no-key",
        "bad-bundle",
        "yaml-on-server",
        "no-repository",
        "no-commit",
        "bad-type",
        "string-on-server",
        "appspec-content-on-server",
    ],
)
def test_register_refuses_invalid_server_revisions(
    codedeploy: Any, application: str, revision: dict[str, Any], fragment: str
) -> None:
    code, message = api_error(
        codedeploy.register_application_revision, applicationName=application, revision=revision
    )
    assert code == "InvalidRevisionException"
    assert fragment in message
    assert listed(codedeploy, application) == []


def test_register_requires_a_revision(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.register_application_revision, applicationName=application, revision={}
    )
    assert code == "RevisionRequiredException"
    assert "revision" in message


def test_register_for_missing_application(codedeploy: Any, unique: Callable[[str], str]) -> None:
    missing = unique("missing")
    code, message = api_error(
        codedeploy.register_application_revision, applicationName=missing, revision=s3("x.zip")
    )
    assert code == "ApplicationDoesNotExistException"
    assert message == f"No application found for name: {missing}"


def test_register_with_invalid_application_name(codedeploy: Any) -> None:
    code, message = api_error(
        codedeploy.register_application_revision, applicationName="a b", revision=s3("x.zip")
    )
    assert code == "InvalidApplicationNameException"
    assert "a b" in message


@pytest.mark.parametrize("kind", ["String", "AppSpecContent"])
def test_lambda_application_takes_content_revisions(
    codedeploy: Any, make_app: Callable[..., str], kind: str
) -> None:
    application = make_app("Lambda")
    revision = content(kind, LAMBDA_APPSPEC)
    codedeploy.register_application_revision(applicationName=application, revision=revision)
    got, raw = raw_call(
        codedeploy, "get_application_revision", applicationName=application, revision=revision
    )
    # The server fills in the sha256 of the content; the content itself comes back whole.
    member = "string" if kind == "String" else "appSpecContent"
    assert got["revision"] == {
        "revisionType": kind,
        member: {"content": LAMBDA_APPSPEC, "sha256": sha(LAMBDA_APPSPEC)},
    }
    assert_no_nulls(raw)
    # Giving the matching sha256 names the same revision.
    with_sha = content(kind, LAMBDA_APPSPEC, sha(LAMBDA_APPSPEC))
    codedeploy.register_application_revision(applicationName=application, revision=with_sha)
    assert len(listed(codedeploy, application)) == 1


def test_content_sha256_is_case_insensitive(codedeploy: Any, make_app: Callable[..., str]) -> None:
    application = make_app("Lambda")
    upper = content("AppSpecContent", LAMBDA_APPSPEC, sha(LAMBDA_APPSPEC).upper())
    codedeploy.register_application_revision(applicationName=application, revision=upper)
    for probe in (content("AppSpecContent", LAMBDA_APPSPEC), upper):
        got = codedeploy.get_application_revision(applicationName=application, revision=probe)
        assert got["revision"]["appSpecContent"]["content"] == LAMBDA_APPSPEC
    codedeploy.register_application_revision(
        applicationName=application, revision=content("AppSpecContent", LAMBDA_APPSPEC)
    )
    assert len(listed(codedeploy, application)) == 1


@pytest.mark.parametrize("kind", ["String", "AppSpecContent"])
def test_content_revision_with_wrong_sha256(
    codedeploy: Any, make_app: Callable[..., str], kind: str
) -> None:
    application = make_app("Lambda")
    code, message = api_error(
        codedeploy.register_application_revision,
        applicationName=application,
        revision=content(kind, LAMBDA_APPSPEC, sha("something else")),
    )
    assert code == "InvalidRevisionException"
    assert "sha256" in message


def test_content_revision_needs_content(codedeploy: Any, make_app: Callable[..., str]) -> None:
    application = make_app("Lambda")
    code, message = api_error(
        codedeploy.register_application_revision,
        applicationName=application,
        revision={"revisionType": "AppSpecContent", "appSpecContent": {"sha256": sha("x")}},
    )
    assert code == "InvalidRevisionException"
    assert "content" in message


def test_lambda_application_takes_s3_appspec_but_not_github(
    codedeploy: Any, make_app: Callable[..., str]
) -> None:
    application = make_app("Lambda")
    for bundle in ("YAML", "JSON", "zip"):
        codedeploy.register_application_revision(
            applicationName=application, revision=s3(f"appspec.{bundle}", bundle=bundle)
        )
    assert len(listed(codedeploy, application)) == 3
    code, message = api_error(
        codedeploy.register_application_revision,
        applicationName=application,
        revision=github("8f5b3c0d9e1a2b3c4d5e6f708192a3b4c5d6e7f8"),
    )
    assert code == "InvalidRevisionException"
    assert "GitHub" in message


def test_ecs_application_takes_appspec_content_but_not_string(
    codedeploy: Any, make_app: Callable[..., str]
) -> None:
    application = make_app("ECS")
    revision = content("AppSpecContent", LAMBDA_APPSPEC)
    codedeploy.register_application_revision(applicationName=application, revision=revision)
    got = codedeploy.get_application_revision(applicationName=application, revision=revision)
    assert got["revision"]["appSpecContent"]["sha256"] == sha(LAMBDA_APPSPEC)
    code, message = api_error(
        codedeploy.register_application_revision,
        applicationName=application,
        revision=content("String", LAMBDA_APPSPEC),
    )
    assert code == "InvalidRevisionException"
    assert "String" in message
    assert "Lambda" in message


def test_get_unregistered_revision(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.get_application_revision, applicationName=application, revision=s3("nope.zip")
    )
    assert code == "RevisionDoesNotExistException"
    assert application in message


def test_get_revision_of_missing_application(codedeploy: Any, unique: Callable[[str], str]) -> None:
    missing = unique("missing")
    code, message = api_error(
        codedeploy.get_application_revision, applicationName=missing, revision=s3("x.zip")
    )
    assert code == "ApplicationDoesNotExistException"
    assert missing in message


def test_get_with_malformed_revision(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.get_application_revision,
        applicationName=application,
        revision={"revisionType": "S3", "s3Location": {"bucket": "b"}},
    )
    assert code == "InvalidRevisionException"
    assert "key" in message
    code, _ = api_error(
        codedeploy.get_application_revision, applicationName=application, revision={}
    )
    assert code == "RevisionRequiredException"


# -- BatchGetApplicationRevisions --------------------------------------------------------------


def test_batch_get_revisions_reports_found_and_missing(codedeploy: Any, application: str) -> None:
    one, two = s3("one.zip"), github("1111111111111111111111111111111111111111")
    codedeploy.register_application_revision(
        applicationName=application, revision=one, description="the first"
    )
    codedeploy.register_application_revision(applicationName=application, revision=two)

    result, raw = raw_call(
        codedeploy,
        "batch_get_application_revisions",
        applicationName=application,
        revisions=[two, s3("missing.zip"), one],
    )
    assert result["applicationName"] == application
    assert [item["revisionLocation"] for item in result["revisions"]] == [two, one]
    infos = [item["genericRevisionInfo"] for item in result["revisions"]]
    assert "description" not in infos[0]
    assert infos[1]["description"] == "the first"
    for info in infos:
        assert isinstance(info["registerTime"], dt.datetime)
        assert info["deploymentGroups"] == []
    assert "1" in result["errorMessage"]
    assert_no_nulls(raw)

    complete, complete_raw = raw_call(
        codedeploy,
        "batch_get_application_revisions",
        applicationName=application,
        revisions=[one],
    )
    assert "errorMessage" not in complete
    assert "errorMessage" not in complete_raw
    single = codedeploy.get_application_revision(applicationName=application, revision=one)
    assert complete["revisions"][0]["genericRevisionInfo"] == single["revisionInfo"]


def test_batch_get_revisions_limit_is_25(codedeploy: Any, application: str) -> None:
    revisions = [s3(f"k{index}.zip") for index in range(26)]
    result = codedeploy.batch_get_application_revisions(
        applicationName=application, revisions=revisions[:25]
    )
    assert result["revisions"] == []
    assert "25" in result["errorMessage"]
    code, message = api_error(
        codedeploy.batch_get_application_revisions,
        applicationName=application,
        revisions=revisions,
    )
    assert code == "BatchLimitExceededException"
    assert "26" in message
    assert "25" in message


def test_batch_get_revisions_errors(
    codedeploy: Any, application: str, unique: Callable[[str], str]
) -> None:
    code, message = api_error(
        codedeploy.batch_get_application_revisions, applicationName=application, revisions=[]
    )
    assert code == "RevisionRequiredException"
    assert "revisions" in message

    code, message = api_error(
        codedeploy.batch_get_application_revisions,
        applicationName=application,
        revisions=[s3("fine.zip"), {"revisionType": "GitHub", "gitHubLocation": {}}],
    )
    assert code == "InvalidRevisionException"
    assert "gitHubLocation" in message

    missing = unique("missing")
    code, message = api_error(
        codedeploy.batch_get_application_revisions,
        applicationName=missing,
        revisions=[s3("x.zip")],
    )
    assert code == "ApplicationDoesNotExistException"
    assert missing in message


# -- ListApplicationRevisions ------------------------------------------------------------------


def test_list_sorts_by_register_time(codedeploy: Any, application: str) -> None:
    revisions = [s3("b-second.zip"), github("a" * 40), s3("a-third.zip")]
    for revision in revisions:
        codedeploy.register_application_revision(applicationName=application, revision=revision)

    assert listed(codedeploy, application, sortBy="registerTime") == revisions
    assert (
        listed(codedeploy, application, sortBy="registerTime", sortOrder="ascending") == revisions
    )
    assert listed(codedeploy, application, sortBy="registerTime", sortOrder="descending") == [
        *reversed(revisions)
    ]
    unsorted = listed(codedeploy, application)
    assert sorted(map(json.dumps, unsorted)) == sorted(map(json.dumps, revisions))
    # Never deployed: sorting by the usage times still lists every revision once.
    for key in ("firstUsedTime", "lastUsedTime"):
        for order in ("ascending", "descending"):
            result = listed(codedeploy, application, sortBy=key, sortOrder=order)
            assert sorted(map(json.dumps, result)) == sorted(map(json.dumps, revisions))


def test_list_filters_by_bucket_and_key_prefix(codedeploy: Any, application: str) -> None:
    in_a = [s3("a_b/x.zip", bucket="bucket-a"), s3("aXb/y.zip", bucket="bucket-a")]
    other_key = s3("other/z.zip", bucket="bucket-a")
    in_b = s3("a_b/w.zip", bucket="bucket-b")
    percent = s3("100%/p.zip", bucket="bucket-a")
    backslash = s3("back\\slash/q.zip", bucket="bucket-a")
    git = github("b" * 40)
    for revision in [*in_a, other_key, in_b, percent, backslash, git]:
        codedeploy.register_application_revision(applicationName=application, revision=revision)

    def keys(**filters: Any) -> list[str]:
        result = listed(codedeploy, application, sortBy="registerTime", **filters)
        return [revision["s3Location"]["key"] for revision in result]

    assert keys(s3Bucket="bucket-a") == [
        "a_b/x.zip",
        "aXb/y.zip",
        "other/z.zip",
        "100%/p.zip",
        "back\\slash/q.zip",
    ]
    assert keys(s3Bucket="bucket-b") == ["a_b/w.zip"]
    assert keys(s3Bucket="no-such-bucket") == []
    # The prefix is literal: "_" and "%" are not wildcards.
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="a_b/") == ["a_b/x.zip"]
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="a") == ["a_b/x.zip", "aXb/y.zip"]
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="a%") == []
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="100%") == ["100%/p.zip"]
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="back\\") == ["back\\slash/q.zip"]
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="back\\\\") == []
    assert keys(s3Bucket="bucket-b", s3KeyPrefix="other") == []
    # Filters combine with sorting.
    assert keys(s3Bucket="bucket-a", s3KeyPrefix="a", sortOrder="descending") == [
        "aXb/y.zip",
        "a_b/x.zip",
    ]


def test_list_key_prefix_needs_bucket(codedeploy: Any, application: str) -> None:
    code, message = api_error(
        codedeploy.list_application_revisions, applicationName=application, s3KeyPrefix="builds/"
    )
    assert code == "BucketNameFilterRequiredException"
    assert "s3Bucket" in message


def test_list_deployed_filter(codedeploy: Any, application: str) -> None:
    revisions = [s3("d1.zip"), s3("d2.zip")]
    for revision in revisions:
        codedeploy.register_application_revision(applicationName=application, revision=revision)
    # A group exists, but nothing has been deployed to it: no revision is a target revision.
    codedeploy.create_deployment_group(
        applicationName=application, deploymentGroupName="web", serviceRoleArn=ROLE
    )
    options = {"sortBy": "registerTime"}
    assert listed(codedeploy, application, deployed="include", **options) == []
    assert listed(codedeploy, application, deployed="exclude", **options) == revisions
    assert listed(codedeploy, application, deployed="ignore", **options) == revisions
    assert listed(codedeploy, application, **options) == revisions
    info = codedeploy.get_application_revision(applicationName=application, revision=revisions[0])
    assert info["revisionInfo"]["deploymentGroups"] == []


@pytest.mark.parametrize(
    ("member", "value", "code"),
    [
        ("deployed", "only", "InvalidDeployedStateFilterException"),
        ("deployed", "INCLUDE", "InvalidDeployedStateFilterException"),
        ("sortBy", "name", "InvalidSortByException"),
        ("sortOrder", "up", "InvalidSortOrderException"),
    ],
)
def test_list_rejects_bad_enum_values(
    codedeploy: Any, application: str, member: str, value: str, code: str
) -> None:
    got_code, message = api_error(
        codedeploy.list_application_revisions, applicationName=application, **{member: value}
    )
    assert got_code == code
    assert member in message
    assert value in message


def test_list_for_missing_application(codedeploy: Any, unique: Callable[[str], str]) -> None:
    missing = unique("missing")
    code, message = api_error(codedeploy.list_application_revisions, applicationName=missing)
    assert code == "ApplicationDoesNotExistException"
    assert message == f"No application found for name: {missing}"


def test_list_empty_application_has_no_token(codedeploy: Any, application: str) -> None:
    result, raw = raw_call(codedeploy, "list_application_revisions", applicationName=application)
    assert result["revisions"] == []
    assert "nextToken" not in raw


def test_list_pages_through_more_than_100(
    codedeploy: Any, make_app: Callable[..., str], application: str
) -> None:
    revisions = [s3(f"bulk/{index:03d}.zip") for index in range(101)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(
            pool.map(
                lambda revision: codedeploy.register_application_revision(
                    applicationName=application, revision=revision
                ),
                revisions,
            )
        )
    order = {"sortBy": "registerTime", "sortOrder": "descending"}
    pages = [
        page["revisions"]
        for page in codedeploy.get_paginator("list_application_revisions").paginate(
            applicationName=application, **order
        )
    ]
    assert [len(page) for page in pages] == [100, 1]
    everything = [revision for page in pages for revision in page]
    keys = [revision["s3Location"]["key"] for revision in everything]
    assert sorted(keys) == sorted(r["s3Location"]["key"] for r in revisions)

    # Newest first across the page boundary.
    times: list[dt.datetime] = []
    for start in range(0, len(everything), 25):
        batch = codedeploy.batch_get_application_revisions(
            applicationName=application, revisions=everything[start : start + 25]
        )
        assert [item["revisionLocation"] for item in batch["revisions"]] == everything[
            start : start + 25
        ]
        times += [item["genericRevisionInfo"]["registerTime"] for item in batch["revisions"]]
    assert times == sorted(times, reverse=True)

    # A token belongs to its listing: same application, same filters, same operation.
    token = codedeploy.list_application_revisions(applicationName=application, **order)["nextToken"]
    follow = codedeploy.list_application_revisions(
        applicationName=application, nextToken=token, **order
    )
    assert follow["revisions"] == pages[1]
    assert "nextToken" not in follow
    other = make_app()
    for params in (
        {"applicationName": application, "sortBy": "registerTime"},
        {"applicationName": application, "s3Bucket": "artifacts", **order},
        {"applicationName": application, "deployed": "exclude", **order},
        {"applicationName": other, **order},
    ):
        code, message = api_error(codedeploy.list_application_revisions, nextToken=token, **params)
        assert code == "InvalidNextTokenException"
        assert "nextToken" in message
    code, _ = api_error(codedeploy.list_applications, nextToken=token)
    assert code == "InvalidNextTokenException"


@pytest.mark.parametrize("token", ["garbage", "e30", "bnVsbA"], ids=["garbage", "{}", "null"])
def test_list_bad_token(codedeploy: Any, application: str, token: str) -> None:
    code, message = api_error(
        codedeploy.list_application_revisions, applicationName=application, nextToken=token
    )
    assert code == "InvalidNextTokenException"
    assert "nextToken" in message
