from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
from pathlib import Path

import pytest

from opendeploy.agent import layout
from opendeploy.agent.appspec_file import load_appspec
from opendeploy.agent.install import InstallError, install, read_cleanup_list
from opendeploy.core.appspec import AppSpec, FileExistsBehavior

GROUP = "0f1e2d3c-4b5a-6978-8899-aabbccddeeff"
HEADER = "version: 0.0\nos: linux\n"


class Host:
    """A deployment root plus a fake filesystem root that every destination is prefixed with."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "deployment-root"
        self.fs = tmp_path / "host"
        self.fs.mkdir()

    def bundle(self, deployment_id: str, files: dict[str, str | tuple[str, int]]) -> Path:
        """Create an unpacked revision: name -> text or (text, mode); a name ending in ``@``
        makes a symbolic link to the value."""
        archive = layout.deployment_paths(self.root, GROUP, deployment_id).archive
        archive.mkdir(parents=True)
        for name, content in files.items():
            if name.endswith("@"):
                link = archive / name[:-1]
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(str(content))
                continue
            path = archive / name
            path.parent.mkdir(parents=True, exist_ok=True)
            text, mode = content if isinstance(content, tuple) else (content, 0o644)
            path.write_text(text)
            path.chmod(mode)
        return archive

    def install(
        self,
        deployment_id: str,
        appspec: AppSpec | str,
        behavior: FileExistsBehavior | None = None,
    ) -> list[Path]:
        spec = load_appspec(HEADER + appspec) if isinstance(appspec, str) else appspec
        result = install(
            spec,
            root=self.root,
            group_id=GROUP,
            deployment_id=deployment_id,
            file_exists_behavior=behavior,
            destination_root=self.fs,
        )
        return list(result.created)

    def path(self, absolute: str) -> Path:
        return self.fs / absolute.lstrip("/")

    def cleanup_lines(self) -> list[str]:
        return layout.cleanup_file(self.root, GROUP).read_text().splitlines()

    def last_successful(self) -> Path | None:
        return layout.read_last_successful_install(self.root, GROUP)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


APP = "files:\n  - source: app\n    destination: /srv/app\n"


def test_directory_file_and_whole_bundle_sources(host: Host) -> None:
    host.bundle(
        "d-1",
        {
            "appspec.yml": "version: 0.0\n",
            "app/index.html": "<h1>1</h1>",
            "app/bin/run": ("#!/bin/sh\n", 0o750),
            "app/current@": "index.html",
            "config/app.conf": "a=1",
        },
    )

    created = host.install(
        "d-1",
        APP + "  - source: config/app.conf\n    destination: /etc/myapp\n"
        "  - source: /\n    destination: /opt/all\n",
    )

    assert host.path("/srv/app/index.html").read_text() == "<h1>1</h1>"
    assert stat.S_IMODE(host.path("/srv/app/bin/run").stat().st_mode) == 0o750
    assert os.readlink(host.path("/srv/app/current")) == "index.html"
    assert host.path("/etc/myapp/app.conf").read_text() == "a=1"
    assert host.path("/opt/all/appspec.yml").is_file()
    assert host.path("/opt/all/app/index.html").is_file()
    assert host.cleanup_lines() == [str(path) for path in created]
    assert str(host.path("/srv")) in host.cleanup_lines()
    assert all(line.startswith(str(host.fs) + "/") for line in host.cleanup_lines())
    assert host.last_successful() == layout.deployment_paths(host.root, GROUP, "d-1").directory


def test_install_json_lists_the_stock_instructions(host: Host) -> None:
    host.bundle("d-1", {"app/a.txt": "a"})

    host.install(
        "d-1", APP + "permissions:\n  - object: /srv/app\n    mode: 640\n    type: [file]\n"
    )

    document = json.loads(layout.install_instructions_file(host.root, GROUP).read_text())
    kinds = [instruction["type"] for instruction in document["instructions"]]
    assert kinds == ["mkdir", "mkdir", "copy", "chmod"]
    assert document["instructions"][2]["destination"] == str(host.path("/srv/app/a.txt"))
    assert document["instructions"][3] == {
        "type": "chmod",
        "mode": "640",
        "file": str(host.path("/srv/app/a.txt")),
    }


def test_nothing_lands_outside_the_destination_root(host: Host, tmp_path: Path) -> None:
    host.bundle("d-1", {"app/a.txt": "a"})

    host.install("d-1", "files:\n  - source: app\n    destination: /../../escape\n")

    assert host.path("/escape/a.txt").is_file()
    assert not (tmp_path / "escape").exists()


# --- file_exists_behavior -------------------------------------------------------------------------


def existing(host: Host) -> Path:
    target = host.path("/srv/app/index.html")
    target.parent.mkdir(parents=True)
    target.write_text("hand-made")
    return target


def test_disallow_is_the_default_and_names_the_file(host: Host) -> None:
    target = existing(host)
    host.bundle("d-1", {"app/index.html": "new", "app/other.txt": "x"})

    with pytest.raises(InstallError) as info:
        host.install("d-1", APP)

    assert str(target) in str(info.value)
    assert "already exists at this location" in str(info.value)
    assert target.read_text() == "hand-made"
    assert not host.path("/srv/app/other.txt").exists()
    assert host.last_successful() is None


def test_overwrite_replaces_and_records_the_file(host: Host) -> None:
    target = existing(host)
    host.bundle("d-1", {"app/index.html": "new"})

    host.install("d-1", APP, behavior="OVERWRITE")

    assert target.read_text() == "new"
    assert host.cleanup_lines() == [str(target)]


def test_overwrite_replaces_a_symlink_not_its_target(host: Host, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    host.path("/srv/app").mkdir(parents=True)
    host.path("/srv/app/index.html").symlink_to(victim)
    host.bundle("d-1", {"app/index.html": "new"})

    host.install("d-1", APP, behavior="OVERWRITE")

    assert not host.path("/srv/app/index.html").is_symlink()
    assert host.path("/srv/app/index.html").read_text() == "new"
    assert victim.read_text() == "untouched"


def test_retain_keeps_the_file_and_does_not_record_it(host: Host) -> None:
    target = existing(host)
    host.bundle("d-1", {"app/index.html": "new", "app/other.txt": "x"})

    host.install("d-1", APP, behavior="RETAIN")

    assert target.read_text() == "hand-made"
    assert host.path("/srv/app/other.txt").read_text() == "x"
    assert host.cleanup_lines() == [str(host.path("/srv/app/other.txt"))]


def test_the_appspec_value_wins_over_the_deployment_override(host: Host) -> None:
    target = existing(host)
    host.bundle("d-1", {"app/index.html": "new"})

    host.install("d-1", "file_exists_behavior: RETAIN\n" + APP, behavior="OVERWRITE")

    assert target.read_text() == "hand-made"


def test_a_directory_is_never_overwritten_by_a_file(host: Host) -> None:
    host.path("/srv/app/index.html").mkdir(parents=True)
    host.bundle("d-1", {"app/index.html": "new"})

    with pytest.raises(InstallError, match="a directory is never replaced by a file"):
        host.install("d-1", APP, behavior="OVERWRITE")


# --- the previous revision ------------------------------------------------------------------------


def test_the_previous_revisions_files_are_removed_first(host: Host) -> None:
    host.bundle("d-1", {"app/keep.txt": "1", "app/old/gone.txt": "1", "app/old/sub/x": "1"})
    host.install("d-1", APP)
    hand_made = host.path("/srv/app/notes.txt")
    hand_made.write_text("mine")
    host.bundle("d-2", {"app/keep.txt": "2"})

    host.install("d-2", APP)

    assert host.path("/srv/app/keep.txt").read_text() == "2"
    assert not host.path("/srv/app/old").exists()
    assert hand_made.read_text() == "mine"
    assert host.cleanup_lines() == [str(host.path("/srv/app/keep.txt"))]
    assert host.last_successful() == layout.deployment_paths(host.root, GROUP, "d-2").directory


def test_a_directory_with_foreign_files_survives_cleanup(host: Host) -> None:
    host.bundle("d-1", {"app/data/a.txt": "1"})
    host.install("d-1", APP)
    host.path("/srv/app/data/user.db").write_text("precious")
    host.bundle("d-2", {"app/index.html": "2"})

    host.install("d-2", APP)

    assert host.path("/srv/app/data/user.db").read_text() == "precious"
    assert not host.path("/srv/app/data/a.txt").exists()


def test_a_disallow_conflict_leaves_the_previous_install_intact(host: Host) -> None:
    host.bundle("d-1", {"app/index.html": "1", "app/lib/x.js": "1"})
    host.install("d-1", APP)
    before = host.cleanup_lines()
    host.path("/srv/other").mkdir()
    host.path("/srv/other/hand-made").write_text("mine")
    host.bundle("d-2", {"app/index.html": "2", "other/hand-made": "2"})

    with pytest.raises(InstallError, match="hand-made"):
        host.install(
            "d-2", APP + "  - source: other\n    destination: /srv/other\n", behavior="DISALLOW"
        )

    assert host.path("/srv/app/index.html").read_text() == "1"
    assert host.path("/srv/app/lib/x.js").read_text() == "1"
    assert host.cleanup_lines() == before
    assert host.last_successful() == layout.deployment_paths(host.root, GROUP, "d-1").directory


def test_a_duplicate_destination_fails_before_anything_is_deleted(host: Host) -> None:
    host.bundle("d-1", {"app/index.html": "1"})
    host.install("d-1", APP)
    host.bundle("d-2", {"app/index.html": "2", "more/index.html": "2"})

    with pytest.raises(InstallError, match="for the same destination"):
        host.install("d-2", APP + "  - source: more\n    destination: /srv/app\n")

    assert host.path("/srv/app/index.html").read_text() == "1"


def test_files_of_the_previous_revision_are_not_conflicts(host: Host) -> None:
    host.bundle("d-1", {"app/index.html": "1"})
    host.install("d-1", APP)
    host.bundle("d-2", {"app/index.html": "2"})

    host.install("d-2", APP, behavior="DISALLOW")

    assert host.path("/srv/app/index.html").read_text() == "2"


def test_a_torn_last_cleanup_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "g-cleanup"
    path.write_text("/srv/a\nsemanage\0/srv/a\n/srv/b\n/srv/half-writ")

    parsed = read_cleanup_list(path)

    assert parsed.paths == ("/srv/a", "/srv/b")
    assert parsed.contexts == ("/srv/a",)


# --- permissions ----------------------------------------------------------------------------------


def test_permissions_apply_mode_owner_and_group_to_created_objects_only(host: Host) -> None:
    host.path("/srv/app").mkdir(parents=True)
    foreign = host.path("/srv/app/foreign.conf")
    foreign.write_text("not ours")
    foreign.chmod(0o600)
    host.bundle("d-1", {"app/a.conf": "1", "app/b.txt": "1", "app/sub/c.conf": "1"})
    nobody = pwd.getpwnam("nobody")

    host.install(
        "d-1",
        APP + "permissions:\n"
        "  - object: /srv/app\n    pattern: '*.conf'\n    type: [file]\n    mode: '0640'\n"
        "    owner: nobody\n    group: " + grp.getgrgid(nobody.pw_gid).gr_name + "\n"
        "  - object: /srv/app/sub\n    mode: 700\n",
    )

    conf = host.path("/srv/app/a.conf").stat()
    assert stat.S_IMODE(conf.st_mode) == 0o640
    assert (conf.st_uid, conf.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(host.path("/srv/app/b.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(host.path("/srv/app/sub/c.conf").stat().st_mode) == 0o700
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o600
    assert foreign.stat().st_uid == os.getuid()


def test_modes_are_never_applied_through_a_symlink(host: Host, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o600)
    host.bundle("d-1", {"app/link@": str(outside), "app/a.txt": "a"})

    host.install("d-1", APP + "permissions:\n  - object: /srv/app\n    mode: 777\n")

    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert stat.S_IMODE(host.path("/srv/app/a.txt").stat().st_mode) == 0o777


def test_permissions_set_twice_are_an_error(host: Host) -> None:
    host.bundle("d-1", {"app/a.txt": "a"})

    with pytest.raises(InstallError, match="set more than once"):
        host.install(
            "d-1",
            APP + "permissions:\n  - object: /srv/app\n    mode: 600\n"
            "  - object: /srv/app/a.txt\n    mode: 644\n",
        )


def test_an_unknown_owner_fails_before_the_previous_revision_is_touched(host: Host) -> None:
    host.bundle("d-1", {"app/a.txt": "1"})
    host.install("d-1", APP)
    host.bundle("d-2", {"app/a.txt": "2"})

    with pytest.raises(InstallError, match="permissions\\[0\\]: there is no user 'no-such-user'"):
        host.install("d-2", APP + "permissions:\n  - object: /srv/app\n    owner: no-such-user\n")

    assert host.path("/srv/app/a.txt").read_text() == "1"


def test_acls_without_setfacl_are_a_clear_error(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    host.bundle("d-1", {"app/a.txt": "1"})

    with pytest.raises(InstallError) as info:
        host.install("d-1", APP + "permissions:\n  - object: /srv/app\n    acls: [u:nobody:rw]\n")

    assert "permissions[0] (/srv/app) sets ACLs, but setfacl is not installed" in str(info.value)
    assert not host.path("/srv/app").exists()


def test_selinux_context_without_tools_is_a_clear_error(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    host.bundle("d-1", {"app/a.txt": "1"})

    with pytest.raises(InstallError, match="semanage with restorecon nor chcon"):
        host.install(
            "d-1",
            APP + "permissions:\n  - object: /srv/app\n    context:\n      type: httpd_t\n",
        )


def test_a_file_object_with_a_pattern_is_an_error(host: Host) -> None:
    host.bundle("d-1", {"app/a.txt": "1"})

    with pytest.raises(InstallError, match="is a file, so it cannot have a pattern"):
        host.install(
            "d-1", APP + "permissions:\n  - object: /srv/app/a.txt\n    pattern: '*.txt'\n"
        )


def test_a_missing_source_is_an_error(host: Host) -> None:
    host.bundle("d-1", {"app/a.txt": "1"})

    with pytest.raises(InstallError, match="'nope' does not exist in the bundle"):
        host.install("d-1", "files:\n  - source: nope\n    destination: /srv\n")
