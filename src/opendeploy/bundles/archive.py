"""Deterministic ``tar.gz`` bundles of a directory.

``make_bundle`` writes the same bytes for the same content wherever and whenever it runs (with the
same zlib): entries are sorted by name, every entry carries the same mtime, uid/gid 0 and owner
``root``, the gzip header holds no timestamp and no file name. What does count as content: the
relative paths, the bytes of regular files, whether a file is executable and symlink targets.
Permission bits are normalised the way git records them (directories ``0755``, files ``0755``
when any execute bit is set, else ``0644``), so a checkout under another umask or a read-only copy
gives the same bundle; exact modes and owners on the host are the appspec's ``permissions``
section's job.

Symlinks are kept as symlinks when they point inside the directory (a relative target whose
lexical and real resolution both stay inside); a symlink pointing outside, or an absolute one,
is refused, as are sockets, FIFOs and device files. Symlinked directories are not followed. Hard
links are stored as separate regular files.

The archive is streamed: file contents are copied in chunks and compressed as they go, so memory
stays flat whatever the bundle size.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "APPSPEC_NAMES",
    "FIXED_MTIME",
    "ArchiveError",
    "BundleError",
    "BundleInfo",
    "make_bundle",
]

APPSPEC_NAMES = ("appspec.yml", "appspec.yaml")
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, the mtime of every entry
_COMPRESS_LEVEL = 6


class BundleError(OpenDeployError):
    """Base of every error of the bundles package."""


class ArchiveError(BundleError):
    """A directory that cannot be made into a bundle."""


@dataclass(frozen=True)
class BundleInfo:
    """What identifies a stored bundle: the sha256 (lowercase hex) and size of its bytes."""

    sha256: str
    size: int
    bundle_type: str = "tgz"


class _HashingWriter:
    """Passes writes on to ``out`` while hashing and counting them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def make_bundle(source_dir: Path, out: BinaryIO) -> BundleInfo:
    """Write a deterministic ``tar.gz`` of ``source_dir`` to ``out`` (left open).

    Raises ``ArchiveError`` when the directory does not exist, has no ``appspec.yml`` (or
    ``appspec.yaml``) at its root, or holds a symlink pointing outside it or a special file.
    The checks of the whole tree run before the first byte is written.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ArchiveError(f"cannot make a bundle of {source_dir}: it is not a directory")
    if not any((source_dir / name).is_file() for name in APPSPEC_NAMES):
        raise ArchiveError(
            f"{source_dir} has no appspec.yml (or appspec.yaml) at its root; "
            "a bundle directory needs one"
        )
    root_real = os.path.realpath(source_dir)
    # Validate everything first so that a refused tree leaves ``out`` untouched.
    entries = list(_walk(source_dir, root_real, ""))

    sink = _HashingWriter(out)
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=sink, compresslevel=_COMPRESS_LEVEL, mtime=0
        ) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, path, st in entries:
            info = _tarinfo(rel, st)
            if info.type == tarfile.SYMTYPE:
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif info.type == tarfile.DIRTYPE:
                tar.addfile(info)
            else:
                with _open_regular(path) as handle:
                    info.size = os.fstat(handle.fileno()).st_size
                    try:
                        tar.addfile(info, handle)
                    except OSError as exc:  # the file shrank while we read it
                        raise ArchiveError(f"could not read {path} into the bundle: {exc}") from exc
    out.flush()
    return BundleInfo(sha256=sink.hexdigest(), size=sink.size)


def _open_regular(path: Path) -> BinaryIO:
    """Open a file found regular by the walk, refusing it if it became something else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArchiveError(f"could not read {path} into the bundle: {exc}") from exc
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise ArchiveError(f"{path} changed while the bundle was being made")
    return handle


def _walk(
    directory: Path, root_real: str, prefix: str
) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield ``(relative posix name, path, lstat)`` depth-first in sorted name order."""
    try:
        with os.scandir(directory) as scan:
            names = sorted(entry.name for entry in scan)
    except OSError as exc:
        raise ArchiveError(f"cannot list {directory}: {exc}") from exc
    for name in names:
        path = directory / name
        rel = f"{prefix}{name}"
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            _check_symlink(path, rel, root_real)
            yield rel, path, st
        elif stat.S_ISDIR(st.st_mode):
            yield rel, path, st
            yield from _walk(path, root_real, rel + "/")
        elif stat.S_ISREG(st.st_mode):
            yield rel, path, st
        else:
            raise ArchiveError(
                f"cannot put {path} into a bundle: only regular files, directories and "
                "symlinks can be bundled"
            )


def _check_symlink(path: Path, rel: str, root_real: str) -> None:
    target = os.readlink(path)
    if os.path.isabs(target):
        raise ArchiveError(
            f"symlink {path} -> {target} is absolute; a bundle keeps only relative symlinks "
            "that point inside the bundle directory"
        )
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    real = os.path.realpath(path)
    inside_real = real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
    if lexical == ".." or lexical.startswith("../") or not inside_real:
        raise ArchiveError(
            f"symlink {path} -> {target} points outside the bundle directory; "
            "only symlinks to paths inside it can be bundled"
        )


def _tarinfo(rel: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.mode = 0o777
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
        info.size = st.st_size
    return info
