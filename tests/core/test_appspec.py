from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from opendeploy.core.appspec import (
    DEFAULT_HOOK_TIMEOUT,
    PERMISSION_TYPES,
    SERVER_HOOK_EVENTS,
    AppSpec,
    FileMapping,
    Hook,
    Permission,
    SELinuxContext,
    validate_appspec,
)
from opendeploy.core.errors import AppSpecError


def spec(**sections: Any) -> dict[str, Any]:
    return {"version": 0.0, "os": "linux", **sections}


def rejected(
    data: object,
    *,
    lines: Mapping[str, int] | None = None,
    custom_events: tuple[str, ...] = (),
) -> AppSpecError:
    with pytest.raises(AppSpecError) as info:
        validate_appspec(data, file="bundle/appspec.yml", lines=lines, custom_events=custom_events)
    assert info.value.file == "bundle/appspec.yml"
    return info.value


def hooks_of(**events: Any) -> dict[str, Any]:
    return spec(hooks=events)


# --- the whole document ---------------------------------------------------------------------


def test_minimal_appspec_has_empty_sections() -> None:
    result = validate_appspec({"version": 0.0, "os": "linux"})

    assert result == AppSpec(version="0.0", os="linux")
    assert result.files == ()
    assert result.permissions == ()
    assert dict(result.hooks) == {}
    assert result.file_exists_behavior is None


def test_full_appspec_is_parsed_into_dataclasses() -> None:
    result = validate_appspec(
        spec(
            files=[{"source": "/", "destination": "/srv/app"}],
            file_exists_behavior="OVERWRITE",
            permissions=[
                {
                    "object": "/srv/app",
                    "pattern": "*.sh",
                    "except": ["skip.sh"],
                    "owner": "app",
                    "group": "staff",
                    "mode": 750,
                    "acls": ["u:bob:rw", "d:g:ops:r-x"],
                    "context": {"name": "system_u", "type": "httpd_sys_content_t", "range": "s0"},
                    "type": ["file"],
                }
            ],
            hooks={
                "BeforeInstall": [{"location": "scripts/prep.sh"}],
                "AfterInstall": [{"location": "scripts/a.sh", "timeout": 300, "runas": "app"}],
            },
        )
    )

    assert result.files == (FileMapping("/", "/srv/app"),)
    assert result.file_exists_behavior == "OVERWRITE"
    assert result.permissions == (
        Permission(
            object="/srv/app",
            pattern="*.sh",
            except_=("skip.sh",),
            owner="app",
            group="staff",
            mode="750",
            acls=("u:bob:rw", "d:g:ops:r-x"),
            context=SELinuxContext(type="httpd_sys_content_t", user="system_u", range="s0"),
            type=("file",),
        ),
    )
    assert list(result.hooks) == ["BeforeInstall", "AfterInstall"]
    assert result.hooks["BeforeInstall"] == (Hook("scripts/prep.sh", DEFAULT_HOOK_TIMEOUT, None),)
    assert result.hooks["AfterInstall"] == (Hook("scripts/a.sh", 300, "app"),)


def test_appspec_is_immutable() -> None:
    result = validate_appspec(hooks_of(AfterInstall=[{"location": "a.sh"}]))

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.os = "windows"  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.hooks["ApplicationStart"] = ()  # type: ignore[index]
    assert hash(result) == hash(validate_appspec(hooks_of(AfterInstall=[{"location": "a.sh"}])))


def test_hooks_given_as_dict_are_frozen_too() -> None:
    built = AppSpec(hooks={"AfterInstall": (Hook("a.sh"),)})

    with pytest.raises(TypeError):
        built.hooks["AfterInstall"] = ()  # type: ignore[index]


@pytest.mark.parametrize("data", [None, [], "version: 0.0", 0.0])
def test_top_level_must_be_a_mapping(data: object) -> None:
    error = rejected(data)

    assert error.field is None
    assert "appspec" in error.reason


def test_error_text_names_file_line_and_field() -> None:
    error = rejected(
        hooks_of(AfterInstall=[{"location": "a.sh", "timeout": 0}]),
        lines={"hooks": 3, "hooks.AfterInstall": 4, "hooks.AfterInstall[0].timeout": 6},
    )

    assert error.field == "hooks.AfterInstall[0].timeout"
    assert error.line == 6
    assert str(error) == (
        "bundle/appspec.yml:6 at hooks.AfterInstall[0].timeout:"
        " timeout must be more than 0 seconds, not 0"
    )


def test_missing_key_takes_the_line_of_its_entry() -> None:
    error = rejected(
        spec(files=[{"source": "/"}]),
        lines={"files": 3, "files[0]": 4, "files[0].source": 4},
    )

    assert error.field == "files[0].destination"
    assert error.line == 4
    assert error.reason == "destination is missing"


def test_line_is_none_when_unknown() -> None:
    error = rejected(spec(os="solaris"))

    assert error.line is None
    assert str(error).startswith("bundle/appspec.yml at os: ")


# --- version and os ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0.0, 0, -0.0])
def test_version_zero_is_accepted(version: object) -> None:
    assert validate_appspec({"version": version, "os": "linux"}).version == "0.0"


def test_version_missing() -> None:
    error = rejected({"os": "linux"})

    assert error.field == "version"
    assert "version is missing" in error.reason


@pytest.mark.parametrize("version", ["0.0", "0"])
def test_quoted_version_is_refused_like_the_stock_agent(version: str) -> None:
    error = rejected({"version": version, "os": "linux"}, lines={"version": 1})

    assert (error.field, error.line) == ("version", 1)
    assert "remove the quotes" in error.reason


@pytest.mark.parametrize("version", [1.0, 1, True, False, None, "1.0", [0.0]])
def test_other_versions_are_refused(version: object) -> None:
    error = rejected({"version": version, "os": "linux"})

    assert error.field == "version"
    assert "version must be 0.0" in error.reason


def test_windows_is_recognised_and_refused() -> None:
    error = rejected(spec(os="windows"), lines={"os": 2})

    assert (error.field, error.line) == ("os", 2)
    assert "windows is not supported" in error.reason
    assert "Linux hosts only" in error.reason


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ubuntu", "os must be linux, not 'ubuntu'"),
        ("Linux", "lower case"),
        (None, "os must be linux"),
    ],
)
def test_other_os_values_are_refused(value: object, fragment: str) -> None:
    error = rejected(spec(os=value))

    assert error.field == "os"
    assert fragment in error.reason


def test_os_missing() -> None:
    error = rejected({"version": 0.0})

    assert error.field == "os"
    assert "os: linux" in error.reason


# --- sections -----------------------------------------------------------------------------------


def test_misspelt_section_is_an_error_with_a_suggestion() -> None:
    error = rejected(spec(permission=[{"object": "/srv"}]), lines={"permission": 7})

    assert (error.field, error.line) == ("permission", 7)
    assert "did you mean permissions?" in error.reason


def test_event_at_top_level_is_told_to_move_under_hooks() -> None:
    error = rejected(spec(validateService=[{"location": "v.sh"}]))

    assert error.field == "validateService"
    assert "below hooks: as ValidateService:" in error.reason


def test_unknown_section_lists_the_real_ones() -> None:
    error = rejected(spec(deploy="yes"))

    assert error.field == "deploy"
    assert "version, os, files, permissions, hooks, file_exists_behavior" in error.reason


def test_non_text_section_name() -> None:
    error = rejected({"version": 0.0, "os": "linux", 3: "x"})

    assert "section names must be text" in error.reason


def test_null_sections_are_empty() -> None:
    result = validate_appspec(spec(files=None, permissions=None, hooks=None))

    assert (result.files, result.permissions, dict(result.hooks)) == ((), (), {})


# --- Lambda and ECS appspecs ------------------------------------------------------------------


def lambda_appspec(resource_type: str = "AWS::Lambda::Function") -> dict[str, Any]:
    return {
        "version": 0.0,
        "Resources": [{"fn": {"Type": resource_type, "Properties": {"Name": "f"}}}],
        "Hooks": [{"BeforeAllowTraffic": "check"}],
    }


def test_lambda_appspec_is_refused_for_the_server_platform() -> None:
    error = rejected(lambda_appspec(), lines={"Resources[0].fn.Type": 4})

    assert (error.field, error.line) == ("Resources[0].fn.Type", 4)
    assert error.reason.startswith("this is an AWS Lambda appspec (AWS::Lambda::Function)")
    assert "EC2/On-premises" in error.reason


def test_ecs_appspec_is_refused_for_the_server_platform() -> None:
    error = rejected(lambda_appspec("AWS::ECS::Service"))

    assert error.field == "Resources[0].fn.Type"
    assert error.reason.startswith("this is an Amazon ECS appspec")


def test_lambda_appspec_is_refused_even_with_a_bad_version_or_lower_case_keys() -> None:
    data = {"version": "1", "resources": [{"fn": {"type": "AWS::Lambda::Function"}}]}

    assert rejected(data).field == "resources[0].fn.type"


def test_unknown_resource_type_is_named() -> None:
    error = rejected(lambda_appspec("AWS::Serverless::Function"))

    assert "'AWS::Serverless::Function' is neither" in error.reason


def test_resources_without_a_type_is_refused() -> None:
    error = rejected({"version": 0.0, "Resources": None})

    assert error.field == "Resources"
    assert "belongs to Lambda and ECS appspecs" in error.reason


def test_lambda_style_hooks_list_in_a_server_appspec() -> None:
    error = rejected(spec(hooks=[{"AfterInstall": "fn"}]))

    assert error.field == "hooks"
    assert "Lambda/ECS form" in error.reason


# --- files and file_exists_behavior -------------------------------------------------------------


def test_files_keep_paths_as_written() -> None:
    result = validate_appspec(
        spec(
            files=[
                {"source": ".", "destination": "/srv/app/"},
                {"source": "/config/app.conf", "destination": "/etc/app"},
            ]
        )
    )

    assert result.files == (
        FileMapping(".", "/srv/app/"),
        FileMapping("/config/app.conf", "/etc/app"),
    )


@pytest.mark.parametrize(
    ("entry", "field", "fragment"),
    [
        ({"destination": "/srv"}, "files[0].source", "source is missing"),
        ({"source": "/"}, "files[0].destination", "destination is missing"),
        ({"source": "/", "destination": None}, "files[0].destination", "destination is missing"),
        ({"source": "", "destination": "/srv"}, "files[0].source", "source is empty"),
        ({"source": "/", "destination": "var/www"}, "files[0].destination", "absolute path"),
        ({"source": "../etc", "destination": "/srv"}, "files[0].source", "outside the bundle"),
        ({"source": "a/../../x", "destination": "/srv"}, "files[0].source", "outside the bundle"),
        ({"source": 12, "destination": "/srv"}, "files[0].source", "source must be text"),
        ({"source": "/", "destinaton": "/srv"}, "files[0].destinaton", "did you mean destination"),
        ({"Source": "/", "destination": "/srv"}, "files[0].Source", "did you mean source"),
    ],
)
def test_bad_files_entries(entry: dict[str, Any], field: str, fragment: str) -> None:
    error = rejected(spec(files=[entry]))

    assert error.field == field
    assert fragment in error.reason


def test_unrelated_extra_keys_in_files_entries_are_ignored_like_the_agent_does() -> None:
    result = validate_appspec(
        spec(files=[{"source": "/", "destination": "/srv", "overwrite": True, "mode": 777}])
    )

    assert result.files == (FileMapping("/", "/srv"),)


@pytest.mark.parametrize("files", ["app", {"source": "/", "destination": "/srv"}])
def test_files_must_be_a_list(files: object) -> None:
    error = rejected(spec(files=files))

    assert error.field == "files"
    assert "must be a list" in error.reason


def test_files_entry_must_be_a_mapping() -> None:
    error = rejected(spec(files=["app"]))

    assert error.field == "files[0]"
    assert "each entry must be a mapping" in error.reason


@pytest.mark.parametrize("behavior", ["DISALLOW", "OVERWRITE", "RETAIN"])
def test_file_exists_behavior_values(behavior: str) -> None:
    assert validate_appspec(spec(file_exists_behavior=behavior)).file_exists_behavior == behavior


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("overwrite", "upper case"), ("REPLACE", "not 'REPLACE'"), (True, "not True")],
)
def test_bad_file_exists_behavior(value: object, fragment: str) -> None:
    error = rejected(spec(file_exists_behavior=value))

    assert error.field == "file_exists_behavior"
    assert "DISALLOW, OVERWRITE, RETAIN" in error.reason
    assert fragment in error.reason


# --- permissions --------------------------------------------------------------------------------


def one_permission(**entry: Any) -> Permission:
    return validate_appspec(spec(permissions=[{"object": "/srv/app", **entry}])).permissions[0]


def permission_error(**entry: Any) -> AppSpecError:
    return rejected(spec(permissions=[{"object": "/srv/app", **entry}]))


def test_permission_defaults() -> None:
    assert one_permission() == Permission(
        object="/srv/app", pattern="**", type=PERMISSION_TYPES, mode=None, owner=None
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(755, "755"), ("0644", "0644"), ("644", "644"), (7, "007"), ("4755", "4755"), (0, "000")],
)
def test_mode_is_kept_as_octal_digits(mode: object, expected: str) -> None:
    assert one_permission(mode=mode).mode == expected


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [
        ("u+x", "symbolic mode 'u+x' is not supported"),
        ("u=rwx,go=rx", "symbolic mode"),
        ("0999", "1 to 4 octal digits"),
        (12345, "1 to 4 octal digits"),
        ("rwxr-xr-x", "1 to 4 octal digits"),
        (-1, "1 to 4 octal digits"),
        (True, "not true/false"),
        (6.44, "not a number"),
    ],
)
def test_bad_modes(mode: object, fragment: str) -> None:
    error = permission_error(mode=mode)

    assert error.field == "permissions[0].mode"
    assert fragment in error.reason


def test_permission_object_is_required_and_absolute() -> None:
    missing = rejected(spec(permissions=[{"owner": "app"}]))
    relative = permission_error(object="srv/app")

    assert (missing.field, missing.reason) == ("permissions[0].object", "object is missing")
    assert relative.field == "permissions[0].object"
    assert "absolute path" in relative.reason


def test_numeric_owner_is_an_id() -> None:
    assert one_permission(owner=1000, group=0).owner == "1000"
    assert one_permission(owner=1000, group=0).group == "0"


@pytest.mark.parametrize("owner", ["two words", "-rf", "a:b", True])
def test_bad_owner(owner: object) -> None:
    assert permission_error(owner=owner).field == "permissions[0].owner"


@pytest.mark.parametrize(
    ("key", "value", "field", "fragment"),
    [
        ("except", "tmp", "permissions[0].except", "must be a list ('- tmp')"),
        ("except", [None], "permissions[0].except[0]", "must not be empty"),
        ("type", "file", "permissions[0].type", "must be a list"),
        ("type", ["file", "link"], "permissions[0].type[1]", "file or directory, not 'link'"),
        ("pattern", 5, "permissions[0].pattern", "pattern must be text"),
        ("owner ", "app", "permissions[0].owner ", "did you mean owner"),
    ],
)
def test_bad_permission_fields(key: str, value: object, field: str, fragment: str) -> None:
    error = permission_error(**{key: value})

    assert error.field == field
    assert fragment in error.reason


def test_duplicate_types_collapse() -> None:
    assert one_permission(type=["directory", "directory", "file"]).type == ("directory", "file")


@pytest.mark.parametrize(
    "acl",
    ["u:bob:rw", "user:bob:rwx", "g:staff:r-x", "bob:7", "m::rw", "mask:r", "d:u:bob:r", "d:o::r"],
)
def test_valid_acls(acl: str) -> None:
    assert one_permission(acls=[acl]).acls == (acl,)


@pytest.mark.parametrize(
    ("acl", "fragment"),
    [
        ("u::rw", "names no user or group; set the base owner"),
        ("o::r", "names no user or group"),
        ("x:bob:rw", "'x' is not u, g, m or o"),
        ("u:bob:rwz", "permissions must be r, w, x"),
        ("o:bob:r", "takes no name"),
        ("rw", "must look like u:bob:rw"),
        ("a:b:c:d:e", "must look like u:bob:rw"),
        ("q:u:bob:rw", "'q' must be d or default"),
    ],
)
def test_bad_acls(acl: str, fragment: str) -> None:
    error = permission_error(acls=["u:ok:r", acl])

    assert error.field == "permissions[0].acls[1]"
    assert fragment in error.reason


def test_selinux_context_user_may_be_given_as_user() -> None:
    context = one_permission(context={"user": "u", "type": "t"}).context

    assert context == SELinuxContext(type="t", user="u", range=None)


@pytest.mark.parametrize(
    ("context", "field", "fragment"),
    [
        ({"name": "u"}, "permissions[0].context.type", "type is missing"),
        ({"type": "t", "role": "r"}, "permissions[0].context.role", "role cannot be set"),
        ({"type": "t", "name": "a", "user": "b"}, "permissions[0].context", "name or as user"),
        ("httpd_t", "permissions[0].context", "must be a mapping"),
        ({"type": "t", "range": "0"}, "permissions[0].context.range", "must look like s0"),
        ({"type": "t", "range": "s2-s1"}, "permissions[0].context.range", "below the low"),
        ({"type": "t", "range": "s0:c5.c1"}, "permissions[0].context.range", "runs backwards"),
        ({"type": "t", "range": "s0:c1024"}, "permissions[0].context.range", "up to c1023"),
        ({"type": "t", "range": "s0:c1,c0.c2"}, "permissions[0].context.range", "twice"),
    ],
)
def test_bad_selinux_contexts(context: object, field: str, fragment: str) -> None:
    error = permission_error(context=context)

    assert error.field == field
    assert fragment in error.reason


@pytest.mark.parametrize("selinux_range", ["s0", "s0-s15:c0.c1023", "s1:c0,c3.c5,c9"])
def test_good_selinux_ranges(selinux_range: str) -> None:
    context = one_permission(context={"type": "t", "range": selinux_range}).context

    assert context is not None
    assert context.range == selinux_range


# --- hooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", SERVER_HOOK_EVENTS)
def test_every_scriptable_server_event_is_accepted(event: str) -> None:
    result = validate_appspec(hooks_of(**{event: [{"location": "run.sh"}]}))

    assert result.hooks[event] == (Hook("run.sh"),)


def test_hook_timeout_defaults_to_3600_and_keeps_order() -> None:
    result = validate_appspec(
        hooks_of(
            ApplicationStart=[{"location": "a.sh"}, {"location": "b.sh", "timeout": "120"}],
            AfterInstall=[],
        )
    )

    assert list(result.hooks) == ["ApplicationStart", "AfterInstall"]
    assert result.hooks["ApplicationStart"] == (Hook("a.sh", 3600), Hook("b.sh", 120))
    assert result.hooks["AfterInstall"] == ()


def test_scripts_without_timeout_are_not_summed() -> None:
    result = validate_appspec(
        hooks_of(BeforeInstall=[{"location": f"{n}.sh"} for n in range(3)] + [{"location": "x"}])
    )

    assert sum(hook.timeout for hook in result.hooks["BeforeInstall"]) == 4 * 3600


def test_explicit_timeouts_of_one_event_may_not_add_up_past_an_hour() -> None:
    at_the_limit = [{"location": "a.sh", "timeout": 1800}] * 2 + [{"location": "b.sh"}]
    assert len(validate_appspec(hooks_of(AfterInstall=at_the_limit)).hooks["AfterInstall"]) == 3

    error = rejected(
        hooks_of(AfterInstall=[{"location": "a.sh", "timeout": 1800}] * 3),
        lines={"hooks.AfterInstall": 9},
    )

    assert (error.field, error.line) == ("hooks.AfterInstall", 9)
    assert "add up to 5400 s" in error.reason
    assert "at most 3600 s" in error.reason


@pytest.mark.parametrize(
    ("timeout", "fragment"),
    [
        (0, "more than 0 seconds"),
        (-5, "more than 0 seconds"),
        (3601, "timeout 3601 is over 3600 s"),
        (6000, "timeout 6000 is over 3600 s"),
        ("abc", "whole number of seconds, not 'abc'"),
        (1.5, "whole number of seconds"),
        (True, "whole number of seconds"),
    ],
)
def test_bad_timeouts(timeout: object, fragment: str) -> None:
    error = rejected(hooks_of(AfterInstall=[{"location": "a.sh", "timeout": timeout}]))

    assert error.field == "hooks.AfterInstall[0].timeout"
    assert fragment in error.reason


@pytest.mark.parametrize(
    ("scripts", "field", "fragment"),
    [
        (None, "hooks.ApplicationStop", "has no scripts (its value is empty)"),
        ("stop.sh", "hooks.ApplicationStop", "must be a list of scripts, not text"),
        (["stop.sh"], "hooks.ApplicationStop[0]", "mapping like '- location: scripts/start.sh'"),
        ([{"run": "docker stop"}], "hooks.ApplicationStop[0].location", "location is missing"),
        ([{"location": None}], "hooks.ApplicationStop[0].location", "location is missing"),
        ([{"location": "  "}], "hooks.ApplicationStop[0].location", "location is empty"),
        ([{"location": "../x.sh"}], "hooks.ApplicationStop[0].location", "outside the bundle"),
        ([{"location": "a", "runas": "a b"}], "hooks.ApplicationStop[0].runas", "user or group"),
        ([{"location": "a", "timout": 30}], "hooks.ApplicationStop[0].timout", "mean timeout"),
        ([{"location": "a", "RunAs": "x"}], "hooks.ApplicationStop[0].RunAs", "mean runas"),
    ],
)
def test_bad_hook_entries(scripts: object, field: str, fragment: str) -> None:
    error = rejected(hooks_of(ApplicationStop=scripts))

    assert error.field == field
    assert fragment in error.reason


def test_leading_slash_location_is_bundle_relative_and_kept() -> None:
    result = validate_appspec(hooks_of(BeforeInstall=[{"location": "/scripts/a.sh "}]))

    assert result.hooks["BeforeInstall"] == (Hook("/scripts/a.sh"),)


def test_unknown_event_suggests_the_real_name() -> None:
    error = rejected(
        hooks_of(**{"Before Install": [{"location": "a.sh"}]}), lines={"hooks.Before Install": 5}
    )

    assert (error.field, error.line) == ("hooks.Before Install", 5)
    assert "unknown lifecycle event 'Before Install': did you mean BeforeInstall?" in error.reason


def test_unknown_event_without_a_close_match_lists_the_events() -> None:
    error = rejected(hooks_of(Deploy=[{"location": "a.sh"}]))

    assert "did you mean" not in error.reason
    assert ", ".join(SERVER_HOOK_EVENTS) in error.reason


@pytest.mark.parametrize("event", ["Install", "DownloadBundle", "BlockTraffic", "AllowTraffic"])
def test_agent_events_cannot_have_scripts(event: str) -> None:
    error = rejected(hooks_of(**{event: [{"location": "a.sh"}]}), custom_events=(event,))

    assert error.field == f"hooks.{event}"
    assert "carried out by the agent itself" in error.reason


def test_custom_events_are_allowed_only_when_named() -> None:
    data = hooks_of(CustomEvent=[{"location": "c.sh"}])

    assert rejected(data).field == "hooks.CustomEvent"
    assert validate_appspec(data, custom_events=["CustomEvent"]).hooks["CustomEvent"] == (
        Hook("c.sh"),
    )


def test_non_mapping_hooks() -> None:
    error = rejected(spec(hooks="AfterInstall"))

    assert error.field == "hooks"
    assert "not text" in error.reason
