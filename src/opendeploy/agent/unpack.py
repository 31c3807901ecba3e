"""Unpacking a bundle (zip, tar or gzip-compressed tar) into a deployment archive directory.

Everything happens in-process with the standard library, one entry at a time and in fixed-size
chunks, so memory stays flat whatever the bundle's size; nothing is handed to a shell.

An entry is refused, with an ``UnsafeArchiveError`` naming it, when it would land outside the
destination: an absolute name, a ``..`` component, a symbolic link whose target is absolute or
resolves outside, a file written through a symbolic link that leads outside, a hard link to
anything but an earlier regular file of the archive. Device files and FIFOs are refused too.
After extraction every symbolic link in the tree is checked once more, because a later entry can
change what an earlier link resolves to (``a -> x/../y`` is harmless until ``x -> .`` arrives).

What is kept: file and directory permission bits (so scripts stay executable), modification
times, symbolic links that stay inside. What is not: owners (files belong to the agent; the
appspec's ``permissions`` section sets owners) and setuid/setgid bits (a bundle should not mint
privileged binaries by accident; ``permissions`` can set them explicitly).

Extraction goes into a temporary sibling of ``dest`` that is renamed into place at the end, so
a failed extraction leaves no half-filled archive directory behind.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final, Literal, TypeAlias

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "BundleError",
    "BundleType",
    "UnsafeArchiveError",
    "detect_bundle_type",
    "extract",
]

BundleType: TypeAlias = Literal["zip", "tar", "tgz"]

_CHUNK: Final = 256 * 1024
_MAX_LINK_TARGET: Final = 4096
_APPSPEC_NAMES: Final = ("appspec.yml", "appspec.yaml")
_FILE_MODE_MASK: Final = 0o777
_DIR_MODE_MASK: Final = 0o1777


class BundleError(OpenDeployError):
    """A bundle that cannot be unpacked: unreadable, of the wrong type, or unsafe."""


class UnsafeArchiveError(BundleError):
    """An archive entry that would escape the destination or create a special file."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"refusing to unpack the bundle: entry {entry!r} {reason}")
        self.entry = entry
        self.reason = reason


def detect_bundle_type(path: Path) -> BundleType:
    """The bundle's type from its first bytes: ``zip``, ``tgz`` (gzip) or ``tar``.

    A bzip2- or xz-compressed tar is reported as ``tar``: the tar reader recognises the
    compression by itself, as GNU tar does.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {path}: {exc.strerror or exc}") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tgz"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"
    if head[257:262] == b"ustar" or _is_tar_header(head):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if not head:
        raise BundleError(f"the bundle {path} is empty")
    raise BundleError(f"the bundle {path} is neither a zip, a tar nor a gzip-compressed tar")


def _is_tar_header(block: bytes) -> bool:
    """True for a pre-POSIX (v7) tar header, which has no magic but a checksum."""
    if len(block) < 512:
        return False
    field = block[148:156].replace(b"\0", b" ").strip()
    try:
        recorded = int(field, 8)
    except ValueError:
        return False
    return recorded == 256 + sum(block[:148]) + sum(block[156:512])


def extract(
    archive: Path,
    bundle_type: BundleType,
    dest: Path,
    *,
    promote_single_root: bool = True,
) -> None:
    """Unpack ``archive`` into ``dest``, which must be missing or empty.

    ``bundle_type`` is what the revision declares. ``tar`` and ``tgz`` are read alike (the
    compression is recognised, as GNU tar does); declaring ``zip`` for a tar or the reverse is
    an error. With ``promote_single_root`` (the stock agent's GitHub-tarball rule), when the
    archive holds exactly one directory and it contains ``appspec.yml`` or ``appspec.yaml``,
    that directory's contents become the root.
    """
    if bundle_type not in ("zip", "tar", "tgz"):
        raise BundleError(f"unknown bundle type {bundle_type!r}; expected zip, tar or tgz")
    actual = detect_bundle_type(archive)
    if (actual == "zip") != (bundle_type == "zip"):
        described = "a zip archive" if actual == "zip" else "a tar archive"
        raise BundleError(
            f"the bundle is declared as {bundle_type} but {archive} is {described};"
            " correct the revision's bundle type"
        )
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise BundleError(f"cannot unpack into {dest}: it exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        writer = _Writer(staging)
        if actual == "zip":
            _extract_zip(archive, writer)
        else:
            _extract_tar(archive, writer)
        top = _single_root(staging) if promote_single_root else None
        if top is not None:
            _promote(staging, top)
        writer.finish(top)
        _verify_links(staging)
        os.chmod(staging, 0o755)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract_tar(archive: Path, writer: _Writer) -> None:
    try:
        with _decompressed(archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _tar_member(tar, member, writer)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise BundleError(f"the bundle is not a readable tar archive: {exc}") from None
    except OSError as exc:
        raise BundleError(f"the bundle is not a readable tar archive: {exc}") from None


def _decompressed(archive: Path) -> io.BufferedIOBase:
    """The archive as an uncompressed stream, whatever its compression (as GNU tar reads it).

    The gzip, bzip2 and xz readers inflate at most what is asked for, so memory stays bounded
    even for data that compresses a thousandfold (tarfile's own ``r|*`` inflates whole input
    blocks at once).
    """
    with open(archive, "rb") as probe:
        head = probe.read(6)
    if head[:2] == b"\x1f\x8b":
        return gzip.open(archive, "rb")
    if head[:3] == b"BZh":
        return bz2.open(archive, "rb")
    if head == b"\xfd7zXZ\x00":
        return lzma.open(archive, "rb")
    return open(archive, "rb")


def _tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer) -> None:
    name = member.name
    if member.isdir():
        writer.directory(name, member.mode, member.mtime)
    elif member.issym():
        writer.symlink(name, member.linkname)
    elif member.islnk():
        writer.hardlink(name, member.linkname)
    elif member.ischr() or member.isblk():
        raise UnsafeArchiveError(name, "is a device file; bundles may hold only files and links")
    elif member.isfifo():
        raise UnsafeArchiveError(name, "is a FIFO; bundles may hold only files and links")
    elif member.isreg():
        source = tar.extractfile(member)
        if source is None:
            raise BundleError(f"cannot read entry {name!r} of the bundle")
        with source:
            writer.file(name, source, member.mode, member.mtime)
    else:
        raise UnsafeArchiveError(name, f"has an unsupported tar entry type {member.type!r}")


def _extract_zip(archive: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _zip_member(bundle, info, writer)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise BundleError(f"the bundle is not a readable zip archive: {exc}") from None


def _zip_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    name = info.filename.replace("\\", "/")
    unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(unix_mode)
    mtime = _zip_mtime(info)
    if info.flag_bits & 0x1:
        raise BundleError(f"entry {name!r} of the bundle is encrypted; bundles cannot be")
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.directory(name, stat.S_IMODE(unix_mode) or 0o755, mtime)
    elif kind == stat.S_IFLNK:
        if info.file_size > _MAX_LINK_TARGET:
            raise UnsafeArchiveError(name, "is a symbolic link with an overlong target")
        target = bundle.read(info).decode("utf-8", "surrogateescape")
        writer.symlink(name, target)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        raise UnsafeArchiveError(name, "is a device file; bundles may hold only files and links")
    elif kind == stat.S_IFIFO:
        raise UnsafeArchiveError(name, "is a FIFO; bundles may hold only files and links")
    elif kind in (0, stat.S_IFREG):
        with bundle.open(info) as source:
            writer.file(name, source, stat.S_IMODE(unix_mode) or 0o644, mtime)
    else:
        raise UnsafeArchiveError(name, f"has an unsupported file type {oct(kind)}")


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return time.time()


class _Writer:
    """Creates entries under ``root``, refusing any that would escape it."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.directories: dict[str, tuple[int, float]] = {}

    def inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def target(self, name: str) -> tuple[str, str]:
        """The entry's normalised relative path and where it goes; refuses escaping names."""
        if "\0" in name:
            raise UnsafeArchiveError(name, "has a NUL character in its name")
        if name.startswith("/"):
            raise UnsafeArchiveError(name, "has an absolute path; bundle entries must be relative")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(name, "contains '..' and would land outside the bundle")
        relative = "/".join(parts)
        return relative, os.path.join(self.root, relative) if relative else self.root

    def parent(self, name: str, path: str) -> str:
        """Create the entry's missing parent directories; refuse a parent that leads outside."""
        parent = os.path.dirname(path)
        real = os.path.realpath(parent)
        if not self.inside(real):
            raise UnsafeArchiveError(
                name, "would be written through a symbolic link that leads outside the bundle"
            )
        try:
            os.makedirs(real, exist_ok=True)
        except OSError as exc:
            raise BundleError(
                f"cannot unpack entry {name!r}: its parent directory cannot be created"
                f" ({exc.strerror or exc})"
            ) from None
        return real

    def replace(self, name: str, path: str) -> None:
        """Make room for an entry, as tar does for a repeated name; never remove a directory."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise BundleError(
                f"cannot unpack entry {name!r}: an earlier entry made {name!r} a directory"
            )
        os.unlink(path)

    def directory(self, name: str, mode: int, mtime: float) -> None:
        relative, path = self.target(name)
        if not relative:
            return
        real_parent = self.parent(name, path)
        path = os.path.join(real_parent, os.path.basename(path))
        with _errors(name):
            if os.path.islink(path) or not os.path.isdir(path):
                self.replace(name, path)
                os.mkdir(path, 0o700)
        self.directories[os.path.relpath(path, self.root)] = (mode & _DIR_MODE_MASK, mtime)

    def file(self, name: str, source: IO[bytes], mode: int, mtime: float) -> None:
        relative, path = self.target(name)
        if not relative:
            raise UnsafeArchiveError(name, "is a file named like the bundle root")
        path = os.path.join(self.parent(name, path), os.path.basename(path))
        with _errors(name):
            self.replace(name, path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            descriptor = os.open(path, flags, 0o600)
            with open(descriptor, "wb", closefd=True) as out:
                shutil.copyfileobj(source, out, _CHUNK)
                out.flush()
                os.fchmod(descriptor, mode & _FILE_MODE_MASK)
                os.utime(descriptor, (mtime, mtime))

    def symlink(self, name: str, link_target: str) -> None:
        relative, path = self.target(name)
        if not relative:
            raise UnsafeArchiveError(name, "is a symbolic link named like the bundle root")
        if not link_target or "\0" in link_target:
            raise UnsafeArchiveError(name, "is a symbolic link with an empty or invalid target")
        if link_target.startswith("/"):
            raise UnsafeArchiveError(
                name, f"is a symbolic link to the absolute path {link_target!r}, outside the bundle"
            )
        real_parent = self.parent(name, path)
        if not self.inside(os.path.realpath(os.path.join(real_parent, link_target))):
            raise UnsafeArchiveError(
                name, f"is a symbolic link to {link_target!r}, which points outside the bundle"
            )
        path = os.path.join(real_parent, os.path.basename(path))
        with _errors(name):
            self.replace(name, path)
            os.symlink(link_target, path)

    def hardlink(self, name: str, link_target: str) -> None:
        relative, path = self.target(name)
        if not relative:
            raise UnsafeArchiveError(name, "is a hard link named like the bundle root")
        if link_target.startswith("/") or ".." in link_target.split("/"):
            raise UnsafeArchiveError(
                name, f"is a hard link to {link_target!r}, which is outside the bundle"
            )
        _, source = self.target(link_target)
        real_source = os.path.realpath(source)
        if not self.inside(real_source):
            raise UnsafeArchiveError(
                name, f"is a hard link to {link_target!r}, which resolves outside the bundle"
            )
        try:
            is_file = stat.S_ISREG(os.lstat(real_source).st_mode)
        except FileNotFoundError:
            is_file = False
        if not is_file:
            raise UnsafeArchiveError(
                name, f"is a hard link to {link_target!r}, which is not an earlier file entry"
            )
        path = os.path.join(self.parent(name, path), os.path.basename(path))
        with _errors(name):
            if os.path.lexists(path) and _same_inode(os.lstat(path), os.lstat(real_source)):
                return
            self.replace(name, path)
            os.link(real_source, path, follow_symlinks=False)

    def finish(self, promoted: str | None) -> None:
        """Give directories their modes and times, deepest first (a read-only directory must
        not block writing its contents, and writing contents changes a directory's mtime)."""
        for relative in sorted(self.directories, key=lambda r: r.count("/"), reverse=True):
            mode, mtime = self.directories[relative]
            if promoted is not None:
                if relative == promoted:
                    continue
                relative = relative.removeprefix(promoted + "/")
            path = os.path.join(self.root, relative)
            with _errors(relative):
                os.chmod(path, mode)
                os.utime(path, (mtime, mtime), follow_symlinks=False)


def _same_inode(first: os.stat_result, second: os.stat_result) -> bool:
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


@contextlib.contextmanager
def _errors(name: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise BundleError(f"cannot unpack entry {name!r}: {exc.strerror or exc}") from None


def _single_root(root: Path) -> str | None:
    """The archive's only top-level entry, if it is a directory holding an appspec."""
    entries = os.listdir(root)
    if len(entries) != 1:
        return None
    top = root / entries[0]
    if top.is_symlink() or not top.is_dir():
        return None
    if any(os.path.lexists(top / name) for name in _APPSPEC_NAMES):
        return entries[0]
    return None


def _promote(root: Path, top: str) -> None:
    """Move the contents of ``root/top`` up into ``root`` (a GitHub tarball's ``repo-sha/``)."""
    holder = Path(tempfile.mkdtemp(prefix=".promote-", dir=root))
    os.rmdir(holder)
    os.rename(root / top, holder)
    for entry in os.listdir(holder):
        os.rename(holder / entry, root / entry)
    os.rmdir(holder)


def _verify_links(root: Path) -> None:
    """Refuse any symbolic link in the finished tree that resolves outside it."""
    real_root = os.path.realpath(root)
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                continue
            real = os.path.realpath(path)
            if real != real_root and not real.startswith(real_root + os.sep):
                entry = os.path.relpath(path, root)
                raise UnsafeArchiveError(
                    entry,
                    f"is a symbolic link to {os.readlink(path)!r}, which resolves outside"
                    " the bundle once the whole archive is unpacked",
                )
