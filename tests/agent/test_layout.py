from __future__ import annotations

import os
from pathlib import Path

import pytest

from opendeploy.agent import layout
from opendeploy.agent.layout import LayoutError

GROUP = "0f1e2d3c-4b5a-6978-8899-aabbccddeeff"


def test_deployment_paths_follow_the_stock_layout(tmp_path: Path) -> None:
    paths = layout.deployment_paths(tmp_path, GROUP, "d-ABCDEF123")

    assert paths.directory == tmp_path / GROUP / "d-ABCDEF123"
    assert paths.bundle == paths.directory / "bundle.tar"
    assert paths.archive == paths.directory / "deployment-archive"
    assert paths.script_log == paths.directory / "logs" / "scripts.log"
    instructions = tmp_path / "deployment-instructions"
    assert layout.cleanup_file(tmp_path, GROUP) == instructions / f"{GROUP}-cleanup"
    assert layout.install_instructions_file(tmp_path, GROUP) == (
        instructions / f"{GROUP}-install.json"
    )
    assert layout.last_successful_install_file(tmp_path, GROUP) == (
        instructions / f"{GROUP}_last_successful_install"
    )
    assert layout.most_recent_install_file(tmp_path, GROUP) == (
        instructions / f"{GROUP}_most_recent_install"
    )
    assert layout.ongoing_deployment_file(tmp_path, "d-1") == (
        tmp_path / "ongoing-deployment" / "d-1"
    )


@pytest.mark.parametrize("value", [GROUP, "d-ABCDEF123", "default-local-deployment-group", "a"])
def test_plain_ids_are_accepted(value: str) -> None:
    assert layout.check_group_id(value) == value
    assert layout.check_deployment_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", "../x", "a/b", "/abs", "a\0b", "-rf", ".hidden", "a b", "ü", "x" * 129],
)
def test_ids_that_are_not_one_plain_component_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(LayoutError, match="cannot be used as a directory name"):
        layout.check_group_id(value)
    with pytest.raises(LayoutError):
        layout.deployment_paths(tmp_path, GROUP, value)
    with pytest.raises(LayoutError):
        layout.cleanup_file(tmp_path, value)


@pytest.mark.parametrize("value", ["deployment-instructions", "ongoing-deployment"])
def test_group_ids_naming_the_agents_own_directories_are_refused(value: str) -> None:
    with pytest.raises(LayoutError, match="reserved"):
        layout.check_group_id(value)


def test_last_successful_and_most_recent_round_trip(tmp_path: Path) -> None:
    directory = layout.deployment_paths(tmp_path, GROUP, "d-1").directory
    assert layout.read_last_successful_install(tmp_path, GROUP) is None

    layout.write_last_successful_install(tmp_path, GROUP, directory)
    layout.write_most_recent_install(tmp_path, GROUP, directory)

    raw = layout.last_successful_install_file(tmp_path, GROUP).read_bytes()
    assert raw == str(directory).encode()
    assert layout.read_last_successful_install(tmp_path, GROUP) == directory
    assert layout.read_most_recent_install(tmp_path, GROUP) == directory


def test_a_stock_agents_pointer_file_is_read(tmp_path: Path) -> None:
    pointer = layout.last_successful_install_file(tmp_path, GROUP)
    pointer.parent.mkdir(parents=True)
    pointer.write_text("/opt/codedeploy-agent/deployment-root/g/d-OLD\n")

    assert layout.read_last_successful_install(tmp_path, GROUP) == Path(
        "/opt/codedeploy-agent/deployment-root/g/d-OLD"
    )
    pointer.write_text("relative/path")
    assert layout.read_last_successful_install(tmp_path, GROUP) is None


def make_revisions(root: Path, count: int) -> list[str]:
    names = [f"d-{index}" for index in range(count)]
    for index, name in enumerate(names):
        directory = root / GROUP / name
        (directory / "deployment-archive").mkdir(parents=True)
        os.utime(directory, (1_000_000 + index, 1_000_000 + index))
    return names


def remaining(root: Path) -> list[str]:
    return sorted(entry.name for entry in (root / GROUP).iterdir())


def test_prune_keeps_the_newest_including_the_current_one(tmp_path: Path) -> None:
    names = make_revisions(tmp_path, 7)

    result = layout.prune_revisions(tmp_path, GROUP, keep=3, current="d-6")

    assert remaining(tmp_path) == ["d-4", "d-5", "d-6"]
    assert [path.name for path in result.removed] == ["d-0", "d-1", "d-2", "d-3"]
    assert result.failed == ()
    assert names[-1] in remaining(tmp_path)


def test_prune_never_deletes_the_current_one_even_when_oldest(tmp_path: Path) -> None:
    make_revisions(tmp_path, 4)

    layout.prune_revisions(tmp_path, GROUP, keep=2, current="d-0")

    assert remaining(tmp_path) == ["d-0", "d-3"]


def test_prune_never_deletes_the_last_successful_install(tmp_path: Path) -> None:
    make_revisions(tmp_path, 6)
    layout.write_last_successful_install(tmp_path, GROUP, tmp_path / GROUP / "d-0")

    layout.prune_revisions(tmp_path, GROUP, keep=3, current="d-5")

    assert remaining(tmp_path) == ["d-0", "d-4", "d-5"]
    layout.prune_revisions(tmp_path, GROUP, keep=2, current="d-5")
    assert remaining(tmp_path) == ["d-0", "d-5"]


def test_prune_with_keep_one_keeps_only_the_current_one(tmp_path: Path) -> None:
    make_revisions(tmp_path, 3)

    layout.prune_revisions(tmp_path, GROUP, keep=1, current="d-2")

    assert remaining(tmp_path) == ["d-2"]


def test_prune_leaves_links_and_files_alone_and_never_follows_them(tmp_path: Path) -> None:
    make_revisions(tmp_path, 3)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep")
    os.symlink(precious, tmp_path / GROUP / "a-link")
    (tmp_path / GROUP / "a-file").write_text("x")

    layout.prune_revisions(tmp_path, GROUP, keep=1, current="d-2")

    assert remaining(tmp_path) == ["a-file", "a-link", "d-2"]
    assert (precious / "data").read_text() == "keep"


def test_prune_of_a_new_group_does_nothing(tmp_path: Path) -> None:
    assert layout.prune_revisions(tmp_path, GROUP, keep=5, current="d-1") == layout.PruneResult()


@pytest.mark.parametrize("keep", [0, -1, True])
def test_prune_refuses_a_retention_below_one(tmp_path: Path, keep: int) -> None:
    with pytest.raises(LayoutError, match="at least 1"):
        layout.prune_revisions(tmp_path, GROUP, keep=keep, current="d-1")


def test_write_atomically_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file"

    layout.write_atomically(target, b"first version, long")
    layout.write_atomically(target, b"second")

    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file"]
