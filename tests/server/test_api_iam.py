"""The IAM subset through boto3's own IAM client: users, keys, policies, roles and the audit log."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from opendeploy.core.policies import POLICY_ARNS, Role
from opendeploy.store import identities
from opendeploy.store.database import Database

ADMIN_POLICY = POLICY_ARNS[Role.ADMIN]
DEPLOYER_POLICY = POLICY_ARNS[Role.DEPLOYER]
READER_POLICY = POLICY_ARNS[Role.READER]
AGENT_POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"


@pytest.fixture
def server(running_server: Any) -> Any:
    """The shared server, with Nagle's algorithm off on its listening socket.

    conftest binds that socket with protocol 0, so asyncio does not set TCP_NODELAY on the
    connections it accepts, and every response waits ~40 ms for a delayed ACK.
    """
    for listener in getattr(getattr(running_server, "_server", None), "servers", None) or []:
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return running_server


@functools.cache
def http() -> httpx.Client:
    """One HTTP client for the module: a new one per request costs ~40 ms of TLS set-up."""
    return httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http().close()
    http.cache_clear()


@functools.cache
def _boto3_session() -> boto3.session.Session:
    # One session for all clients: a fresh session per client costs ~70 ms of model loading.
    return boto3.session.Session()


def client(server: Any, service: str, access_key_id: str, secret_access_key: str) -> Any:
    return _boto3_session().client(
        service,
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture
def codedeploy(server: Any) -> Any:
    return client(server, "codedeploy", server.access_key_id, server.secret_access_key)


@pytest.fixture
def iam(server: Any) -> Any:
    return client(server, "iam", server.access_key_id, server.secret_access_key)


@dataclass
class Identity:
    name: str
    arn: str
    access_key_id: str
    secret_access_key: str
    codedeploy: Any
    iam: Any


def error_of(call: Callable[..., Any], **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    response: dict[str, Any] = caught.value.response
    return {
        "Code": response["Error"]["Code"],
        "Message": response["Error"].get("Message", ""),
        "Status": response["ResponseMetadata"]["HTTPStatusCode"],
        "RequestId": response["ResponseMetadata"].get("RequestId"),
    }


def code_of(call: Callable[..., Any], **params: Any) -> str:
    return str(error_of(call, **params)["Code"])


@pytest.fixture
def make_user(server: Any, iam: Any, unique: Callable[[str], str]) -> Callable[..., Identity]:
    def make(role: Role | None, *, prefix: str = "user") -> Identity:
        name = unique(prefix)
        user = iam.create_user(UserName=name)["User"]
        if role is not None:
            iam.attach_user_policy(UserName=name, PolicyArn=POLICY_ARNS[role])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
        return Identity(
            name=name,
            arn=user["Arn"],
            access_key_id=key_id,
            secret_access_key=secret,
            codedeploy=client(server, "codedeploy", key_id, secret),
            iam=client(server, "iam", key_id, secret),
        )

    return make


def iam_raw(server: Any, action: str, **params: str) -> httpx.Response:
    """An admin's IAM Query call, signed by botocore, with the raw response kept."""
    body = urlencode({"Action": action, "Version": "2010-05-08", **params}).encode()
    request = AWSRequest(
        method="POST",
        url=server.endpoint + "/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    credentials = Credentials(server.access_key_id, server.secret_access_key)
    SigV4Auth(credentials, "iam", "us-east-1").add_auth(request)
    return http().post(server.endpoint + "/", content=body, headers=dict(request.headers.items()))


# --- users ---------------------------------------------------------------------------------


def test_get_user_without_a_name_answers_for_the_caller(
    server: Any, iam: Any, make_user: Callable[..., Identity]
) -> None:
    admin = iam.get_user()["User"]
    assert admin["UserName"] == "admin"
    assert admin["Arn"] == f"arn:aws:iam::{server.account_id}:user/admin"
    assert admin["UserId"].startswith("AIDA")

    reader = make_user(Role.READER)
    me = reader.iam.get_user()["User"]
    assert (me["UserName"], me["Arn"]) == (reader.name, reader.arn)
    assert me == iam.get_user(UserName=reader.name)["User"]


def test_create_user_with_a_path_then_get_it(
    server: Any, iam: Any, unique: Callable[[str], str]
) -> None:
    name = unique("carol")
    path = "/" + unique("team") + "/"
    created = iam.create_user(UserName=name, Path=path)["User"]
    assert created["Path"] == path
    assert created["Arn"] == f"arn:aws:iam::{server.account_id}:user{path}{name}"
    assert iam.get_user(UserName=name)["User"] == created
    assert iam.list_attached_user_policies(UserName=name)["AttachedPolicies"] == []

    duplicate = error_of(iam.create_user, UserName=name)
    assert (duplicate["Code"], duplicate["Status"]) == ("EntityAlreadyExists", 409)
    assert name in duplicate["Message"]
    assert code_of(iam.create_user, UserName="no spaces allowed") == "ValidationError"
    assert code_of(iam.create_user, UserName=unique("u"), Path="no-slashes") == "ValidationError"


def test_get_unknown_user_is_no_such_entity(iam: Any, unique: Callable[[str], str]) -> None:
    missing = unique("ghost")
    error = error_of(iam.get_user, UserName=missing)
    assert (error["Code"], error["Status"]) == ("NoSuchEntity", 404)
    assert missing in error["Message"]


def test_list_users_by_path_prefix_with_marker_paging(
    iam: Any, unique: Callable[[str], str]
) -> None:
    path = "/" + unique("paging") + "/"
    direct = [unique("u") for _ in range(3)]
    nested = unique("u")
    for name in direct:
        iam.create_user(UserName=name, Path=path)
    iam.create_user(UserName=nested, Path=path + "deeper/")  # matches the prefix too
    iam.create_user(UserName=unique("u"), Path="/" + unique("other") + "/")
    names = sorted([*direct, nested])

    everything = iam.list_users(PathPrefix=path)
    assert [u["UserName"] for u in everything["Users"]] == names
    assert {u["Path"] for u in everything["Users"]} == {path, path + "deeper/"}
    assert everything["IsTruncated"] is False
    assert "Marker" not in everything

    first = iam.list_users(PathPrefix=path, MaxItems=3)
    assert first["IsTruncated"] is True
    assert [u["UserName"] for u in first["Users"]] == names[:3]
    second = iam.list_users(PathPrefix=path, MaxItems=3, Marker=first["Marker"])
    assert [u["UserName"] for u in second["Users"]] == names[3:]
    assert second["IsTruncated"] is False
    assert "Marker" not in second

    pages = list(
        iam.get_paginator("list_users").paginate(PathPrefix=path, PaginationConfig={"PageSize": 1})
    )
    assert [[u["UserName"] for u in page["Users"]] for page in pages] == [[n] for n in names]
    assert iam.list_users(PathPrefix=path + "deeper/")["Users"][0]["UserName"] == nested

    admins = iam.list_users()["Users"]
    assert "admin" in {u["UserName"] for u in admins}


def test_delete_user_conflicts_while_keys_or_policies_remain(
    iam: Any, unique: Callable[[str], str]
) -> None:
    name = unique("leaver")
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=READER_POLICY)
    key = iam.create_access_key(UserName=name)["AccessKey"]

    error = error_of(iam.delete_user, UserName=name)
    assert (error["Code"], error["Status"]) == ("DeleteConflict", 409)
    assert "access keys" in error["Message"]

    iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
    error = error_of(iam.delete_user, UserName=name)
    assert error["Code"] == "DeleteConflict"
    assert "policies" in error["Message"]
    assert iam.get_user(UserName=name)["User"]["UserName"] == name

    iam.detach_user_policy(UserName=name, PolicyArn=READER_POLICY)
    iam.delete_user(UserName=name)
    assert code_of(iam.get_user, UserName=name) == "NoSuchEntity"
    assert code_of(iam.delete_user, UserName=name) == "NoSuchEntity"
    assert name not in {u["UserName"] for u in iam.list_users()["Users"]}
    # The name is free again.
    assert iam.create_user(UserName=name)["User"]["UserName"] == name


# --- access keys ---------------------------------------------------------------------------


def test_access_key_secret_is_shown_once_and_two_keys_at_most(
    server: Any, iam: Any, unique: Callable[[str], str]
) -> None:
    name = unique("keys")
    iam.create_user(UserName=name)
    first = iam.create_access_key(UserName=name)["AccessKey"]
    assert first["UserName"] == name
    assert first["Status"] == "Active"
    assert first["AccessKeyId"].startswith("AKIA") and len(first["AccessKeyId"]) == 20
    assert len(first["SecretAccessKey"]) == 40
    second = iam.create_access_key(UserName=name)["AccessKey"]
    assert second["AccessKeyId"] != first["AccessKeyId"]
    assert second["SecretAccessKey"] != first["SecretAccessKey"]

    error = error_of(iam.create_access_key, UserName=name)
    assert (error["Code"], error["Status"]) == ("LimitExceeded", 409)
    assert "2" in error["Message"]

    listed = iam.list_access_keys(UserName=name)
    assert listed["IsTruncated"] is False
    metadata = listed["AccessKeyMetadata"]
    assert {m["AccessKeyId"] for m in metadata} == {first["AccessKeyId"], second["AccessKeyId"]}
    assert all(set(m) == {"UserName", "AccessKeyId", "Status", "CreateDate"} for m in metadata)

    raw = iam_raw(server, "ListAccessKeys", UserName=name)
    assert raw.status_code == 200
    assert first["AccessKeyId"] in raw.text
    for secret in (first["SecretAccessKey"], second["SecretAccessKey"]):
        assert secret not in raw.text
    assert "SecretAccessKey" not in raw.text
    for action, params in [("GetUser", {"UserName": name}), ("ListUsers", {})]:
        text = iam_raw(server, action, **params).text
        assert first["SecretAccessKey"] not in text


def test_list_access_keys_without_a_name_lists_the_callers(
    make_user: Callable[..., Identity],
) -> None:
    deployer = make_user(Role.DEPLOYER)
    mine = deployer.iam.list_access_keys()["AccessKeyMetadata"]
    assert [(k["UserName"], k["AccessKeyId"]) for k in mine] == [
        (deployer.name, deployer.access_key_id)
    ]


def test_delete_access_key(iam: Any, unique: Callable[[str], str]) -> None:
    name, other = unique("keys"), unique("other")
    iam.create_user(UserName=name)
    iam.create_user(UserName=other)
    keep = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    drop = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]

    # A key is found only under its own user.
    assert code_of(iam.delete_access_key, UserName=other, AccessKeyId=drop) == "NoSuchEntity"
    iam.delete_access_key(UserName=name, AccessKeyId=drop)
    listed = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [keep]
    error = error_of(iam.delete_access_key, UserName=name, AccessKeyId=drop)
    assert (error["Code"], error["Status"]) == ("NoSuchEntity", 404)
    # With one key gone, a new one may be made again.
    iam.create_access_key(UserName=name)
    assert code_of(iam.create_access_key, UserName=name) == "LimitExceeded"


def test_a_deleted_key_stops_working_at_once(iam: Any, make_user: Callable[..., Identity]) -> None:
    reader = make_user(Role.READER)
    assert "applications" in reader.codedeploy.list_applications()
    assert reader.iam.get_user()["User"]["UserName"] == reader.name

    iam.delete_access_key(UserName=reader.name, AccessKeyId=reader.access_key_id)
    error = error_of(reader.codedeploy.list_applications)
    assert error["Code"] == "UnrecognizedClientException"
    assert reader.secret_access_key not in error["Message"]
    assert code_of(reader.iam.get_user) == "UnrecognizedClientException"


def test_a_deleted_users_key_stops_working(iam: Any, make_user: Callable[..., Identity]) -> None:
    reader = make_user(Role.READER)
    reader.codedeploy.list_applications()
    iam.delete_access_key(UserName=reader.name, AccessKeyId=reader.access_key_id)
    iam.detach_user_policy(UserName=reader.name, PolicyArn=READER_POLICY)
    iam.delete_user(UserName=reader.name)
    # A new user of the same name does not inherit anything.
    iam.create_user(UserName=reader.name)
    iam.attach_user_policy(UserName=reader.name, PolicyArn=ADMIN_POLICY)
    assert code_of(reader.codedeploy.list_applications) == "UnrecognizedClientException"


# --- policies ------------------------------------------------------------------------------


def test_attach_detach_and_list_policies(iam: Any, unique: Callable[[str], str]) -> None:
    name = unique("pol")
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=READER_POLICY)
    iam.attach_user_policy(UserName=name, PolicyArn=DEPLOYER_POLICY)
    iam.attach_user_policy(UserName=name, PolicyArn=READER_POLICY)  # idempotent
    attached = iam.list_attached_user_policies(UserName=name)
    assert attached["IsTruncated"] is False
    assert sorted(
        (p["PolicyName"], p["PolicyArn"]) for p in attached["AttachedPolicies"]
    ) == sorted(
        [
            ("AWSCodeDeployReadOnlyAccess", READER_POLICY),
            ("AWSCodeDeployDeployerAccess", DEPLOYER_POLICY),
        ]
    )

    iam.detach_user_policy(UserName=name, PolicyArn=DEPLOYER_POLICY)
    assert [
        p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]
    ] == [READER_POLICY]
    error = error_of(iam.detach_user_policy, UserName=name, PolicyArn=DEPLOYER_POLICY)
    assert (error["Code"], error["Status"]) == ("NoSuchEntity", 404)


@pytest.mark.parametrize(
    "policy_arn",
    [
        "arn:aws:iam::aws:policy/AdministratorAccess",
        "arn:aws:iam::aws:policy/AWSCodeDeployRole",
        "arn:aws:iam::123456789012:policy/AWSCodeDeployFullAccess",
    ],
)
def test_unknown_policy_arn_is_no_such_entity(
    iam: Any, unique: Callable[[str], str], policy_arn: str
) -> None:
    name = unique("pol")
    iam.create_user(UserName=name)
    error = error_of(iam.attach_user_policy, UserName=name, PolicyArn=policy_arn)
    assert (error["Code"], error["Status"]) == ("NoSuchEntity", 404)
    assert policy_arn in error["Message"]
    assert code_of(iam.detach_user_policy, UserName=name, PolicyArn=policy_arn) == "NoSuchEntity"
    assert iam.list_attached_user_policies(UserName=name)["AttachedPolicies"] == []


def test_policy_calls_on_an_unknown_user(iam: Any, unique: Callable[[str], str]) -> None:
    ghost = unique("ghost")
    for call in (iam.attach_user_policy, iam.detach_user_policy):
        assert code_of(call, UserName=ghost, PolicyArn=READER_POLICY) == "NoSuchEntity"
    assert code_of(iam.list_attached_user_policies, UserName=ghost) == "NoSuchEntity"
    assert code_of(iam.create_access_key, UserName=ghost) == "NoSuchEntity"
    assert code_of(iam.list_access_keys, UserName=ghost) == "NoSuchEntity"


# --- roles ---------------------------------------------------------------------------------


def test_the_first_admin_holds_the_full_access_policy(iam: Any) -> None:
    attached = iam.list_attached_user_policies(UserName="admin")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [ADMIN_POLICY]
    assert ADMIN_POLICY == "arn:aws:iam::aws:policy/AWSCodeDeployFullAccess"


def test_an_admin_made_through_iam_can_do_everything(
    make_user: Callable[..., Identity], unique: Callable[[str], str]
) -> None:
    admin = make_user(Role.ADMIN)
    app = unique("app")
    admin.codedeploy.create_application(applicationName=app)
    admin.codedeploy.update_application(applicationName=app, newApplicationName=app + "-x")
    admin.codedeploy.delete_application(applicationName=app + "-x")
    other = unique("made-by-admin")
    admin.iam.create_user(UserName=other)
    admin.iam.attach_user_policy(UserName=other, PolicyArn=ADMIN_POLICY)
    assert admin.iam.create_access_key(UserName=other)["AccessKey"]["UserName"] == other
    assert other in {u["UserName"] for u in admin.iam.list_users()["Users"]}


#: (operation, params) that a role may call: an error other than access denial proves the call
#: passed the permission check. "{app}" is a name that does not exist.
PUBLIC_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("list_applications", {}),
    ("get_application", {"applicationName": "{app}"}),
    ("batch_get_applications", {"applicationNames": ["{app}"]}),
    ("list_deployment_configs", {}),
    ("get_deployment_config", {"deploymentConfigName": "CodeDeployDefault.OneAtATime"}),
    ("list_deployment_groups", {"applicationName": "{app}"}),
    ("list_on_premises_instances", {}),
    ("list_application_revisions", {"applicationName": "{app}"}),
    ("create_application", {"applicationName": "{app}"}),
    ("update_application", {"applicationName": "{app}", "newApplicationName": "{app}-2"}),
    ("delete_application", {"applicationName": "{app}"}),
    ("create_deployment_config", {"deploymentConfigName": "{app}"}),
    ("delete_deployment_config", {"deploymentConfigName": "{app}"}),
    (
        "create_deployment_group",
        {
            "applicationName": "{app}",
            "deploymentGroupName": "g",
            "serviceRoleArn": "arn:aws:iam::123456789012:role/r",
        },
    ),
    ("delete_deployment_group", {"applicationName": "{app}", "deploymentGroupName": "g"}),
    (
        "register_application_revision",
        {
            "applicationName": "{app}",
            "revision": {
                "revisionType": "S3",
                "s3Location": {"bucket": "b", "key": "k.zip", "bundleType": "zip"},
            },
        },
    ),
    ("deregister_on_premises_instance", {"instanceName": "{app}"}),
    (
        "add_tags_to_on_premises_instances",
        {"tags": [{"Key": "k", "Value": "v"}], "instanceNames": ["{app}"]},
    ),
    (
        "tag_resource",
        {
            "ResourceArn": "arn:aws:codedeploy:us-east-1:123456789012:application:{app}",
            "Tags": [{"Key": "k", "Value": "v"}],
        },
    ),
]
READS = {name for name, _ in PUBLIC_CALLS if name.startswith(("get_", "list_", "batch_get_"))}
DEPLOYER_WRITES = {
    "register_application_revision",
    "deregister_on_premises_instance",
    "add_tags_to_on_premises_instances",
}
ALLOWED: dict[Role | None, set[str]] = {
    Role.ADMIN: {name for name, _ in PUBLIC_CALLS},
    Role.DEPLOYER: READS | DEPLOYER_WRITES,
    Role.READER: READS,
    Role.AGENT: set(),
    None: set(),
}


def _fill(value: Any, app: str) -> Any:
    if isinstance(value, str):
        return value.replace("{app}", app)
    if isinstance(value, list):
        return [_fill(item, app) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, app) for key, item in value.items()}
    return value


@pytest.mark.parametrize(
    "role", [Role.ADMIN, Role.DEPLOYER, Role.READER, Role.AGENT, None], ids=str
)
def test_public_api_permissions_by_role(
    make_user: Callable[..., Identity], unique: Callable[[str], str], role: Role | None
) -> None:
    identity = make_user(role)
    outcomes: dict[str, str] = {}
    for operation, template in PUBLIC_CALLS:
        params = _fill(template, unique("nothing"))
        try:
            getattr(identity.codedeploy, operation)(**params)
            outcomes[operation] = "ok"
        except ClientError as error:
            code = error.response["Error"]["Code"]
            assert code != "InternalFailure", (operation, error.response)
            if code == "AccessDeniedException":
                message = error.response["Error"]["Message"]
                assert message.startswith(
                    f"User: {identity.arn} is not authorized to perform: codedeploy:"
                )
            outcomes[operation] = code
    allowed = {op for op, outcome in outcomes.items() if outcome != "AccessDeniedException"}
    assert allowed == ALLOWED[role], outcomes


def test_deployer_registers_instances_but_cannot_create_applications(
    server: Any, make_user: Callable[..., Identity], unique: Callable[[str], str]
) -> None:
    deployer = make_user(Role.DEPLOYER)
    instance = unique("host")
    arn = f"arn:aws:iam::{server.account_id}:user/{unique('agent')}"
    deployer.codedeploy.register_on_premises_instance(instanceName=instance, iamUserArn=arn)
    got = deployer.codedeploy.get_on_premises_instance(instanceName=instance)["instanceInfo"]
    assert got["iamUserArn"] == arn
    assert instance in deployer.codedeploy.list_on_premises_instances()["instanceNames"]
    deployer.codedeploy.deregister_on_premises_instance(instanceName=instance)

    error = error_of(deployer.codedeploy.create_application, applicationName=unique("app"))
    assert (error["Code"], error["Status"]) == ("AccessDeniedException", 403)
    assert error["Message"] == (
        f"User: {deployer.arn} is not authorized to perform: codedeploy:CreateApplication"
    )


def test_deployer_creates_agent_users_and_their_keys(
    iam: Any, make_user: Callable[..., Identity], unique: Callable[[str], str]
) -> None:
    deployer = make_user(Role.DEPLOYER)
    agent = unique("agent")
    deployer.iam.create_user(UserName=agent)
    deployer.iam.attach_user_policy(UserName=agent, PolicyArn=AGENT_POLICY)
    key = deployer.iam.create_access_key(UserName=agent)["AccessKey"]
    assert key["UserName"] == agent and len(key["SecretAccessKey"]) == 40
    listed = deployer.iam.list_access_keys(UserName=agent)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    deployer.iam.delete_access_key(UserName=agent, AccessKeyId=key["AccessKeyId"])
    assert iam.list_access_keys(UserName=agent)["AccessKeyMetadata"] == []
    assert [
        p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=agent)["AttachedPolicies"]
    ] == [AGENT_POLICY]


@pytest.mark.parametrize("policy", [ADMIN_POLICY, DEPLOYER_POLICY, READER_POLICY])
def test_deployer_attaches_only_the_agent_policy(
    iam: Any, make_user: Callable[..., Identity], unique: Callable[[str], str], policy: str
) -> None:
    deployer = make_user(Role.DEPLOYER)
    target = unique("agent")
    deployer.iam.create_user(UserName=target)
    error = error_of(deployer.iam.attach_user_policy, UserName=target, PolicyArn=policy)
    assert (error["Code"], error["Status"]) == ("AccessDenied", 403)
    assert iam.list_attached_user_policies(UserName=target)["AttachedPolicies"] == []
    # Not to themselves either.
    denied = code_of(deployer.iam.attach_user_policy, UserName=deployer.name, PolicyArn=policy)
    assert denied == "AccessDenied"
    assert [
        p["PolicyArn"]
        for p in iam.list_attached_user_policies(UserName=deployer.name)["AttachedPolicies"]
    ] == [DEPLOYER_POLICY]


def test_deployer_cannot_mint_keys_for_anyone_but_agent_users(
    iam: Any, make_user: Callable[..., Identity], unique: Callable[[str], str]
) -> None:
    deployer = make_user(Role.DEPLOYER)
    other_deployer = make_user(Role.DEPLOYER)
    reader = make_user(Role.READER)
    for name in ("admin", other_deployer.name, reader.name):
        error = error_of(deployer.iam.create_access_key, UserName=name)
        assert (error["Code"], error["Status"]) == ("AccessDenied", 403), name
        assert code_of(deployer.iam.list_access_keys, UserName=name) == "AccessDenied"
        assert (
            code_of(
                deployer.iam.delete_access_key, UserName=name, AccessKeyId="AKIAXXXXXXXXXXXXXXXX"
            )
            == "AccessDenied"
        )
    assert len(iam.list_access_keys(UserName=reader.name)["AccessKeyMetadata"]) == 1

    # A user with no policy yet could become an admin later; its keys are the admin's to make.
    blank = unique("blank")
    iam.create_user(UserName=blank)
    assert code_of(deployer.iam.create_access_key, UserName=blank) == "AccessDenied"
    # An agent user that an admin promoted is no longer the deployer's to manage.
    promoted = unique("agent")
    deployer.iam.create_user(UserName=promoted)
    deployer.iam.attach_user_policy(UserName=promoted, PolicyArn=AGENT_POLICY)
    iam.attach_user_policy(UserName=promoted, PolicyArn=ADMIN_POLICY)
    assert code_of(deployer.iam.create_access_key, UserName=promoted) == "AccessDenied"
    # Nor may it hand the agent policy to a reader.
    assert (
        code_of(deployer.iam.attach_user_policy, UserName=reader.name, PolicyArn=AGENT_POLICY)
        == "AccessDenied"
    )


def test_deployer_iam_calls_outside_its_set_are_denied(
    make_user: Callable[..., Identity], unique: Callable[[str], str]
) -> None:
    deployer = make_user(Role.DEPLOYER)
    agent = unique("agent")
    deployer.iam.create_user(UserName=agent)
    deployer.iam.attach_user_policy(UserName=agent, PolicyArn=AGENT_POLICY)
    calls: list[tuple[Any, dict[str, Any]]] = [
        (deployer.iam.list_users, {}),
        (deployer.iam.get_user, {"UserName": "admin"}),
        (deployer.iam.delete_user, {"UserName": agent}),
        (deployer.iam.detach_user_policy, {"UserName": agent, "PolicyArn": AGENT_POLICY}),
        (deployer.iam.list_attached_user_policies, {"UserName": agent}),
    ]
    for call, params in calls:
        error = error_of(call, **params)
        assert (error["Code"], error["Status"]) == ("AccessDenied", 403), call
    assert deployer.iam.get_user()["User"]["Arn"] == deployer.arn


@pytest.mark.parametrize("role", [Role.READER, Role.AGENT])
def test_readers_and_agents_have_no_iam_but_themselves(
    make_user: Callable[..., Identity], unique: Callable[[str], str], role: Role
) -> None:
    identity = make_user(role)
    assert identity.iam.get_user()["User"]["UserName"] == identity.name
    calls: list[tuple[Any, dict[str, Any]]] = [
        (identity.iam.get_user, {"UserName": "admin"}),
        (identity.iam.list_users, {}),
        (identity.iam.create_user, {"UserName": unique("nope")}),
        (identity.iam.create_access_key, {}),
        (identity.iam.create_access_key, {"UserName": "admin"}),
        (identity.iam.list_access_keys, {}),
        (identity.iam.attach_user_policy, {"UserName": identity.name, "PolicyArn": ADMIN_POLICY}),
        (identity.iam.delete_user, {"UserName": "admin"}),
    ]
    for call, params in calls:
        error = error_of(call, **params)
        assert (error["Code"], error["Status"]) == ("AccessDenied", 403), (call, params)


def test_agent_can_call_nothing_on_the_public_api(make_user: Callable[..., Identity]) -> None:
    agent = make_user(Role.AGENT)
    for call, params in [
        (agent.codedeploy.list_applications, {}),
        (agent.codedeploy.list_deployment_configs, {}),
        (
            agent.codedeploy.get_deployment_config,
            {"deploymentConfigName": "CodeDeployDefault.AllAtOnce"},
        ),
        (agent.codedeploy.list_on_premises_instances, {}),
    ]:
        error = error_of(call, **params)
        assert (error["Code"], error["Status"]) == ("AccessDeniedException", 403)
        assert agent.arn in error["Message"]


# --- audit log -----------------------------------------------------------------------------


@pytest.fixture
def audit(server: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], list[Any]]]:
    """Audit entries with a given request id, read from the server's own database."""
    sqlite = server.data_dir / "opendeploy.db"
    url = f"sqlite:///{sqlite}" if sqlite.exists() else request.getfixturevalue("postgres_url")
    database = Database(url)

    def entries(request_id: str) -> list[Any]:
        with database.read() as connection:
            rows = identities.audit_entries(connection, limit=500)
        return [row for row in rows if row.request_id == request_id]

    yield entries
    database.dispose()


def test_mutating_calls_are_audited_and_reads_are_not(
    server: Any,
    codedeploy: Any,
    iam: Any,
    audit: Callable[[str], list[Any]],
    unique: Callable[[str], str],
) -> None:
    admin_arn = f"arn:aws:iam::{server.account_id}:user/admin"
    app = unique("audited")
    created = codedeploy.create_application(applicationName=app)
    [entry] = audit(created["ResponseMetadata"]["RequestId"])
    assert (entry.principal, entry.operation, entry.outcome) == (
        admin_arn,
        "CreateApplication",
        "Success",
    )
    assert entry.time > 0

    failed = error_of(codedeploy.create_application, applicationName=app)
    [entry] = audit(failed["RequestId"])
    assert (entry.operation, entry.outcome) == (
        "CreateApplication",
        "ApplicationAlreadyExistsException",
    )

    user = unique("audited")
    made = iam.create_user(UserName=user)
    [entry] = audit(made["ResponseMetadata"]["RequestId"])
    assert (entry.principal, entry.operation, entry.outcome) == (admin_arn, "CreateUser", "Success")
    key = iam.create_access_key(UserName=user)
    [entry] = audit(key["ResponseMetadata"]["RequestId"])
    assert entry.operation == "CreateAccessKey"
    assert key["AccessKey"]["SecretAccessKey"] not in repr(tuple(entry))

    for read in (
        codedeploy.list_applications(),
        codedeploy.get_application(applicationName=app),
        iam.list_users(),
        iam.get_user(),
    ):
        assert audit(read["ResponseMetadata"]["RequestId"]) == []


def test_refused_mutating_calls_are_audited(
    make_user: Callable[..., Identity],
    audit: Callable[[str], list[Any]],
    unique: Callable[[str], str],
) -> None:
    reader = make_user(Role.READER)
    denied = error_of(reader.codedeploy.create_application, applicationName=unique("app"))
    [entry] = audit(denied["RequestId"])
    assert (entry.principal, entry.operation, entry.outcome) == (
        reader.arn,
        "CreateApplication",
        "AccessDeniedException",
    )
    deployer = make_user(Role.DEPLOYER)
    denied = error_of(deployer.iam.create_access_key, UserName="admin")
    [entry] = audit(denied["RequestId"])
    assert (entry.principal, entry.operation, entry.outcome) == (
        deployer.arn,
        "CreateAccessKey",
        "AccessDenied",
    )
    denied = error_of(reader.iam.create_user, UserName=unique("u"))
    [entry] = audit(denied["RequestId"])
    assert (entry.operation, entry.outcome) == ("CreateUser", "AccessDenied")
    # Reads refused are not mutating calls.
    denied = error_of(make_user(Role.AGENT).codedeploy.list_applications)
    assert audit(denied["RequestId"]) == []
