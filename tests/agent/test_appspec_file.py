from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from opendeploy.agent.appspec_file import find_appspec, load_appspec, read_appspec
from opendeploy.core.appspec import SERVER_HOOK_EVENTS, AppSpec, FileMapping, Hook
from opendeploy.core.errors import AppSpecError

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "appspecs"

HEADER = "version: 0.0\nos: linux\n"


def rejected(text: str, *, file: str = "appspec.yml") -> AppSpecError:
    with pytest.raises(AppSpecError) as info:
        load_appspec(text, file=file)
    assert info.value.file == file
    return info.value


# --- YAML 1.1 traps -----------------------------------------------------------------------------


def test_unquoted_leading_zero_mode_stays_the_written_digits() -> None:
    result = load_appspec(
        HEADER + "permissions:\n  - object: /srv\n    mode: 0644\n  - object: /opt\n    mode: 755\n"
    )

    assert [permission.mode for permission in result.permissions] == ["0644", "755"]


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yaml11_booleans_stay_text(word: str) -> None:
    result = load_appspec(
        HEADER + f"permissions:\n  - object: /srv\n    owner: {word}\n"
        f"hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: {word}\n"
    )

    assert result.permissions[0].owner == word
    assert result.hooks["AfterInstall"][0].runas == word


@pytest.mark.parametrize("value", ["1:30", "0x1F", "1_000", "2024-01-02", ".inf", "0o17", "1e3"])
def test_yaml11_numbers_and_dates_stay_text(value: str) -> None:
    result = load_appspec(HEADER + f"files:\n  - source: {value}\n    destination: /srv\n")

    assert result.files == (FileMapping(value, "/srv"),)


@pytest.mark.parametrize("value", ["1:30", "0x1F", "1_000"])
def test_yaml11_numbers_are_not_timeouts(value: str) -> None:
    error = rejected(
        HEADER + f"hooks:\n  AfterInstall:\n    - location: a\n      timeout: {value}\n"
    )

    assert (error.field, error.line) == ("hooks.AfterInstall[0].timeout", 6)
    assert f"whole number of seconds, not {value!r}" in error.reason


def test_true_is_still_a_boolean_and_refused_where_text_is_expected() -> None:
    error = rejected(HEADER + "hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: true\n")

    assert (error.field, error.line) == ("hooks.AfterInstall[0].runas", 6)
    assert "runas must be text, not true/false" in error.reason


def test_version_number_and_quoted_version() -> None:
    assert load_appspec("version: 0.0\nos: linux\n").version == "0.0"
    assert load_appspec("version: 0\nos: linux\n").version == "0.0"

    error = rejected("os: linux\nversion: '0.0'\n")

    assert (error.field, error.line) == ("version", 2)
    assert "remove the quotes" in error.reason


def test_null_forms_mean_absent() -> None:
    result = load_appspec(HEADER + "files: ~\npermissions: null\nhooks:\n")

    assert result == AppSpec()


# --- lines in error messages ----------------------------------------------------------------


def test_error_names_file_line_and_key_path() -> None:
    text = (
        "version: 0.0\n"
        "os: linux\n"
        "hooks:\n"
        "  BeforeInstall:\n"
        "    - location: scripts/a.sh\n"
        "  AfterInstall:\n"
        "    - location: scripts/b.sh\n"
        "      timeout: 7200\n"
    )

    error = rejected(text, file="build/appspec.yml")

    assert (error.field, error.line) == ("hooks.AfterInstall[0].timeout", 8)
    assert str(error).startswith("build/appspec.yml:8 at hooks.AfterInstall[0].timeout: ")


def test_missing_key_points_at_its_list_item() -> None:
    error = rejected(HEADER + "files:\n  - source: /\n\n  - source: /a\n    destination: /srv\n")

    assert (error.field, error.line) == ("files[0].destination", 4)


def test_line_numbers_survive_crlf_comments_and_a_bom() -> None:
    text = "\ufeff# header\r\nversion: 0.0\r\nos: linux\r\n\r\n"
    text += "hooks:\r\n  Nope:\r\n    - location: a\r\n"

    error = rejected(text)

    assert (error.field, error.line) == ("hooks.Nope", 6)


# --- YAML structure errors ------------------------------------------------------------------


def test_duplicate_key_is_refused_with_both_lines() -> None:
    error = rejected(HEADER + "hooks:\n  AfterInstall: []\n  AfterInstall:\n    - location: a\n")

    assert (error.field, error.line) == ("hooks.AfterInstall", 5)
    assert error.reason == "duplicate key 'AfterInstall' (first on line 4)"


def test_duplicate_top_level_key() -> None:
    error = rejected("version: 0.0\nos: linux\nos: linux\n")

    assert (error.field, error.line) == ("os", 3)


def test_syntax_error_carries_the_line() -> None:
    error = rejected("version 0.0\nos: linux\n")

    assert error.line == 2
    assert error.field is None
    assert error.reason.startswith("invalid YAML: mapping values are not allowed here")
    assert "may lack its colon" in error.reason


def test_unquoted_star_pattern_gets_a_quoting_hint() -> None:
    error = rejected(HEADER + "permissions:\n  - object: /srv\n    pattern: *.sh\n")

    assert error.line == 5
    assert "while scanning an alias" in error.reason
    assert 'must be quoted, e.g. pattern: "*.sh"' in error.reason


def test_aliases_are_refused() -> None:
    error = rejected("version: &v 0.0\nos: linux\nother: *v\n")

    assert error.line == 3
    assert "aliases (*name) are not allowed" in error.reason


def test_merge_keys_are_refused() -> None:
    error = rejected(HEADER + "<<: {hooks: {}}\n")

    assert (error.field, error.line) == ("<<", 3)


def test_tabs_get_a_hint() -> None:
    error = rejected("version: 0.0\nos: linux\nhooks:\n\tAfterInstall: []\n")

    assert error.line == 4
    assert "indent with spaces, not tabs" in error.reason


def test_control_characters_are_refused_with_their_line() -> None:
    error = rejected("version: 0.0\nos: li\x07nux\n")

    assert error.line == 2
    assert "U+0007" in error.reason


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert "appspec is empty" in rejected(text).reason


def test_several_documents_are_refused() -> None:
    error = rejected(HEADER + "---\n" + HEADER)

    assert error.line == 3
    assert "single document" in error.reason


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("!!binary aGk=", "YAML tag tag:yaml.org,2002:binary"), ("!!int 0644", "not a decimal")],
)
def test_explicit_tags_are_not_constructed(value: str, fragment: str) -> None:
    error = rejected(HEADER + f"file_exists_behavior: {value}\n")

    assert (error.field, error.line) == ("file_exists_behavior", 3)
    assert fragment in error.reason


def test_complex_keys_are_refused() -> None:
    error = rejected(HEADER + "? [a, b]\n: c\n")

    assert "keys must be plain text" in error.reason


def test_json_appspec_is_read_too() -> None:
    text = '{"version": 0.0, "os": "linux", "hooks": {"AfterInstall": [{"location": "a"}]}}'

    assert load_appspec(text).hooks["AfterInstall"] == (Hook("a"),)


def test_custom_events_pass_through() -> None:
    text = HEADER + "hooks:\n  Warmup:\n    - location: w.sh\n"

    assert rejected(text).field == "hooks.Warmup"
    assert load_appspec(text, custom_events={"Warmup"}).hooks["Warmup"] == (Hook("w.sh"),)


# --- finding and reading the file -----------------------------------------------------------


def test_find_appspec_prefers_yml_then_yaml(tmp_path: Path) -> None:
    (tmp_path / "appspec.yaml").write_text(HEADER)
    assert find_appspec(tmp_path) == tmp_path / "appspec.yaml"

    (tmp_path / "appspec.yml").write_text(HEADER)
    assert find_appspec(tmp_path) == tmp_path / "appspec.yml"


def test_find_appspec_with_a_custom_name(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "spec.yml").write_text(HEADER)

    assert find_appspec(tmp_path, "deploy/spec.yml") == tmp_path / "deploy" / "spec.yml"


def test_missing_appspec_names_near_misses(tmp_path: Path) -> None:
    (tmp_path / "AppSpec.yml").write_text(HEADER)
    (tmp_path / "codedeploy").mkdir()
    (tmp_path / "codedeploy" / "appspec.yml").write_text(HEADER)

    with pytest.raises(AppSpecError) as info:
        find_appspec(tmp_path)

    assert info.value.file == "appspec.yml"
    assert info.value.reason == (
        "the bundle has no appspec.yml or appspec.yaml at its root; found AppSpec.yml,"
        " codedeploy/appspec.yml: rename or move it (names are case-sensitive)"
    )


def test_missing_appspec_in_an_empty_bundle(tmp_path: Path) -> None:
    (tmp_path / "appspec.yml").mkdir()

    with pytest.raises(AppSpecError, match=r"no appspec\.yml or appspec\.yaml at its root$"):
        find_appspec(tmp_path)


@pytest.mark.parametrize("name", ["/etc/appspec.yml", "../appspec.yml", ""])
def test_appspec_name_must_stay_inside_the_bundle(tmp_path: Path, name: str) -> None:
    with pytest.raises(AppSpecError, match="must be a path inside the bundle"):
        find_appspec(tmp_path, name)


def test_missing_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(AppSpecError, match="does not exist"):
        find_appspec(tmp_path / "nope")


def test_read_appspec_reports_the_file_it_read(tmp_path: Path) -> None:
    (tmp_path / "appspec.yaml").write_text(HEADER + "hooks:\n  AfterInstal: []\n")

    with pytest.raises(AppSpecError) as info:
        read_appspec(tmp_path)

    assert (info.value.file, info.value.line) == ("appspec.yaml", 4)
    assert "did you mean AfterInstall?" in info.value.reason


def test_read_appspec_refuses_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "appspec.yml").write_bytes(b"version: 0.0\nos: linux\n# caf\xe9\n")

    with pytest.raises(AppSpecError) as info:
        read_appspec(tmp_path)

    assert (info.value.line, info.value.reason) == (3, "the appspec is not UTF-8 text")


def test_read_appspec_returns_the_spec(tmp_path: Path) -> None:
    (tmp_path / "appspec.yml").write_text(HEADER + "files:\n  - source: /\n    destination: /srv\n")

    assert read_appspec(tmp_path).files == (FileMapping("/", "/srv"),)


# --- the real-world corpus (shared/corpus/appspecs, verdicts in INDEX.md) ---------------------


@dataclass(frozen=True)
class Row:
    file: str
    platform: str
    verdict: str


def corpus_rows() -> list[Row]:
    rows = []
    for line in (CORPUS / "INDEX.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 5 and re.fullmatch(r"\d{3}-.+", cells[1]):
            rows.append(Row(cells[1], cells[3], cells[-2]))
    return rows


ROWS = corpus_rows() if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus missing at {CORPUS}")


def corpus_params() -> list[object]:
    if not ROWS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"corpus missing at {CORPUS}"))]
    return [pytest.param(row, id=row.file[:3]) for row in ROWS]


def load_corpus(row: Row, custom_events: tuple[str, ...] = ()) -> AppSpec:
    text = (CORPUS / row.file).read_text(encoding="utf-8")
    return load_appspec(text, file=row.file, custom_events=custom_events)


def corpus_error(row: Row) -> AppSpecError:
    with pytest.raises(AppSpecError) as info:
        load_corpus(row)
    error = info.value
    assert error.file == row.file
    if error.line is not None:
        assert str(error).startswith(f"{row.file}:{error.line}")
    return error


# Invalid server files: the key path, line and words that must name the problem.
SERVER_PROBLEMS = {
    "008": ("hooks.ApplicationStop", 80, "ApplicationStop has no scripts"),
    "025": (None, 2, "invalid YAML: mapping values are not allowed here"),
    "028": ("hooks.Before Install", 11, "unknown lifecycle event 'Before Install'"),
    "030": (None, 40, 'must be quoted, e.g. pattern: "*.sh"'),
    "039": ("files[0].destination", 4, "destination is missing"),
    "040": ("os", 2, "os must be linux, not 'ubuntu'"),
    "042": ("validateService", 36, "lifecycle events belong under hooks"),
    "043": ("permission", 7, "did you mean permissions?"),
    "046": ("hooks.BeforeInstall[0].timeout", 13, "timeout 6000 is over 3600 s"),
    "050": ("version", 1, "version must be 0.0, the only AppSpec version, not 1.0"),
}

# Where OpenDeploy's reading deliberately differs from the verdict, which describes the stock agent.
ACCEPTED_DESPITE_VERDICT = {
    # The stock agent reads unquoted 0644 as YAML 1.1 octal 420 and applies mode 0420;
    # OpenDeploy reads the digits as written, so the file does what its author meant.
    "036",
}
# The verdict is "valid" because codedeploy-local may run custom events; deployments may not.
VALID_ONLY_WITH_CUSTOM_EVENTS = {"032": ("CustomEvent",)}


@needs_corpus
def test_corpus_index_lists_every_file() -> None:
    on_disk = sorted(path.name for path in CORPUS.iterdir() if path.name != "INDEX.md")
    platforms = [row.platform for row in ROWS]

    assert [row.file for row in ROWS] == on_disk
    assert len(ROWS) == 80
    assert {p: platforms.count(p) for p in set(platforms)} == {
        "server-linux": 46,
        "server-windows": 9,
        "lambda": 11,
        "ecs": 14,
    }
    invalid = {row.file[:3] for row in ROWS if row.verdict.startswith("invalid")}
    assert len(invalid) == 15
    server_invalid = {r.file[:3] for r in ROWS if r.verdict != "valid" and "server" in r.platform}
    assert server_invalid == set(SERVER_PROBLEMS) | ACCEPTED_DESPITE_VERDICT


@pytest.mark.parametrize("row", corpus_params())
def test_corpus_file_matches_its_verdict(row: Row) -> None:
    key = row.file[:3]
    if row.platform == "server-linux" and (
        row.verdict == "valid" or key in ACCEPTED_DESPITE_VERDICT
    ):
        custom = VALID_ONLY_WITH_CUSTOM_EVENTS.get(key, ())
        result = load_corpus(row, custom)
        assert set(result.hooks) <= set(SERVER_HOOK_EVENTS) | set(custom)
        if custom:
            assert corpus_error(row).field == f"hooks.{custom[0]}"
        return

    error = corpus_error(row)
    if key in SERVER_PROBLEMS:
        field, line, fragment = SERVER_PROBLEMS[key]
        assert (error.field, error.line) == (field, line)
        assert fragment in error.reason
    elif row.platform == "server-windows":
        assert error.field == "os"
        assert "os: windows is not supported" in error.reason
    else:
        assert error.field is not None
        assert re.fullmatch(r"Resources\[0\]\.[^.]+\.Type", error.field)
        assert error.line is not None
        expected = {
            "lambda": "this is an AWS Lambda appspec",
            "ecs": "this is an Amazon ECS appspec",
        }
        if key == "061":
            assert "'AWS::Serverless::Function' is neither" in error.reason
        else:
            assert error.reason.startswith(expected[row.platform])
        assert "EC2/On-premises" in error.reason


@needs_corpus
def test_corpus_details_survive_parsing() -> None:
    by_key = {row.file[:3]: row for row in ROWS}

    magento = load_corpus(by_key["018"])
    assert [hook.timeout for hook in magento.hooks["AfterInstall"]] == [300] * 7 + [700]

    mixed = load_corpus(by_key["037"]).hooks["BeforeInstall"]
    assert [hook.timeout for hook in mixed] == [10, 3600, 3600, 3600]

    caddy = load_corpus(by_key["036"]).permissions[0]
    assert (caddy.object, caddy.mode, caddy.type) == ("/var/www/public/info", "0644", ("file",))

    django = load_corpus(by_key["029"])
    assert django.file_exists_behavior == "OVERWRITE"
    assert [p.pattern for p in django.permissions] == ["*pi", "**", "**"]

    zero_indented = load_corpus(by_key["009"])
    assert zero_indented.files[0] == FileMapping("version.txt", "/tmp/v1x1-version.txt")

    trailing_space = load_corpus(by_key["014"]).hooks["AfterInstall"][0]
    assert trailing_space == Hook("scripts/start_container.sh", 300, "root")
