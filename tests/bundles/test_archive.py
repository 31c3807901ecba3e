"""make_bundle: deterministic, streamed tar.gz of a bundle directory."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from opendeploy.bundles.archive import FIXED_MTIME, ArchiveError, BundleInfo, make_bundle

APPSPEC = "version: 0.0\nos: linux\n"


def _tree(root: Path, files: dict[str, str], *, order: list[str] | None = None) -> Path:
    """Write ``files`` (relative name -> text) under ``root``, in ``order`` if given."""
    root.mkdir(parents=True, exist_ok=True)
    for name in order or list(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name])
    return root


def _bundle(source: Path) -> tuple[BundleInfo, bytes]:
    out = io.BytesIO()
    info = make_bundle(source, out)
    return info, out.getvalue()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


FILES = {
    "appspec.yml": APPSPEC,
    "scripts/start.sh": "#!/bin/sh\necho start\n",
    "app/b.txt": "bravo\n",
    "app/a.txt": "alpha\n",
    "app/sub/c.txt": "charlie\n",
}


def test_info_describes_the_bytes_written(tmp_path: Path) -> None:
    info, data = _bundle(_tree(tmp_path / "src", FILES))
    assert info == BundleInfo(hashlib.sha256(data).hexdigest(), len(data), "tgz")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        extracted = tar.extractfile("app/sub/c.txt")
        assert extracted is not None
        assert extracted.read() == b"charlie\n"


def test_same_content_gives_the_same_bytes_whatever_the_mtimes_and_creation_order(
    tmp_path: Path,
) -> None:
    one = _tree(tmp_path / "one", FILES)
    two = _tree(tmp_path / "two", FILES, order=sorted(FILES, reverse=True))
    for path in two.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    os.chmod(two / "app" / "a.txt", 0o600)  # not executable either way: same bundle
    info_one, data_one = _bundle(one)
    info_two, data_two = _bundle(two)
    assert data_one == data_two
    assert info_one.sha256 == info_two.sha256
    # and again, a second run over the same directory
    assert _bundle(one)[1] == data_one


def test_different_content_gives_a_different_hash(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", FILES)
    two = _tree(tmp_path / "two", {**FILES, "app/a.txt": "ALPHA\n"})
    three = _tree(tmp_path / "three", FILES)
    (three / "scripts" / "start.sh").chmod(0o755)
    hashes = {_bundle(path)[0].sha256 for path in (one, two, three)}
    assert len(hashes) == 3


def test_entries_are_sorted_and_normalised(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", FILES)
    (source / "scripts" / "start.sh").chmod(0o700)
    (source / "app" / "b.txt").chmod(0o600)
    members = _members(_bundle(source)[1])
    names = [member.name for member in members]
    assert names == [
        "app",
        "app/a.txt",
        "app/b.txt",
        "app/sub",
        "app/sub/c.txt",
        "appspec.yml",
        "scripts",
        "scripts/start.sh",
    ]
    for member in members:
        assert (member.mtime, member.uid, member.gid) == (FIXED_MTIME, 0, 0)
        assert (member.uname, member.gname) == ("root", "root")
    modes = {member.name: member.mode for member in members}
    assert modes["scripts/start.sh"] == 0o755
    assert modes["app/b.txt"] == 0o644
    assert modes["app"] == 0o755


def test_gzip_header_has_no_timestamp_and_no_file_name(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", FILES)
    target = tmp_path / "named-output.tgz"
    with target.open("wb") as out:  # a real file: GzipFile would otherwise record its name
        info = make_bundle(source, out)
    data = target.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert data[3] & 0x08 == 0, "FNAME flag set"
    assert data[4:8] == b"\x00\x00\x00\x00", "gzip mtime not zero"
    assert b"named-output" not in data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert data == _bundle(source)[1]


def test_appspec_yaml_is_accepted(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", {"appspec.yaml": APPSPEC})
    assert [m.name for m in _members(_bundle(source)[1])] == ["appspec.yaml"]


def test_a_directory_without_appspec_at_its_root_is_refused(tmp_path: Path) -> None:
    source = _tree(tmp_path / "no-spec-here", {"nested/appspec.yml": APPSPEC, "a.txt": "a"})
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match=r"appspec\.yml \(or appspec\.yaml\)") as caught:
        make_bundle(source, out)
    assert str(source) in str(caught.value)
    assert out.getvalue() == b""


def test_a_missing_directory_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a directory") as caught:
        make_bundle(tmp_path / "missing", io.BytesIO())
    assert str(tmp_path / "missing") in str(caught.value)


def test_symlinks_inside_are_kept_as_symlinks(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", FILES)
    os.symlink("a.txt", source / "app" / "current.txt")
    os.symlink("../app/sub", source / "scripts" / "sub-link")  # a directory: not followed
    os.symlink("missing.txt", source / "app" / "dangling")  # dangling but inside: fine
    members = {m.name: m for m in _members(_bundle(source)[1])}
    assert members["app/current.txt"].issym()
    assert members["app/current.txt"].linkname == "a.txt"
    assert members["scripts/sub-link"].issym()
    assert members["scripts/sub-link"].linkname == "../app/sub"
    assert "scripts/sub-link/c.txt" not in members
    assert members["app/dangling"].issym()


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("app/up", "../../outside.txt"),
        ("escape", ".."),
        ("app/tricky", "sub/../../../outside.txt"),
        ("absolute", "/etc/passwd"),
    ],
)
def test_symlinks_pointing_outside_are_refused(tmp_path: Path, link: str, target: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    source = _tree(tmp_path / "src", FILES)
    os.symlink(target, source / link)
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match="symlink") as caught:
        make_bundle(source, out)
    assert str(source / link) in str(caught.value)
    assert out.getvalue() == b"", "nothing may be written for a refused tree"


def test_a_symlink_escaping_through_another_symlink_is_refused(tmp_path: Path) -> None:
    # a/b/to-root points at the bundle root (allowed). "a/b/to-root/../outside.txt" is
    # a/b/outside.txt lexically, but really the parent of the bundle root: outside.
    (tmp_path / "outside.txt").write_text("secret")
    source = _tree(tmp_path / "src", {**FILES, "a/b/x.txt": "x"})
    os.symlink("../..", source / "a" / "b" / "to-root")
    assert _bundle(source)[0].size > 0
    os.symlink("a/b/to-root/../outside.txt", source / "sneaky")
    assert (source / "sneaky").read_text() == "secret"
    with pytest.raises(ArchiveError, match="outside") as caught:
        make_bundle(source, io.BytesIO())
    assert "sneaky" in str(caught.value)


def test_special_files_are_refused(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", FILES)
    os.mkfifo(source / "pipe")
    with pytest.raises(ArchiveError, match="pipe"):
        make_bundle(source, io.BytesIO())


class _Sink:
    """A write-only stream that keeps nothing but a hash (like a network upload)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def test_memory_stays_flat_for_a_large_file(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", {"appspec.yml": APPSPEC})
    big = 48 * 1024 * 1024
    with (source / "big.bin").open("wb") as handle:
        handle.truncate(big)  # sparse zeros: fast to make, still read in full
    sink = _Sink()
    tracemalloc.start()
    try:
        info = make_bundle(source, sink)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak Python memory {peak} bytes for a {big} byte file"
    assert info.sha256 == sink.hash.hexdigest()
    assert info.size == sink.size
    assert sink.size < big // 100  # zeros compress: the archive really is gzip
