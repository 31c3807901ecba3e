from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Literal

import pytest

from opendeploy.agent.unpack import BundleError, UnsafeArchiveError, detect_bundle_type, extract

Entry = tuple[str, str, object, int]
"""(kind, name, content or link target, mode); kind is file, dir, symlink, hardlink, chr, fifo."""


def make_tar(path: Path, entries: list[Entry], compression: Literal["", "gz"] = "") -> Path:
    open_mode: Literal["w:", "w:gz"] = "w:gz" if compression else "w:"
    with tarfile.open(path, open_mode, format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_700_000_000
            data = b""
            if kind == "file":
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return path


def make_zip(path: Path, entries: list[Entry]) -> Path:
    kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
    kinds |= {"chr": stat.S_IFCHR, "fifo": stat.S_IFIFO}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for kind, name, payload, mode in entries:
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""), (2024, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.external_attr = (kinds[kind] | mode) << 16
            data = payload if isinstance(payload, bytes) else str(payload or "").encode()
            bundle.writestr(info, data)
    return path


GOOD: list[Entry] = [
    ("file", "appspec.yml", "version: 0.0\nos: linux\n", 0o644),
    ("dir", "scripts", None, 0o750),
    ("file", "scripts/start.sh", "#!/bin/sh\necho hi\n", 0o755),
    ("file", "app/lib/data.txt", "data", 0o600),
    ("symlink", "app/current", "lib/data.txt", 0o777),
    ("symlink", "app/up", "../scripts", 0o777),
]


def check_good_tree(dest: Path) -> None:
    assert (dest / "appspec.yml").read_text() == "version: 0.0\nos: linux\n"
    assert stat.S_IMODE((dest / "scripts/start.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "app/lib/data.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "scripts").stat().st_mode) == 0o750
    assert os.readlink(dest / "app/current") == "lib/data.txt"
    assert (dest / "app/current").read_text() == "data"
    assert os.readlink(dest / "app/up") == "../scripts"
    assert (dest / "app/up/start.sh").is_file()


@pytest.mark.parametrize("compression", ["", "gz"])
def test_tar_and_tgz_keep_modes_times_and_inner_symlinks(
    tmp_path: Path, compression: Literal["", "gz"]
) -> None:
    entries = [*GOOD, ("hardlink", "copy.txt", "app/lib/data.txt", 0o600)]
    archive = make_tar(tmp_path / "bundle.tar", entries, compression)
    dest = tmp_path / "out"

    extract(archive, "tgz" if compression else "tar", dest)

    check_good_tree(dest)
    assert (dest / "copy.txt").samefile(dest / "app/lib/data.txt")
    assert (dest / "scripts/start.sh").stat().st_mtime == 1_700_000_000
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_zip_keeps_modes_and_inner_symlinks(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bundle.zip", GOOD)
    dest = tmp_path / "out"

    extract(archive, "zip", dest)

    check_good_tree(dest)
    expected = time.mktime((2024, 1, 2, 3, 4, 6, 0, 0, -1))
    assert (dest / "appspec.yml").stat().st_mtime == expected


def test_zip_without_unix_modes_gets_ordinary_modes(tmp_path: Path) -> None:
    archive = tmp_path / "windows.zip"
    info = zipfile.ZipInfo("dir\\file.txt")
    info.create_system = 0
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(info, "x")
    dest = tmp_path / "out"

    extract(archive, "zip", dest)

    assert stat.S_IMODE((dest / "dir/file.txt").stat().st_mode) == 0o644


def test_setuid_and_setgid_bits_are_dropped(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar", [("file", "tool", "x", 0o6755)])

    extract(archive, "tar", tmp_path / "out")

    assert stat.S_IMODE((tmp_path / "out/tool").stat().st_mode) == 0o755


def test_a_later_duplicate_entry_wins(tmp_path: Path) -> None:
    entries: list[Entry] = [("file", "a", "old", 0o644), ("file", "a", "new", 0o644)]
    archive = make_tar(tmp_path / "b.tar", entries)

    extract(archive, "tar", tmp_path / "out")

    assert (tmp_path / "out/a").read_text() == "new"


# --- refused entries ------------------------------------------------------------------------------


def refused(tmp_path: Path, archive: Path, bundle_type: Literal["zip", "tar", "tgz"]) -> str:
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, bundle_type, dest)
    assert not dest.exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]
    assert info.value.entry in str(info.value)
    return info.value.entry


@pytest.mark.parametrize("maker", ["tar", "zip"])
def test_zip_slip_is_refused(tmp_path: Path, maker: str) -> None:
    entries: list[Entry] = [("file", "ok.txt", "ok", 0o644), ("file", "../evil", "pwned", 0o644)]
    archive = (
        make_tar(tmp_path / "b.tar", entries)
        if maker == "tar"
        else make_zip(tmp_path / "b.zip", entries)
    )

    assert refused(tmp_path, archive, "tar" if maker == "tar" else "zip") == "../evil"
    assert not (tmp_path / "evil").exists()


def test_absolute_names_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "absolute-evil"
    archive = make_tar(tmp_path / "b.tar", [("file", str(target), "pwned", 0o644)])

    assert refused(tmp_path, archive, "tar") == str(target)
    assert not target.exists()


@pytest.mark.parametrize("maker", ["tar", "zip"])
@pytest.mark.parametrize("link", ["../outside", "a/../../outside", "/etc"])
def test_symlinks_pointing_outside_are_refused(tmp_path: Path, maker: str, link: str) -> None:
    entries: list[Entry] = [("dir", "a", None, 0o755), ("symlink", "escape", link, 0o777)]
    archive = (
        make_tar(tmp_path / "b.tar", entries)
        if maker == "tar"
        else make_zip(tmp_path / "b.zip", entries)
    )

    assert refused(tmp_path, archive, "tar" if maker == "tar" else "zip") == "escape"


def test_a_file_written_through_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = make_tar(
        tmp_path / "b.tar",
        [("symlink", "link", "../outside", 0o777), ("file", "link/evil", "pwned", 0o644)],
    )

    assert refused(tmp_path, archive, "tar") == "link"
    assert list(outside.iterdir()) == []


def test_a_link_turned_outward_by_a_later_link_cannot_be_written_through(tmp_path: Path) -> None:
    """``a -> y/../outside`` resolves inside while ``y`` is missing; ``y -> .`` then makes
    ``a`` lead out of the bundle, so writing ``a/evil`` must be refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = make_tar(
        tmp_path / "b.tar",
        [
            ("symlink", "a", "y/../outside", 0o777),
            ("symlink", "y", ".", 0o777),
            ("file", "a/evil", "pwned", 0o644),
        ],
    )

    assert refused(tmp_path, archive, "tar") == "a/evil"
    assert list(outside.iterdir()) == []


def test_a_link_turned_outward_later_is_caught_by_the_final_check(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "b.tar",
        [("symlink", "a", "y/../outside", 0o777), ("symlink", "y", ".", 0o777)],
    )

    assert refused(tmp_path, archive, "tar") == "a"


@pytest.mark.parametrize("link", ["../../etc/passwd", "/etc/passwd", "missing.txt"])
def test_hard_links_outside_or_to_nothing_are_refused(tmp_path: Path, link: str) -> None:
    archive = make_tar(
        tmp_path / "b.tar",
        [("file", "ok.txt", "ok", 0o644), ("hardlink", "h", link, 0o644)],
    )

    assert refused(tmp_path, archive, "tar") == "h"


def test_a_hard_link_through_an_outward_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("secret")
    archive = make_tar(
        tmp_path / "b.tar",
        [
            ("symlink", "a", "y/../secret", 0o777),
            ("symlink", "y", ".", 0o777),
            ("hardlink", "h", "a", 0o644),
        ],
    )

    assert refused(tmp_path, archive, "tar") == "h"


@pytest.mark.parametrize("kind", ["chr", "fifo"])
@pytest.mark.parametrize("maker", ["tar", "zip"])
def test_device_files_and_fifos_are_refused(tmp_path: Path, kind: str, maker: str) -> None:
    entries: list[Entry] = [(kind, "dev/thing", None, 0o666)]
    archive = (
        make_tar(tmp_path / "b.tar", entries)
        if maker == "tar"
        else make_zip(tmp_path / "b.zip", entries)
    )

    entry = refused(tmp_path, archive, "tar" if maker == "tar" else "zip")

    assert entry == "dev/thing"


# --- GitHub tarballs ------------------------------------------------------------------------------


def test_a_single_root_directory_with_an_appspec_is_promoted(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "b.tgz",
        [
            ("dir", "owner-repo-0123abc", None, 0o755),
            ("file", "owner-repo-0123abc/appspec.yaml", "version: 0.0\n", 0o644),
            ("dir", "owner-repo-0123abc/scripts", None, 0o700),
            ("file", "owner-repo-0123abc/scripts/run.sh", "#!/bin/sh\n", 0o755),
            ("symlink", "owner-repo-0123abc/run", "scripts/run.sh", 0o777),
        ],
        "gz",
    )
    dest = tmp_path / "out"

    extract(archive, "tgz", dest)

    assert sorted(os.listdir(dest)) == ["appspec.yaml", "run", "scripts"]
    assert stat.S_IMODE((dest / "scripts").stat().st_mode) == 0o700
    assert (dest / "run").resolve() == (dest / "scripts/run.sh").resolve()


@pytest.mark.parametrize(
    "entries",
    [
        [("file", "top/readme", "x", 0o644)],
        [("file", "top/appspec.yml", "x", 0o644), ("file", "other", "x", 0o644)],
    ],
)
def test_other_layouts_are_not_promoted(tmp_path: Path, entries: list[Entry]) -> None:
    archive = make_tar(tmp_path / "b.tar", entries)
    dest = tmp_path / "out"

    extract(archive, "tar", dest)

    assert "top" in os.listdir(dest)


def test_promotion_can_be_turned_off(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar", [("file", "top/appspec.yml", "x", 0o644)])

    extract(archive, "tar", tmp_path / "out", promote_single_root=False)

    assert (tmp_path / "out/top/appspec.yml").is_file()


# --- types, bad input, memory ---------------------------------------------------------------------


def test_detect_bundle_type_by_magic_bytes(tmp_path: Path) -> None:
    entries: list[Entry] = [("file", "a", "x", 0o644)]
    v7 = bytearray(make_tar(tmp_path / "v7.tar", entries).read_bytes())
    v7[257:265] = bytes(8)
    v7[148:156] = b" " * 8
    v7[148:156] = b"%06o\0 " % sum(v7[:512])
    (tmp_path / "v7.tar").write_bytes(bytes(v7))

    assert detect_bundle_type(make_zip(tmp_path / "a.zip", entries)) == "zip"
    assert detect_bundle_type(make_tar(tmp_path / "a.tgz", entries, "gz")) == "tgz"
    assert detect_bundle_type(make_tar(tmp_path / "a.tar", entries)) == "tar"
    assert detect_bundle_type(tmp_path / "v7.tar") == "tar"
    (tmp_path / "junk").write_bytes(b"not an archive at all" * 30)
    with pytest.raises(BundleError, match="neither a zip, a tar nor"):
        detect_bundle_type(tmp_path / "junk")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(BundleError, match="is empty"):
        detect_bundle_type(tmp_path / "empty")


def test_tar_declared_for_a_tgz_is_read_like_gnu_tar(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tgz", [("file", "a", "x", 0o644)], "gz")

    extract(archive, "tar", tmp_path / "out")

    assert (tmp_path / "out/a").read_text() == "x"


def test_zip_declared_for_a_tar_is_an_error(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar", [("file", "a", "x", 0o644)])

    with pytest.raises(BundleError, match=r"declared as zip but .* is a tar archive"):
        extract(archive, "zip", tmp_path / "out")


def test_a_truncated_archive_fails_and_leaves_nothing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tgz", [("file", "a", os.urandom(200_000), 0o644)], "gz")
    archive.write_bytes(archive.read_bytes()[:50_000])
    dest = tmp_path / "out"

    with pytest.raises(BundleError):
        extract(archive, "tgz", dest)
    assert not dest.exists()


def test_a_non_empty_destination_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "b.tar", [("file", "a", "x", 0o644)])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("old")

    with pytest.raises(BundleError, match="not an empty directory"):
        extract(archive, "tar", dest)
    assert (dest / "old").read_text() == "old"


@pytest.mark.parametrize("bundle_type", ["tgz", "zip"])
def test_memory_stays_flat_for_a_large_file(
    tmp_path: Path, bundle_type: Literal["tgz", "zip"]
) -> None:
    size = 48 * 1024 * 1024
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(size)
    archive = tmp_path / f"bundle.{bundle_type}"
    if bundle_type == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
            bundle.write(big, "big.bin")
    else:
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            tar.add(big, "big.bin")
    big.unlink()

    tracemalloc.start()
    try:
        extract(archive, bundle_type, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (tmp_path / "out/big.bin").stat().st_size == size
    assert peak < 4 * 1024 * 1024
