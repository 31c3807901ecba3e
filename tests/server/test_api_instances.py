"""On-premises instances through a real boto3 client (codedeploy-spec §3.10, §1.4, §1.6, §5).

The server is shared by every test, and ListOnPremisesInstances lists all of its instances, so
listing assertions always filter by tags that only the test itself uses.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

Unique = Callable[[str], str]
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def _fast_server(running_server: Any) -> Any:
    """Work around tests/conftest.py binding its listener with proto 0: asyncio then never sets
    TCP_NODELAY on accepted sockets and every response waits ~40 ms for a delayed ACK. Linux
    copies TCP_NODELAY from the listener to the connections it accepts."""
    for listener in getattr(running_server._server, "servers", []):
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return running_server


@pytest.fixture(scope="module")
def _module_client(_fast_server: Any) -> Any:
    return _fast_server.client("codedeploy")


@pytest.fixture
def codedeploy(_module_client: Any) -> Any:
    """The admin client, shared by the module's tests: building one costs ~70 ms of CPU."""
    return _module_client


def _expect_error(call: Callable[..., Any], code: str, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response["Error"]
    assert error["Code"] == code, error["Message"]
    for fragment in fragments:
        assert fragment in error["Message"], (fragment, error["Message"])
    message: str = error["Message"]
    return message


def _user_arn(unique: Unique) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/onprem/{unique('user')}"


def _session_arn(unique: Unique) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/OnPremRole/{unique('session')}"


def _register(codedeploy: Any, unique: Unique, **tags: str) -> str:
    name = unique("host")
    codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=_user_arn(unique))
    if tags:
        codedeploy.add_tags_to_on_premises_instances(
            instanceNames=[name], tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )
    return name


def _info(codedeploy: Any, name: str) -> dict[str, Any]:
    info: dict[str, Any] = codedeploy.get_on_premises_instance(instanceName=name)["instanceInfo"]
    return info


def _tags(codedeploy: Any, name: str) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in _info(codedeploy, name)["tags"]}


def _listed(codedeploy: Any, **kwargs: Any) -> list[str]:
    names: list[str] = []
    for page in codedeploy.get_paginator("list_on_premises_instances").paginate(**kwargs):
        names.extend(page["instanceNames"])
    return names


def _assert_not_registered(codedeploy: Any, name: str) -> None:
    _expect_error(
        codedeploy.get_on_premises_instance,
        "InstanceNotRegisteredException",
        name,
        instanceName=name,
    )


# --- register / get -----------------------------------------------------------------------------


def test_register_with_user_arn(codedeploy: Any, server: Any, unique: Unique) -> None:
    name, user_arn = unique("host"), _user_arn(unique)
    before = dt.datetime.now(dt.UTC)
    assert codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=user_arn)
    after = dt.datetime.now(dt.UTC)
    info = _info(codedeploy, name)
    assert info["instanceName"] == name
    assert info["iamUserArn"] == user_arn
    assert "iamSessionArn" not in info
    assert "deregisterTime" not in info
    assert info["tags"] == []
    pattern = rf"arn:aws:codedeploy:us-east-1:{server.account_id}:instance/{name}_[A-Za-z0-9]{{10}}"
    assert re.fullmatch(pattern, info["instanceArn"]), info["instanceArn"]
    slack = dt.timedelta(seconds=2)
    assert before - slack <= info["registerTime"] <= after + slack


def test_register_with_session_arn(codedeploy: Any, unique: Unique) -> None:
    name, session_arn = unique("host"), _session_arn(unique)
    codedeploy.register_on_premises_instance(instanceName=name, iamSessionArn=session_arn)
    info = _info(codedeploy, name)
    assert info["iamSessionArn"] == session_arn
    assert "iamUserArn" not in info


def test_every_instance_gets_its_own_arn(codedeploy: Any, unique: Unique) -> None:
    first, second = _register(codedeploy, unique), _register(codedeploy, unique)
    arns = {_info(codedeploy, first)["instanceArn"], _info(codedeploy, second)["instanceArn"]}
    assert len(arns) == 2


def test_registration_errors(codedeploy: Any, unique: Unique) -> None:
    taken, user_arn = unique("host"), _user_arn(unique)
    session_arn = _session_arn(unique)
    codedeploy.register_on_premises_instance(instanceName=taken, iamUserArn=user_arn)
    session_holder = unique("host")
    codedeploy.register_on_premises_instance(instanceName=session_holder, iamSessionArn=session_arn)
    fresh = unique("host")
    cases: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [
        (
            {
                "instanceName": fresh,
                "iamUserArn": _user_arn(unique),
                "iamSessionArn": _session_arn(unique),
            },
            "MultipleIamArnsProvidedException",
            ("iamUserArn", "iamSessionArn"),
        ),
        ({"instanceName": fresh}, "IamArnRequiredException", ("iamUserArn", "iamSessionArn")),
        (
            {"instanceName": taken, "iamUserArn": _user_arn(unique)},
            "InstanceNameAlreadyRegisteredException",
            (taken,),
        ),
        (
            {"instanceName": fresh, "iamUserArn": user_arn},
            "IamUserArnAlreadyRegisteredException",
            (user_arn, taken),
        ),
        (
            {"instanceName": fresh, "iamSessionArn": session_arn},
            "IamSessionArnAlreadyRegisteredException",
            (session_arn, session_holder),
        ),
        (
            {"instanceName": fresh, "iamUserArn": "not-an-arn"},
            "InvalidIamUserArnException",
            ("not-an-arn",),
        ),
        (
            {"instanceName": fresh, "iamUserArn": f"arn:aws:iam::{ACCOUNT}:role/Deployer"},
            "InvalidIamUserArnException",
            ("role/Deployer",),
        ),
        (
            {"instanceName": fresh, "iamUserArn": "arn:aws:iam::12345:user/short-account"},
            "InvalidIamUserArnException",
            ("short-account",),
        ),
        (
            {"instanceName": fresh, "iamSessionArn": f"arn:aws:iam::{ACCOUNT}:user/u"},
            "InvalidIamSessionArnException",
            ("user/u",),
        ),
        (
            {"instanceName": "bad name", "iamUserArn": _user_arn(unique)},
            "InvalidInstanceNameException",
            ("bad name",),
        ),
    ]
    for kwargs, code, fragments in cases:
        _expect_error(codedeploy.register_on_premises_instance, code, *fragments, **kwargs)
    _assert_not_registered(codedeploy, fresh)
    assert _info(codedeploy, taken)["iamUserArn"] == user_arn


def test_racing_registrations_of_one_name_leave_one_winner(codedeploy: Any, unique: Unique) -> None:
    for _ in range(3):
        name = unique("race")
        arns = [_user_arn(unique) for _ in range(8)]

        def register(user_arn: str, name: str = name) -> str:
            try:
                codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=user_arn)
            except ClientError as error:
                code: str = error.response["Error"]["Code"]
                return code
            return "ok"

        with ThreadPoolExecutor(len(arns)) as pool:
            outcomes = list(pool.map(register, arns))
        assert outcomes.count("ok") == 1, outcomes
        assert set(outcomes) == {"ok", "InstanceNameAlreadyRegisteredException"}
        winner = arns[outcomes.index("ok")]
        assert _info(codedeploy, name)["iamUserArn"] == winner


def test_racing_registrations_of_one_user_arn_leave_one_winner(
    codedeploy: Any, unique: Unique
) -> None:
    for _ in range(3):
        user_arn = _user_arn(unique)
        names = [unique("race") for _ in range(8)]

        def register(name: str, user_arn: str = user_arn) -> str:
            try:
                codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=user_arn)
            except ClientError as error:
                code: str = error.response["Error"]["Code"]
                return code
            return "ok"

        with ThreadPoolExecutor(len(names)) as pool:
            outcomes = list(pool.map(register, names))
        assert outcomes.count("ok") == 1, outcomes
        assert set(outcomes) == {"ok", "IamUserArnAlreadyRegisteredException"}
        infos = codedeploy.batch_get_on_premises_instances(instanceNames=names)["instanceInfos"]
        assert [info["instanceName"] for info in infos] == [names[outcomes.index("ok")]]


# --- deregister ---------------------------------------------------------------------------------


def test_deregistered_instance_stays_listable(codedeploy: Any, unique: Unique) -> None:
    marker = unique("marker")
    gone = _register(codedeploy, unique, **{marker: "x"})
    kept = _register(codedeploy, unique, **{marker: "x"})
    assert codedeploy.deregister_on_premises_instance(instanceName=gone)
    info = _info(codedeploy, gone)
    assert info["deregisterTime"] >= info["registerTime"]
    assert info["tags"] == [{"Key": marker, "Value": "x"}]
    mine = [{"Key": marker, "Type": "KEY_ONLY"}]
    assert _listed(codedeploy, tagFilters=mine) == sorted([gone, kept])
    assert _listed(codedeploy, tagFilters=mine, registrationStatus="Registered") == [kept]
    assert _listed(codedeploy, tagFilters=mine, registrationStatus="Deregistered") == [gone]
    batch = codedeploy.batch_get_on_premises_instances(instanceNames=[gone])["instanceInfos"]
    assert batch == [info]
    for call, kwargs in [
        (codedeploy.deregister_on_premises_instance, {"instanceName": gone}),
        (
            codedeploy.add_tags_to_on_premises_instances,
            {"instanceNames": [gone], "tags": [{"Key": "k", "Value": "v"}]},
        ),
        (
            codedeploy.remove_tags_from_on_premises_instances,
            {"instanceNames": [gone], "tags": [{"Key": marker, "Value": "x"}]},
        ),
    ]:
        _expect_error(call, "InstanceNotRegisteredException", gone, **kwargs)
    assert _info(codedeploy, gone) == info


def test_user_arn_of_a_deregistered_instance_can_be_reused(codedeploy: Any, unique: Unique) -> None:
    first, second, user_arn = unique("host"), unique("host"), _user_arn(unique)
    codedeploy.register_on_premises_instance(instanceName=first, iamUserArn=user_arn)
    codedeploy.deregister_on_premises_instance(instanceName=first)
    codedeploy.register_on_premises_instance(instanceName=second, iamUserArn=user_arn)
    assert _info(codedeploy, second)["iamUserArn"] == user_arn
    assert "deregisterTime" in _info(codedeploy, first)


def test_unknown_instance_is_not_registered(codedeploy: Any, unique: Unique) -> None:
    ghost = unique("ghost")
    _assert_not_registered(codedeploy, ghost)
    _expect_error(
        codedeploy.deregister_on_premises_instance,
        "InstanceNotRegisteredException",
        ghost,
        instanceName=ghost,
    )


# --- batch get / list ---------------------------------------------------------------------------


def test_batch_get_in_request_order_without_unknown_names(codedeploy: Any, unique: Unique) -> None:
    first, second = _register(codedeploy, unique), _register(codedeploy, unique)
    ghost = unique("ghost")
    infos = codedeploy.batch_get_on_premises_instances(
        instanceNames=[second, ghost, first, second]
    )["instanceInfos"]
    assert [info["instanceName"] for info in infos] == [second, first]
    assert infos[1] == _info(codedeploy, first)
    assert codedeploy.batch_get_on_premises_instances(instanceNames=[ghost])["instanceInfos"] == []
    _expect_error(
        codedeploy.batch_get_on_premises_instances,
        "BatchLimitExceededException",
        "101",
        "100",
        instanceNames=[f"h{i}" for i in range(101)],
    )


def test_list_tag_filters_are_ored(codedeploy: Any, unique: Unique) -> None:
    env, role, team = unique("env"), unique("role"), unique("team")
    value = unique("value")
    prod = _register(codedeploy, unique, **{env: "prod"})
    dev = _register(codedeploy, unique, **{env: "dev"})
    web = _register(codedeploy, unique, **{role: value})
    other = _register(codedeploy, unique, **{team: value})
    _register(codedeploy, unique, **{team: "unrelated"})

    def listed(*filters: dict[str, str], **kwargs: Any) -> list[str]:
        return _listed(codedeploy, tagFilters=list(filters), **kwargs)

    assert listed({"Key": env, "Type": "KEY_ONLY"}) == sorted([prod, dev])
    assert listed({"Key": env, "Value": "prod", "Type": "KEY_AND_VALUE"}) == [prod]
    assert listed({"Value": value, "Type": "VALUE_ONLY"}) == sorted([web, other])
    assert listed(
        {"Key": env, "Value": "dev", "Type": "KEY_AND_VALUE"},
        {"Key": role, "Type": "KEY_ONLY"},
    ) == sorted([dev, web])
    assert listed(
        {"Key": env, "Value": "prod", "Type": "KEY_AND_VALUE"},
        {"Value": value, "Type": "VALUE_ONLY"},
        {"Key": env, "Type": "KEY_ONLY"},
    ) == sorted([prod, dev, web, other])
    # KEY_AND_VALUE needs both to match on the same tag.
    assert listed({"Key": role, "Value": "prod", "Type": "KEY_AND_VALUE"}) == []
    assert listed({"Key": env, "Type": "KEY_ONLY"}, registrationStatus="Deregistered") == []
    everything = codedeploy.list_on_premises_instances()["instanceNames"]
    assert everything == sorted(everything)


def test_list_refuses_bad_filters(codedeploy: Any) -> None:
    _expect_error(
        codedeploy.list_on_premises_instances,
        "InvalidTagFilterException",
        "tagFilters[0]",
        "KEY_ONLY",
        tagFilters=[{"Value": "v", "Type": "KEY_ONLY"}],
    )
    _expect_error(
        codedeploy.list_on_premises_instances,
        "InvalidTagFilterException",
        "ANY",
        tagFilters=[{"Key": "k", "Type": "ANY"}],
    )
    _expect_error(
        codedeploy.list_on_premises_instances,
        "InvalidRegistrationStatusException",
        "Gone",
        registrationStatus="Gone",
    )


def test_list_pages_through_more_than_100_instances(codedeploy: Any, unique: Unique) -> None:
    marker = unique("fleet")
    names = sorted(unique(f"n{i:03d}") for i in range(104))
    for name in names:
        codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=_user_arn(unique))
    for start in range(0, len(names), 100):
        codedeploy.add_tags_to_on_premises_instances(
            instanceNames=names[start : start + 100], tags=[{"Key": marker, "Value": "1"}]
        )
    filters = [{"Key": marker, "Value": "1", "Type": "KEY_AND_VALUE"}]
    first = codedeploy.list_on_premises_instances(tagFilters=filters)
    assert len(first["instanceNames"]) == 100
    pages = list(
        codedeploy.get_paginator("list_on_premises_instances").paginate(
            tagFilters=filters, registrationStatus="Registered"
        )
    )
    assert [len(page["instanceNames"]) for page in pages] == [100, 4]
    assert [name for page in pages for name in page["instanceNames"]] == names
    assert "nextToken" not in pages[-1]
    _expect_error(
        codedeploy.list_on_premises_instances,
        "InvalidNextTokenException",
        "nextToken",
        tagFilters=[{"Key": marker, "Type": "KEY_ONLY"}],
        nextToken=first["nextToken"],
    )
    # Tokens are base64 JSON {"s": scope, "p": position}: a client can rewrite the position.
    token = first["nextToken"]
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for position in (5, ["x"]):
        tampered = base64.urlsafe_b64encode(json.dumps({**data, "p": position}).encode())
        _expect_error(
            codedeploy.list_on_premises_instances,
            "InvalidNextTokenException",
            "nextToken",
            tagFilters=filters,
            nextToken=tampered.decode(),
        )


# --- instance tags ------------------------------------------------------------------------------


def test_add_and_remove_tags(codedeploy: Any, unique: Unique) -> None:
    first, second = _register(codedeploy, unique), _register(codedeploy, unique)
    both = [first, second]
    codedeploy.add_tags_to_on_premises_instances(
        instanceNames=both,
        tags=[{"Key": "env", "Value": "prod"}, {"Key": "rack", "Value": "r1"}, {"Key": "bare"}],
    )
    assert _tags(codedeploy, first) == {"env": "prod", "rack": "r1", "bare": ""}
    assert [tag["Key"] for tag in _info(codedeploy, first)["tags"]] == ["bare", "env", "rack"]
    codedeploy.add_tags_to_on_premises_instances(
        instanceNames=[second], tags=[{"Key": "env", "Value": "dev"}]
    )
    assert _tags(codedeploy, second) == {"env": "dev", "rack": "r1", "bare": ""}
    assert _tags(codedeploy, first)["env"] == "prod"
    codedeploy.remove_tags_from_on_premises_instances(
        instanceNames=both, tags=[{"Key": "env", "Value": "prod"}, {"Key": "rack"}]
    )
    # A tag given with a value goes only where that value matches; without one, it goes.
    assert _tags(codedeploy, first) == {"bare": ""}
    assert _tags(codedeploy, second) == {"env": "dev", "bare": ""}
    codedeploy.remove_tags_from_on_premises_instances(
        instanceNames=[second], tags=[{"Key": "not-there"}]
    )
    assert _tags(codedeploy, second) == {"env": "dev", "bare": ""}


def test_tag_errors(codedeploy: Any, unique: Unique) -> None:
    name = _register(codedeploy, unique, start="yes")
    ghost = unique("ghost")
    good = [{"Key": "k", "Value": "v"}]
    for call in (
        codedeploy.add_tags_to_on_premises_instances,
        codedeploy.remove_tags_from_on_premises_instances,
    ):
        _expect_error(
            call, "InstanceNotRegisteredException", ghost, instanceNames=[name, ghost], tags=good
        )
        _expect_error(call, "TagRequiredException", "tags", instanceNames=[name], tags=[])
        _expect_error(
            call,
            "InvalidTagException",
            "tags[1]",
            "Key",
            instanceNames=[name],
            tags=[*good, {"Key": "", "Value": "v"}],
        )
        _expect_error(
            call, "InvalidTagException", "Key", instanceNames=[name], tags=[{"Value": "v"}]
        )
        _expect_error(
            call,
            "InstanceLimitExceededException",
            "101",
            "100",
            instanceNames=[f"h{i}" for i in range(101)],
            tags=good,
        )
    _expect_error(
        codedeploy.add_tags_to_on_premises_instances,
        "InvalidTagException",
        "128",
        instanceNames=[name],
        tags=[{"Key": "k" * 129, "Value": "v"}],
    )
    _expect_error(
        codedeploy.add_tags_to_on_premises_instances,
        "InvalidTagException",
        "256",
        instanceNames=[name],
        tags=[{"Key": "k", "Value": "v" * 257}],
    )
    _expect_error(
        codedeploy.add_tags_to_on_premises_instances,
        "TagLimitExceededException",
        name,
        "10",
        instanceNames=[name],
        tags=[{"Key": f"k{i}", "Value": "v"} for i in range(10)],
    )
    # Nothing above changed the instance: no partial tagging of the registered one.
    assert _tags(codedeploy, name) == {"start": "yes"}
    codedeploy.add_tags_to_on_premises_instances(
        instanceNames=[name], tags=[{"Key": "k" * 128, "Value": "v" * 256}]
    )
    assert _tags(codedeploy, name) == {"start": "yes", "k" * 128: "v" * 256}
