"""The AWS Query codec, checked against botocore's own serializer and parser.

Requests are produced by botocore's query serializer and form-encoded by its ``AWSRequest``, so
the bytes are exactly what ``aws iam ...`` and boto3 send. Responses and errors are read back by
botocore's query parser (and, at the end, by a real boto3 client), so they are exactly what those
clients will understand.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import boto3
import botocore.awsrequest
import botocore.parsers
import botocore.serialize
import botocore.session
import botocore.validate
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import ServiceModel

from opendeploy.core.errors import ServiceError
from opendeploy.server.query_protocol import (
    IAM_XML_NAMESPACE,
    _compile_java_pattern,
    iam_service_model,
    parse_query_request,
    serialize_query_error,
    serialize_query_response,
)

IAM = iam_service_model()
VERSION = "2010-05-08"
POLICY_ARN = "arn:aws:iam::aws:policy/ReadOnlyAccess"
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CREATED = dt.datetime(2024, 5, 17, 9, 30, 12, tzinfo=dt.UTC)
CREATED_MICRO = dt.datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=dt.UTC)


def wire_body(params: Mapping[str, Any], operation: str, model: ServiceModel = IAM) -> bytes:
    """The form body botocore sends for ``operation(**params)``."""
    operation_model = model.operation_model(operation)
    if operation_model.input_shape is not None:
        report = botocore.validate.ParamValidator().validate(params, operation_model.input_shape)
        assert not report.has_errors(), report.generate_report()
    request_dict = botocore.serialize.create_serializer("query").serialize_to_request(
        dict(params), operation_model
    )
    botocore.awsrequest.prepare_request_dict(request_dict, endpoint_url="https://iam.example")
    prepared = botocore.awsrequest.create_request_object(request_dict).prepare()
    body = prepared.body
    assert isinstance(body, str | bytes)
    return body.encode("utf-8") if isinstance(body, str) else body


def botocore_parse(
    body: bytes, operation: str, model: ServiceModel = IAM, status: int = 200
) -> dict[str, Any]:
    operation_model = model.operation_model(operation)
    parsed: dict[str, Any] = botocore.parsers.create_parser("query").parse(
        {"body": body, "headers": {}, "status_code": status}, operation_model.output_shape
    )
    # botocore adds the HTTP status and headers; only the body's RequestId is ours.
    metadata = parsed.get("ResponseMetadata", {})
    assert metadata.pop("HTTPStatusCode") == status
    assert metadata.pop("HTTPHeaders") == {}
    return parsed


def body_for(**fields: str) -> str:
    from urllib.parse import urlencode

    return urlencode(fields)


def validation_message(body: str | bytes, model: ServiceModel = IAM) -> str:
    with pytest.raises(ServiceError) as caught:
        parse_query_request(body, model)
    assert caught.value.code == "ValidationError"
    assert caught.value.status == 400
    return caught.value.message


USER = {
    "Path": "/engineering/",
    "UserName": "alice",
    "UserId": "AIDAEXAMPLEUSER12345",
    "Arn": "arn:aws:iam::123456789012:user/engineering/alice",
    "CreateDate": CREATED,
}


# --------------------------------------------------------------------------------------------
# Requests: botocore serializes, we parse, the params come back unchanged
# --------------------------------------------------------------------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any]]] = [
    ("CreateUser", {"UserName": "alice"}),
    (
        "CreateUser",
        {
            "UserName": "bob+ops@example.com",
            "Path": "/engineering/platform/",
            "PermissionsBoundary": POLICY_ARN,
            "Tags": [
                {"Key": "team", "Value": "platform"},
                {"Key": "cost centre", "Value": "ünïcødé 日本 42"},
                {"Key": "empty", "Value": ""},
                {"Key": "aws:x=y+z/@-_.", "Value": "a:b/c=d+e-f@g"},
            ],
        },
    ),
    ("CreateUser", {"UserName": "carol", "Tags": []}),
    ("GetUser", {}),
    ("GetUser", {"UserName": "alice"}),
    ("ListUsers", {}),
    ("ListUsers", {"PathPrefix": "/engineering/", "Marker": "opaque marker +/=&%", "MaxItems": 7}),
    ("DeleteUser", {"UserName": "alice"}),
    ("CreateAccessKey", {}),
    ("CreateAccessKey", {"UserName": "alice"}),
    ("ListAccessKeys", {"UserName": "alice", "Marker": "page-2", "MaxItems": 1000}),
    ("DeleteAccessKey", {"UserName": "alice", "AccessKeyId": ACCESS_KEY_ID}),
    ("DeleteAccessKey", {"AccessKeyId": ACCESS_KEY_ID}),
    ("AttachUserPolicy", {"UserName": "alice", "PolicyArn": POLICY_ARN}),
    ("DetachUserPolicy", {"UserName": "alice", "PolicyArn": POLICY_ARN}),
    ("ListAttachedUserPolicies", {"UserName": "alice"}),
    (
        "ListAttachedUserPolicies",
        {"UserName": "alice", "PathPrefix": "/service-role/", "Marker": "m", "MaxItems": 1},
    ),
]


@pytest.mark.parametrize(
    ("operation", "params"),
    REQUEST_CASES,
    ids=[f"{op}-{i}" for i, (op, _) in enumerate(REQUEST_CASES)],
)
def test_botocore_requests_parse_back_to_their_params(
    operation: str, params: dict[str, Any]
) -> None:
    body = wire_body(params, operation)
    assert parse_query_request(body, IAM) == (operation, params)
    assert parse_query_request(body.decode("utf-8"), IAM) == (operation, params)


def test_every_operation_of_the_iam_subset_is_covered() -> None:
    subset = {
        "CreateUser",
        "GetUser",
        "ListUsers",
        "DeleteUser",
        "CreateAccessKey",
        "ListAccessKeys",
        "DeleteAccessKey",
        "AttachUserPolicy",
        "DetachUserPolicy",
        "ListAttachedUserPolicies",
    }
    assert {operation for operation, _ in REQUEST_CASES} == subset


def test_numbers_and_booleans_are_converted() -> None:
    params = {
        "MinimumPasswordLength": 14,
        "RequireSymbols": True,
        "RequireNumbers": False,
        "MaxPasswordAge": 90,
        "HardExpiry": False,
    }
    body = wire_body(params, "UpdateAccountPasswordPolicy")
    operation, parsed = parse_query_request(body, IAM)
    assert operation == "UpdateAccountPasswordPolicy"
    assert parsed == params
    assert parsed["RequireSymbols"] is True
    assert parsed["RequireNumbers"] is False
    assert type(parsed["MinimumPasswordLength"]) is int


def test_timestamps_and_lists_of_structures_from_another_query_service() -> None:
    rds = botocore.session.get_session().get_service_model("rds")
    params = {
        "SourceType": "db-instance",
        "StartTime": CREATED,
        "EndTime": CREATED_MICRO + dt.timedelta(days=1),
        "EventCategories": ["backup", "failover"],
        "Filters": [{"Name": "n", "Values": ["a", "b"]}],
        "MaxRecords": 20,
    }
    operation, parsed = parse_query_request(wire_body(params, "DescribeEvents", rds), rds)
    assert (operation, parsed) == ("DescribeEvents", params)
    assert parsed["StartTime"].tzinfo is not None


def test_maps_with_renamed_keys_and_blobs() -> None:
    sns = botocore.session.get_session().get_service_model("sns")
    params = {
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:topic",
        "Message": "hello & <goodbye>",
        "MessageAttributes": {
            "colour": {"DataType": "String", "StringValue": "blue"},
            "raw": {"DataType": "Binary", "BinaryValue": b"\x00\xff binary"},
        },
    }
    body = wire_body(params, "Publish", sns)
    assert b"MessageAttributes.entry.1.Name=" in body  # the model renames key/value
    assert parse_query_request(body, sns) == ("Publish", params)


def test_flattened_lists_with_renamed_members() -> None:
    sdb = botocore.session.get_session().get_service_model("sdb")
    params = {
        "DomainName": "domain",
        "ItemName": "item",
        "Attributes": [
            {"Name": "a", "Value": "1", "Replace": True},
            {"Name": "b", "Value": "2"},
        ],
        "Expected": {"Name": "a", "Exists": False},
    }
    body = wire_body(params, "PutAttributes", sdb)
    assert b"Attribute.2.Name=b" in body
    assert parse_query_request(body, sdb) == ("PutAttributes", params)


def test_list_elements_are_ordered_by_index_not_by_position() -> None:
    body = (
        "Action=CreateUser&Version=2010-05-08&UserName=x"
        "&Tags.member.2.Key=second&Tags.member.2.Value=2"
        "&Tags.member.1.Value=1&Tags.member.1.Key=first"
    )
    _, params = parse_query_request(body, IAM)
    assert params["Tags"] == [{"Key": "first", "Value": "1"}, {"Key": "second", "Value": "2"}]


def test_parameters_outside_the_input_shape_are_ignored() -> None:
    body = body_for(Action="GetUser", Version=VERSION, UserName="alice", Unrelated="x")
    assert parse_query_request(body, IAM) == ("GetUser", {"UserName": "alice"})


# --------------------------------------------------------------------------------------------
# Requests: actions, versions and validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (body_for(Action="CreateWidget", Version=VERSION), "CreateWidget for version 2010-05-08"),
        (body_for(Action="createuser", Version=VERSION), "createuser for version 2010-05-08"),
        (body_for(Action="CreateUser", Version="2011-01-01"), "CreateUser for version 2011-01-01"),
        (body_for(Action="CreateUser"), "CreateUser for version NO_VERSION_SPECIFIED"),
        (body_for(Version=VERSION, UserName="alice"), "Action"),
        ("", "Action"),
    ],
)
def test_unknown_or_missing_action_or_version(body: str, message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_query_request(body, IAM)
    assert caught.value.code == "InvalidAction"
    assert message in caught.value.message


def test_missing_required_member() -> None:
    message = validation_message(body_for(Action="CreateUser", Version=VERSION))
    assert message == (
        "1 validation error detected: Value null at 'userName' failed to satisfy constraint: "
        "Member must not be null"
    )


def test_every_missing_required_member_is_reported_at_once() -> None:
    message = validation_message(body_for(Action="AttachUserPolicy", Version=VERSION))
    assert message.startswith("2 validation errors detected: ")
    assert "Value null at 'userName'" in message
    assert "Value null at 'policyArn'" in message


def test_name_too_long() -> None:
    name = "a" * 65
    message = validation_message(body_for(Action="CreateUser", Version=VERSION, UserName=name))
    assert message == (
        f"1 validation error detected: Value '{name}' at 'userName' failed to satisfy "
        "constraint: Member must have length less than or equal to 64"
    )
    # The same name is fine where the model allows 128 characters.
    assert parse_query_request(body_for(Action="GetUser", Version=VERSION, UserName=name), IAM)


def test_empty_name_breaks_both_length_and_pattern() -> None:
    message = validation_message(body_for(Action="CreateUser", Version=VERSION, UserName=""))
    assert message.startswith("2 validation errors detected: ")
    assert "Member must have length greater than or equal to 1" in message
    assert r"Member must satisfy regular expression pattern: [\w+=,.@-]+" in message


@pytest.mark.parametrize("name", ["has space", "semi;colon", "slash/", "ünïcode"])
def test_name_pattern_is_enforced(name: str) -> None:
    message = validation_message(body_for(Action="CreateUser", Version=VERSION, UserName=name))
    assert f"Value '{name}' at 'userName'" in message
    assert r"regular expression pattern: [\w+=,.@-]+" in message


def test_bad_enum_value() -> None:
    body = body_for(
        Action="UpdateAccessKey", Version=VERSION, AccessKeyId=ACCESS_KEY_ID, Status="Disabled"
    )
    message = validation_message(body)
    assert message == (
        "1 validation error detected: Value 'Disabled' at 'status' failed to satisfy "
        "constraint: Member must satisfy enum value set: [Active, Inactive, Expired]"
    )
    good = body_for(
        Action="UpdateAccessKey", Version=VERSION, AccessKeyId=ACCESS_KEY_ID, Status="Inactive"
    )
    assert parse_query_request(good, IAM)[1]["Status"] == "Inactive"


def test_integer_range_and_syntax() -> None:
    for value, constraint in [
        ("0", "Member must have value greater than or equal to 1"),
        ("1001", "Member must have value less than or equal to 1000"),
        ("ten", "Member must be a valid integer"),
        ("1_0", "Member must be a valid integer"),
        ("99999999999", "Member must be a valid integer"),
    ]:
        message = validation_message(body_for(Action="ListUsers", Version=VERSION, MaxItems=value))
        assert f"Value '{value}' at 'maxItems' failed to satisfy constraint: {constraint}" in (
            message
        )


def test_boolean_syntax() -> None:
    body = body_for(Action="UpdateAccountPasswordPolicy", Version=VERSION, RequireSymbols="yes")
    assert "at 'requireSymbols' failed to satisfy constraint: Member must be a boolean" in (
        validation_message(body)
    )
    body = body_for(Action="UpdateAccountPasswordPolicy", Version=VERSION, RequireSymbols="True")
    assert parse_query_request(body, IAM)[1] == {"RequireSymbols": True}


def test_nested_tag_problems_name_the_element() -> None:
    body = wire_body(
        {"UserName": "alice", "Tags": [{"Key": "ok", "Value": "v"}, {"Key": "bad!", "Value": "v"}]},
        "CreateUser",
    )
    message = validation_message(body)
    assert "Value 'bad!' at 'tags.2.member.key' failed to satisfy constraint" in message
    assert message.startswith("1 validation error detected")


def test_nested_required_members() -> None:
    body = body_for(
        Action="CreateUser", Version=VERSION, UserName="a", **{"Tags.member.1.Key": "k"}
    )
    assert "Value null at 'tags.1.member.value'" in validation_message(body)


def test_too_many_tags() -> None:
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    body = body_for(
        Action="CreateUser",
        Version=VERSION,
        UserName="alice",
        **{f"Tags.member.{i}.{part}": tag[part] for i, tag in enumerate(tags, 1) for part in tag},
    )
    message = validation_message(body)
    expected = "at 'tags' failed to satisfy constraint: Member must have length less than or equal"
    assert f"{expected} to 50" in message


@pytest.mark.parametrize(
    "extra",
    [
        {"Tags.1.Key": "k"},  # missing ``member``
        {"Tags.member.0.Key": "k"},  # lists count from 1
        {"Tags.member.first.Key": "k"},
        {"Tags": "not-a-list"},
        {"UserName.Nested": "x"},
        {"Tags.member.1": "scalar-for-a-structure"},
    ],
)
def test_malformed_keys_under_known_members(extra: dict[str, str]) -> None:
    body = body_for(Action="CreateUser", Version=VERSION, UserName="alice", **extra)
    if "UserName.Nested" in extra:
        body = body_for(Action="CreateUser", Version=VERSION, **extra) + "&UserName=alice"
    message = validation_message(body)
    assert message.startswith("1 validation error detected: Value")
    assert "Value null" not in message  # the member is there, just malformed
    assert "at 'tags" in message or "at 'userName'" in message


def test_repeated_parameter() -> None:
    body = body_for(Action="GetUser", Version=VERSION, UserName="a") + "&UserName=b"
    assert "at 'userName' failed to satisfy constraint: Member must be given only once" in (
        validation_message(body)
    )


def test_body_that_is_not_utf8() -> None:
    with pytest.raises(ServiceError) as caught:
        parse_query_request(b"Action=GetUser&Version=2010-05-08&UserName=%ff%fe", IAM)
    assert caught.value.code == "MalformedQueryString"


def test_unicode_tags_match_the_java_property_classes() -> None:
    # [\p{L}\p{Z}\p{N}_.:/=+\-@]+ : letters, separators and numbers of any script.
    pattern = _compile_java_pattern(r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+")
    assert pattern is not None
    for good in ["日本語", "Ünïcødé", "a b\u00a0c", "٣٤", "x_y.z:/=+-@"]:
        assert pattern.fullmatch(good), good
    for bad in ["a!", "tab\there", "emoji😀", "#", ""]:
        assert not pattern.fullmatch(bad), bad


def test_java_pattern_translation_details() -> None:
    # \w is ASCII in Java, as is \d.
    word = _compile_java_pattern(r"[\w]+")
    assert word is not None and word.fullmatch("abc_09") and not word.fullmatch("é")
    # A UTF-16 surrogate pair escape means one supplementary code point.
    supplementary = _compile_java_pattern(r"[\uD800\uDC00-\uDBFF\uDFFF]+")
    assert (
        supplementary is not None
        and supplementary.fullmatch("😀")
        and not supplementary.fullmatch("a")
    )
    # Alternation is matched against the whole value.
    path = _compile_java_pattern(r"(\u002F)|(\u002F[\u0021-\u007E]+\u002F)")
    assert path is not None and path.fullmatch("/") and path.fullmatch("/a/")
    assert not path.fullmatch("/a")


def _patterns(model: ServiceModel) -> set[str]:
    found: set[str] = set()
    for name in model.shape_names:
        pattern = model.shape_for(name).metadata.get("pattern")
        if pattern is not None:
            found.add(pattern)
    return found


def test_every_iam_pattern_is_enforced() -> None:
    patterns = _patterns(IAM)
    assert len(patterns) > 20
    untranslated = sorted(p for p in patterns if _compile_java_pattern(p) is None)
    assert untranslated == []


# --------------------------------------------------------------------------------------------
# Responses: we serialize, botocore parses, the dicts come back unchanged
# --------------------------------------------------------------------------------------------

RESPONSE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("CreateUser", {"User": USER}),
    (
        "CreateUser",
        {
            "User": {
                **USER,
                "CreateDate": CREATED_MICRO,
                "PasswordLastUsed": CREATED + dt.timedelta(hours=5),
                "PermissionsBoundary": {
                    "PermissionsBoundaryType": "PermissionsBoundaryPolicy",
                    "PermissionsBoundaryArn": POLICY_ARN,
                },
                "Tags": [
                    {"Key": "team", "Value": "platform"},
                    {"Key": "escaped", "Value": "<tag> & \"quotes\" 'apostrophes' ]]> 日本"},
                    {"Key": "empty", "Value": ""},
                    {"Key": "lines", "Value": "one\r\ntwo\tthree\n"},
                ],
            }
        },
    ),
    ("GetUser", {"User": USER}),
    ("ListUsers", {"Users": [], "IsTruncated": False}),
    (
        "ListUsers",
        {
            "Users": [USER, {**USER, "UserName": "bob", "UserId": "AIDAEXAMPLEUSER67890"}],
            "IsTruncated": True,
            "Marker": "next page &amp; more",
        },
    ),
    (
        "CreateAccessKey",
        {
            "AccessKey": {
                "UserName": "alice",
                "AccessKeyId": ACCESS_KEY_ID,
                "Status": "Active",
                "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY+",
                "CreateDate": CREATED,
            }
        },
    ),
    (
        "ListAccessKeys",
        {
            "AccessKeyMetadata": [
                {
                    "UserName": "alice",
                    "AccessKeyId": ACCESS_KEY_ID,
                    "Status": "Inactive",
                    "CreateDate": CREATED,
                }
            ],
            "IsTruncated": False,
        },
    ),
    (
        "ListAttachedUserPolicies",
        {
            "AttachedPolicies": [{"PolicyName": "ReadOnlyAccess", "PolicyArn": POLICY_ARN}],
            "IsTruncated": True,
            "Marker": "m2",
        },
    ),
    ("ListAttachedUserPolicies", {"AttachedPolicies": [], "IsTruncated": False}),
]


@pytest.mark.parametrize(
    ("operation", "result"),
    RESPONSE_CASES,
    ids=[f"{op}-{i}" for i, (op, _) in enumerate(RESPONSE_CASES)],
)
def test_responses_parse_back_with_botocore(operation: str, result: dict[str, Any]) -> None:
    body = serialize_query_response(operation, result, IAM, "req-1234")
    parsed = botocore_parse(body, operation)
    assert parsed.pop("ResponseMetadata") == {"RequestId": "req-1234"}
    assert parsed == result


def test_response_envelope() -> None:
    body = serialize_query_response("ListUsers", {"Users": [USER], "IsTruncated": False}, IAM, "r")
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(body)
    ns = "{" + IAM_XML_NAMESPACE + "}"
    assert root.tag == f"{ns}ListUsersResponse"
    assert [child.tag for child in root] == [f"{ns}ListUsersResult", f"{ns}ResponseMetadata"]
    assert root.findtext(f"{ns}ListUsersResult/{ns}IsTruncated") == "false"
    assert [m.tag for m in root.find(f"{ns}ListUsersResult/{ns}Users") or []] == [f"{ns}member"]
    user = f"{ns}ListUsersResult/{ns}Users/{ns}member/{ns}"
    assert root.findtext(f"{user}CreateDate") == "2024-05-17T09:30:12Z"
    assert root.findtext(f"{ns}ResponseMetadata/{ns}RequestId") == "r"


@pytest.mark.parametrize(
    "operation", ["DeleteUser", "DeleteAccessKey", "AttachUserPolicy", "DetachUserPolicy"]
)
def test_operations_without_output_have_no_result_element(operation: str) -> None:
    body = serialize_query_response(operation, {}, IAM, "req-9")
    root = ET.fromstring(body)
    ns = "{" + IAM_XML_NAMESPACE + "}"
    assert root.tag == f"{ns}{operation}Response"
    assert [child.tag for child in root] == [f"{ns}ResponseMetadata"]
    assert botocore_parse(body, operation) == {"ResponseMetadata": {"RequestId": "req-9"}}


@pytest.fixture
def local_time_is_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local timezone far from UTC so naive datetimes cannot pass by accident."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_is_not_utc")
def test_timestamps_are_utc_iso8601() -> None:
    naive = dt.datetime(2024, 5, 17, 9, 30, 12)
    elsewhere = dt.datetime(2024, 5, 17, 11, 30, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for value in (naive, elsewhere, CREATED):
        body = serialize_query_response(
            "GetUser", {"User": {**USER, "CreateDate": value}}, IAM, "r"
        )
        assert b"<CreateDate>2024-05-17T09:30:12Z</CreateDate>" in body
        assert botocore_parse(body, "GetUser")["User"]["CreateDate"] == CREATED


def test_characters_xml_cannot_carry_are_replaced() -> None:
    result = {"User": {**USER, "Tags": [{"Key": "k", "Value": "bell\x07nul\x00"}]}}
    body = serialize_query_response("GetUser", result, IAM, "r")
    tags = botocore_parse(body, "GetUser")["User"]["Tags"]
    assert tags == [{"Key": "k", "Value": "bell\ufffdnul\ufffd"}]


def test_flattened_list_responses() -> None:
    sdb = botocore.session.get_session().get_service_model("sdb")
    result = {"Attributes": [{"Name": "a", "Value": "1"}, {"Name": "b", "Value": "2"}]}
    body = serialize_query_response("GetAttributes", result, sdb, "r")
    assert b"<Attribute><Name>a</Name>" in body
    parsed = botocore_parse(body, "GetAttributes", sdb)
    parsed.pop("ResponseMetadata")
    assert parsed == result


def test_non_finite_doubles_and_integers() -> None:
    # CloudWatch still lists the query protocol; its datapoints carry doubles and timestamps.
    cloudwatch = botocore.session.get_session().get_service_model("cloudwatch")
    points = [
        {"Timestamp": CREATED, "Average": 1.5, "Maximum": math.inf, "Unit": "Seconds"},
        {"Timestamp": CREATED_MICRO, "SampleCount": 3.0, "Minimum": -math.inf},
    ]
    body = serialize_query_response(
        "GetMetricStatistics", {"Label": "x", "Datapoints": points}, cloudwatch, "r"
    )
    parsed = botocore_parse(body, "GetMetricStatistics", cloudwatch)
    assert parsed["Datapoints"] == points


@pytest.mark.parametrize(
    ("operation", "result", "error"),
    [
        ("GetUser", {"User": {**USER, "Nickname": "al"}}, ValueError),
        ("GetUser", {"Users": []}, ValueError),
        ("GetUser", {"User": {**USER, "CreateDate": "2024-05-17"}}, TypeError),
        ("ListUsers", {"Users": [], "IsTruncated": "false"}, TypeError),
        ("ListUsers", {"Users": USER}, TypeError),
        ("DeleteUser", {"User": USER}, ValueError),
        ("CreateWidget", {}, ValueError),
    ],
)
def test_results_that_do_not_fit_the_model_are_caller_bugs(
    operation: str, result: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        serialize_query_response(operation, result, IAM, "r")


def test_none_members_are_left_out() -> None:
    body = serialize_query_response(
        "ListUsers", {"Users": [], "IsTruncated": False, "Marker": None}, IAM, "r"
    )
    assert b"Marker" not in body


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_error_body_parsed_by_botocore() -> None:
    message = "User with name alice already exists & <more>"
    body = serialize_query_error("EntityAlreadyExists", message, "req-err")
    parsed = botocore_parse(body, "CreateUser", status=409)
    assert parsed["Error"] == {"Type": "Sender", "Code": "EntityAlreadyExists", "Message": message}
    assert parsed["ResponseMetadata"]["RequestId"] == "req-err"
    root = ET.fromstring(body)
    assert root.tag == "{" + IAM_XML_NAMESPACE + "}ErrorResponse"


def test_server_faults_are_receiver_errors() -> None:
    body = serialize_query_error("ServiceFailure", "boom", "r", sender=False)
    assert botocore_parse(body, "GetUser", status=500)["Error"]["Type"] == "Receiver"


def test_validation_error_reaches_botocore_intact() -> None:
    body = body_for(Action="CreateUser", Version=VERSION, UserName="bad name <&>")
    with pytest.raises(ServiceError) as caught:
        parse_query_request(body, IAM)
    xml = serialize_query_error(caught.value.code, caught.value.message, "r")
    error = botocore_parse(xml, "CreateUser", status=400)["Error"]
    assert error["Code"] == "ValidationError"
    assert error["Message"] == caught.value.message
    assert "Value 'bad name <&>' at 'userName'" in error["Message"]


# --------------------------------------------------------------------------------------------
# A real boto3 client talking to the codec
# --------------------------------------------------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


Handler = Callable[[str, dict[str, Any]], Mapping[str, Any]]


def _client(handler: Handler, *, validate: bool = True) -> Any:
    client = boto3.session.Session().client(
        "iam",
        endpoint_url="https://iam.opendeploy.test",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key="secret",
        config=Config(parameter_validation=validate, retries={"max_attempts": 0}),
    )

    def send(request: botocore.awsrequest.AWSPreparedRequest, **_: Any) -> Any:
        try:
            operation, params = parse_query_request(request.body, IAM)
            body = serialize_query_response(operation, handler(operation, params), IAM, "rid")
            status = 200
        except ServiceError as exc:
            body = serialize_query_error(exc.code, exc.message, "rid")
            status = exc.status
        return botocore.awsrequest.AWSResponse(request.url, status, {}, _Raw(body))

    client.meta.events.register("before-send.iam", send)
    return client


def test_boto3_client_round_trip() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(operation: str, params: dict[str, Any]) -> Mapping[str, Any]:
        seen.append((operation, params))
        return {"User": {**USER, "UserName": params["UserName"], "Tags": params.get("Tags", [])}}

    client = _client(handler)
    tags = [{"Key": "team", "Value": "platform"}]
    response = client.create_user(UserName="alice", Tags=tags)
    assert seen == [("CreateUser", {"UserName": "alice", "Tags": tags})]
    assert response["User"]["CreateDate"] == CREATED
    assert response["User"]["Tags"] == tags
    assert response["ResponseMetadata"]["RequestId"] == "rid"


def test_boto3_client_sees_server_validation_errors() -> None:
    client = _client(lambda operation, params: {}, validate=False)
    with pytest.raises(ClientError) as caught:
        client.create_user(UserName="x" * 65)
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert "at 'userName'" in error["Message"]
    assert "less than or equal to 64" in error["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
