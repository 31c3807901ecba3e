"""Resource tags through a real boto3 client (codedeploy-spec §3.11, §1.6, §5).

Taggable: applications, deployment groups and custom deployment configs, named by their ARNs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

Unique = Callable[[str], str]
ROLE = "arn:aws:iam::123456789012:role/CodeDeployServiceRole"
REGION = "us-east-1"


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


def _prefix(server: Any) -> str:
    return f"arn:aws:codedeploy:{REGION}:{server.account_id}"


def _app_arn(server: Any, app: str) -> str:
    return f"{_prefix(server)}:application:{app}"


def _group_arn(server: Any, app: str, group: str) -> str:
    return f"{_prefix(server)}:deploymentgroup:{app}/{group}"


def _config_arn(server: Any, config: str) -> str:
    return f"{_prefix(server)}:deploymentconfig:{config}"


def _tags(codedeploy: Any, arn: str) -> dict[str, str]:
    result = codedeploy.list_tags_for_resource(ResourceArn=arn)
    assert "NextToken" not in result
    return {tag["Key"]: tag["Value"] for tag in result["Tags"]}


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _resources(codedeploy: Any, server: Any, unique: Unique) -> dict[str, str]:
    """One application, one of its groups and one custom config; kind -> ARN."""
    app, group, config = unique("app"), unique("dg"), unique("cfg")
    codedeploy.create_application(applicationName=app)
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    codedeploy.create_deployment_config(
        deploymentConfigName=config, minimumHealthyHosts={"type": "HOST_COUNT", "value": 1}
    )
    return {
        "application": _app_arn(server, app),
        "group": _group_arn(server, app, group),
        "config": _config_arn(server, config),
    }


@pytest.mark.parametrize("kind", ["application", "group", "config"])
def test_tag_list_untag(codedeploy: Any, server: Any, unique: Unique, kind: str) -> None:
    resources = _resources(codedeploy, server, unique)
    arn = resources[kind]
    assert _tags(codedeploy, arn) == {}
    codedeploy.tag_resource(
        ResourceArn=arn,
        Tags=[{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "web"}, {"Key": "empty"}],
    )
    assert _tags(codedeploy, arn) == {"empty": "", "env": "prod", "team": "web"}
    listed = codedeploy.list_tags_for_resource(ResourceArn=arn)["Tags"]
    assert [tag["Key"] for tag in listed] == ["empty", "env", "team"]
    # Tagging again overwrites values and keeps the other keys.
    codedeploy.tag_resource(ResourceArn=arn, Tags=[{"Key": "env", "Value": "dev"}])
    assert _tags(codedeploy, arn) == {"empty": "", "env": "dev", "team": "web"}
    codedeploy.untag_resource(ResourceArn=arn, TagKeys=["env", "not-there"])
    assert _tags(codedeploy, arn) == {"empty": "", "team": "web"}
    # The other resources were never touched.
    for other_kind, other in resources.items():
        if other_kind != kind:
            assert _tags(codedeploy, other) == {}


def test_racing_tag_writes_all_succeed(codedeploy: Any, server: Any, unique: Unique) -> None:
    arn = _resources(codedeploy, server, unique)["application"]
    values = [f"v{i}" for i in range(8)]

    def tag(value: str) -> str:
        try:
            codedeploy.tag_resource(ResourceArn=arn, Tags=[{"Key": "same", "Value": value}])
        except ClientError as error:
            code: str = error.response["Error"]["Code"]
            return code
        return "ok"

    with ThreadPoolExecutor(len(values)) as pool:
        assert list(pool.map(tag, values)) == ["ok"] * len(values)
    assert _tags(codedeploy, arn)["same"] in values


def test_tags_given_at_creation_are_listed(codedeploy: Any, server: Any, unique: Unique) -> None:
    app, group = unique("app"), unique("dg")
    codedeploy.create_application(
        applicationName=app, tags=[{"Key": "owner", "Value": "ops"}, {"Key": "tier", "Value": "1"}]
    )
    codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        tags=[{"Key": "stage", "Value": "prod"}],
    )
    assert _tags(codedeploy, _app_arn(server, app)) == {"owner": "ops", "tier": "1"}
    assert _tags(codedeploy, _group_arn(server, app, group)) == {"stage": "prod"}


def test_deleting_the_application_drops_its_tags_and_its_groups_tags(
    codedeploy: Any, server: Any, unique: Unique
) -> None:
    # The neighbour's name differs only where the deleted one has "_", a LIKE wildcard.
    app, group = unique("app_"), unique("dg")
    neighbour = app.replace("_", "X")
    for name in (app, neighbour):
        codedeploy.create_application(applicationName=name, tags=[{"Key": "app", "Value": name}])
        codedeploy.create_deployment_group(
            applicationName=name,
            deploymentGroupName=group,
            serviceRoleArn=ROLE,
            tags=[{"Key": "group", "Value": name}],
        )
    codedeploy.delete_application(applicationName=app)
    _expect_error(
        codedeploy.list_tags_for_resource,
        "ApplicationDoesNotExistException",
        app,
        ResourceArn=_app_arn(server, app),
    )
    _expect_error(
        codedeploy.list_tags_for_resource,
        "ApplicationDoesNotExistException",
        app,
        ResourceArn=_group_arn(server, app, group),
    )
    # Recreated under the same names, they start without tags.
    codedeploy.create_application(applicationName=app)
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    assert _tags(codedeploy, _app_arn(server, app)) == {}
    assert _tags(codedeploy, _group_arn(server, app, group)) == {}
    # Another application's tags, and its group's, are untouched.
    assert _tags(codedeploy, _app_arn(server, neighbour)) == {"app": neighbour}
    assert _tags(codedeploy, _group_arn(server, neighbour, group)) == {"group": neighbour}


def test_deleting_a_config_drops_its_tags(codedeploy: Any, server: Any, unique: Unique) -> None:
    config = unique("cfg")
    hosts = {"type": "FLEET_PERCENT", "value": 10}
    codedeploy.create_deployment_config(deploymentConfigName=config, minimumHealthyHosts=hosts)
    codedeploy.tag_resource(
        ResourceArn=_config_arn(server, config), Tags=[{"Key": "k", "Value": "v"}]
    )
    codedeploy.delete_deployment_config(deploymentConfigName=config)
    _expect_error(
        codedeploy.list_tags_for_resource,
        "DeploymentConfigDoesNotExistException",
        config,
        ResourceArn=_config_arn(server, config),
    )
    codedeploy.create_deployment_config(deploymentConfigName=config, minimumHealthyHosts=hosts)
    assert _tags(codedeploy, _config_arn(server, config)) == {}


def test_renaming_the_application_moves_its_tags(
    codedeploy: Any, server: Any, unique: Unique
) -> None:
    app, new_app, group = unique("app"), unique("app"), unique("dg")
    codedeploy.create_application(applicationName=app, tags=[{"Key": "a", "Value": "1"}])
    codedeploy.create_deployment_group(
        applicationName=app,
        deploymentGroupName=group,
        serviceRoleArn=ROLE,
        tags=[{"Key": "g", "Value": "2"}],
    )
    codedeploy.update_application(applicationName=app, newApplicationName=new_app)
    assert _tags(codedeploy, _app_arn(server, new_app)) == {"a": "1"}
    assert _tags(codedeploy, _group_arn(server, new_app, group)) == {"g": "2"}
    codedeploy.create_application(applicationName=app)
    codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group, serviceRoleArn=ROLE
    )
    assert _tags(codedeploy, _app_arn(server, app)) == {}
    assert _tags(codedeploy, _group_arn(server, app, group)) == {}


def test_arn_kinds_that_take_no_tags(codedeploy: Any, server: Any, unique: Unique) -> None:
    instance = unique("host")
    codedeploy.register_on_premises_instance(
        instanceName=instance, iamUserArn=f"arn:aws:iam::123456789012:user/{unique('u')}"
    )
    instance_arn = codedeploy.get_on_premises_instance(instanceName=instance)["instanceInfo"][
        "instanceArn"
    ]
    cases = [
        (_config_arn(server, "CodeDeployDefault.OneAtATime"), ("CodeDeployDefault.OneAtATime",)),
        (_config_arn(server, "CodeDeployDefault.LambdaAllAtOnce"), ("predefined",)),
        (instance_arn, ("instance",)),
        (f"{_prefix(server)}:deployment:d-ABCDEFGHI", ("deployment",)),
        ("arn:aws:s3:::my-bucket", ("arn:aws:s3:::my-bucket",)),
        (f"arn:aws:iam::{server.account_id}:role/Deployer", ("iam",)),
    ]
    for arn, fragments in cases:
        _expect_error(
            codedeploy.tag_resource,
            "ArnNotSupportedException",
            *fragments,
            ResourceArn=arn,
            Tags=[{"Key": "k", "Value": "v"}],
        )
        _expect_error(
            codedeploy.untag_resource,
            "ArnNotSupportedException",
            *fragments,
            ResourceArn=arn,
            TagKeys=["k"],
        )
        _expect_error(
            codedeploy.list_tags_for_resource,
            "ArnNotSupportedException",
            *fragments,
            ResourceArn=arn,
        )


def test_malformed_and_foreign_arns(codedeploy: Any, server: Any, unique: Unique) -> None:
    app = unique("app")
    codedeploy.create_application(applicationName=app)
    other_account = "999999999999" if server.account_id != "999999999999" else "888888888888"
    cases = [
        ("not-an-arn", "not-an-arn"),
        ("arn:aws:codedeploy", "arn:aws:codedeploy"),
        (f"arn:aws:codedeploy:{REGION}:{other_account}:application:{app}", other_account),
        (f"arn:aws:codedeploy:eu-west-1:{server.account_id}:application:{app}", "eu-west-1"),
        # Each kind has its own separator: application:<name>, deploymentgroup:<app>/<group>.
        (f"{_prefix(server)}:application/{app}", f"application/{app}"),
        (f"{_prefix(server)}:deploymentgroup:{app}", f"deploymentgroup:{app}"),
        (f"{_prefix(server)}:deploymentgroup:{app}/", f"deploymentgroup:{app}/"),
        (f"{_prefix(server)}:application:", "application:"),
    ]
    for arn, fragment in cases:
        _expect_error(
            codedeploy.tag_resource,
            "InvalidArnException",
            fragment,
            ResourceArn=arn,
            Tags=[{"Key": "k", "Value": "v"}],
        )
        _expect_error(
            codedeploy.list_tags_for_resource, "InvalidArnException", fragment, ResourceArn=arn
        )
    assert _tags(codedeploy, _app_arn(server, app)) == {}


def test_resources_that_do_not_exist(codedeploy: Any, server: Any, unique: Unique) -> None:
    app, ghost_app, ghost_group, ghost_config = (
        unique("app"),
        unique("ghost-app"),
        unique("ghost-dg"),
        unique("ghost-cfg"),
    )
    codedeploy.create_application(applicationName=app)
    cases = [
        (_app_arn(server, ghost_app), "ApplicationDoesNotExistException", ghost_app),
        (
            _group_arn(server, ghost_app, ghost_group),
            "ApplicationDoesNotExistException",
            ghost_app,
        ),
        (
            _group_arn(server, app, ghost_group),
            "DeploymentGroupDoesNotExistException",
            ghost_group,
        ),
        (_config_arn(server, ghost_config), "DeploymentConfigDoesNotExistException", ghost_config),
    ]
    for arn, code, fragment in cases:
        _expect_error(
            codedeploy.tag_resource,
            code,
            fragment,
            ResourceArn=arn,
            Tags=[{"Key": "k", "Value": "v"}],
        )
        _expect_error(codedeploy.untag_resource, code, fragment, ResourceArn=arn, TagKeys=["k"])
        _expect_error(codedeploy.list_tags_for_resource, code, fragment, ResourceArn=arn)


def test_required_members_and_tag_validation(codedeploy: Any, server: Any, unique: Unique) -> None:
    app = unique("app")
    codedeploy.create_application(applicationName=app)
    arn = _app_arn(server, app)
    raw = boto3.session.Session().client(
        "codedeploy",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=Config(parameter_validation=False, retries={"max_attempts": 1, "mode": "standard"}),
    )
    _expect_error(raw.list_tags_for_resource, "ResourceArnRequiredException", "ResourceArn")
    _expect_error(
        raw.list_tags_for_resource, "ResourceArnRequiredException", "ResourceArn", ResourceArn=""
    )
    _expect_error(
        raw.tag_resource,
        "ResourceArnRequiredException",
        "ResourceArn",
        Tags=[{"Key": "k", "Value": "v"}],
    )
    _expect_error(raw.untag_resource, "ResourceArnRequiredException", "ResourceArn", TagKeys=["k"])
    _expect_error(codedeploy.tag_resource, "TagRequiredException", "Tags", ResourceArn=arn, Tags=[])
    _expect_error(
        codedeploy.untag_resource, "TagRequiredException", "TagKeys", ResourceArn=arn, TagKeys=[]
    )
    for tags, fragment in [
        ([{"Key": "", "Value": "v"}], "Key"),
        ([{"Value": "v"}], "Key"),
        ([{"Key": "k" * 129, "Value": "v"}], "128"),
        ([{"Key": "k", "Value": "v" * 257}], "256"),
        ([{"Key": "aws:reserved", "Value": "v"}], "aws:"),
    ]:
        _expect_error(
            codedeploy.tag_resource,
            "InvalidTagsToAddException",
            fragment,
            ResourceArn=arn,
            Tags=tags,
        )
    codedeploy.tag_resource(
        ResourceArn=arn, Tags=[{"Key": f"k{i:02d}", "Value": "v"} for i in range(50)]
    )
    _expect_error(
        codedeploy.tag_resource,
        "TagLimitExceededException",
        "51",
        "50",
        ResourceArn=arn,
        Tags=[{"Key": "one-too-many", "Value": "v"}],
    )
    tags = _tags(codedeploy, arn)
    assert len(tags) == 50
    assert "one-too-many" not in tags
    # Overwriting an existing key does not count against the limit.
    codedeploy.tag_resource(ResourceArn=arn, Tags=[{"Key": "k00", "Value": "new"}])
    assert _tags(codedeploy, arn)["k00"] == "new"
