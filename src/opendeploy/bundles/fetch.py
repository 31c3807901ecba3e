"""Bringing a revision onto the host: the agent's half of the bundles package.

``fetch_s3``
    S3 ``GetObject`` (optional ``VersionId``) streamed to a file. A given ETag is compared with
    the object's before the body is read, so a changed object costs no download.
``fetch_git``
    One exact commit of ``<base_url>/<owner>/<name>`` (tried with and without ``.git``) checked
    out into a directory, without the ``.git`` directory. Runs the ``git`` command line with
    argument lists (never a shell); a full 40-digit SHA is fetched shallowly, a shorter one needs
    the branches and tags.
``fetch_http``
    A download checked against a sha256: resumes a partial file with ``Range``, retries a few
    times when the connection drops, and deletes the file when the hash does not match.

This module must stay importable by the agent: nothing from the server or the database layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from opendeploy.bundles.archive import BundleError
from opendeploy.bundles.integrity import check_sha256, fetch_checked

__all__ = [
    "ChecksumMismatch",
    "FetchError",
    "fetch_git",
    "fetch_http",
    "fetch_s3",
]

_CHUNK = 1024 * 1024
_REPOSITORY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{7,40}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class FetchError(BundleError):
    """A revision that could not be fetched; the message names what and from where."""


class ChecksumMismatch(FetchError):
    """Fetched content whose ETag, size or sha256 is not the one expected."""


# --------------------------------------------------------------------------------------------
# S3


def _error_code(exc: Any) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping) and error.get("Code"):
            return str(error["Code"])
        meta = response.get("ResponseMetadata")
        if isinstance(meta, Mapping) and meta.get("HTTPStatusCode"):
            return str(meta["HTTPStatusCode"])
    return ""


def _unquote_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def fetch_s3(
    client: Any,
    bucket: str,
    key: str,
    *,
    version: str | None,
    etag: str | None,
    dest: Path,
    sha256: str | None = None,
) -> None:
    """Download ``s3://bucket/key`` (``version`` if given) to ``dest``.

    ``client`` is a boto3 S3 client. With ``etag`` given, the object's ETag must match (quotes
    and case ignored) or ``ChecksumMismatch`` is raised before anything is written. With
    ``sha256`` given (a bundle pushed to the server's S3 store has one recorded), the bytes must
    hash to it too. ``dest`` appears only once complete and checked (the body goes to a temporary
    file beside it first). Every failure is a ``FetchError`` naming the bucket and key.
    """
    if sha256 is not None:
        check_sha256(sha256)
    where = f"s3://{bucket}/{key}" + (f" (version {version})" if version else "")
    request: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version:
        request["VersionId"] = version
    try:
        response = client.get_object(**request)
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FetchError(f"cannot fetch {where}: no such object") from exc
        if code == "NoSuchBucket":
            raise FetchError(f"cannot fetch {where}: bucket {bucket} does not exist") from exc
        if code == "NoSuchVersion" or (version and code == "InvalidArgument"):
            raise FetchError(f"cannot fetch {where}: no such version") from exc
        raise FetchError(f"cannot fetch {where}: {exc}") from exc
    except BotoCoreError as exc:
        raise FetchError(f"cannot fetch {where}: {exc}") from exc

    body = response["Body"]
    try:
        actual = _unquote_etag(str(response.get("ETag", "")))
        if etag and _unquote_etag(etag) != actual:
            raise ChecksumMismatch(
                f"{where} has ETag {actual or '(none)'} but the revision expects "
                f"{_unquote_etag(etag)}: the object changed after the revision was registered"
            )
        try:
            _write_atomically(body, dest, sha256, where)
        except (BotoCoreError, OSError) as exc:
            raise FetchError(f"cannot fetch {where} to {dest}: {exc}") from exc
    finally:
        body.close()


def _write_atomically(body: IO[bytes], dest: Path, sha256: str | None, where: str) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := body.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ChecksumMismatch(
                f"{where} does not match: sha256 expected {sha256.lower()}, "
                f"actual {digest.hexdigest()}"
            )
        os.replace(name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


# --------------------------------------------------------------------------------------------
# git


def _redact(url: str) -> str:
    """``url`` without credentials and query (presigned URLs, tokens in userinfo)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _run_git(argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run git without prompts and without any hook (a user's core.hooksPath or templates)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        [argv[0], "-c", f"core.hooksPath={os.devnull}", *argv[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=timeout,
        check=False,
    )


def fetch_git(
    base_url: str,
    repository: str,
    commit: str,
    dest_dir: Path,
    *,
    timeout: float = 600.0,
) -> None:
    """Check out exactly ``commit`` of ``<base_url>/<repository>`` into ``dest_dir``.

    ``base_url`` is ``https://github.com``, another git host, a ``file://`` URL or a local
    directory; ``repository`` is ``owner/name`` and ``commit`` a 7 to 40 digit hex SHA.
    ``dest_dir`` must be absent or empty; afterwards it holds the commit's files and no ``.git``.
    Raises ``ValueError`` for a malformed repository or commit and ``FetchError`` (naming the
    repository and commit) when git cannot produce the commit. ``timeout`` bounds each git run.
    """
    if not isinstance(repository, str) or not _REPOSITORY_RE.fullmatch(repository):
        raise ValueError(
            f"repository {repository!r} is not owner/name (letters, digits, '.', '_', '-')"
        )
    if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
        raise ValueError(f"commit {commit!r} is not a 7 to 40 digit hexadecimal SHA")
    commit = commit.lower()
    what = f"commit {commit} of {repository}"
    git = shutil.which("git")
    if git is None:
        raise FetchError(f"cannot fetch {what}: the git command is not installed")
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise FetchError(f"cannot fetch {what} into {dest_dir}: it exists and is not empty")

    base = base_url.rstrip("/")
    urls = [f"{base}/{repository}"]
    urls.append(urls[0][: -len(".git")] if urls[0].endswith(".git") else urls[0] + ".git")

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".git-fetch-", dir=dest_dir.parent))
    try:
        gitdir = str(work / "repo.git")
        _git_or_fail([git, "init", "--quiet", "--bare", gitdir], what, timeout)
        problems: list[str] = []
        sha = None
        for url in urls:
            sha = _fetch_commit(git, gitdir, url, commit, problems, timeout)
            if sha is not None:
                break
        if sha is None:
            raise FetchError(f"cannot fetch {what} from {_redact(base)}: " + "; ".join(problems))
        created = not dest_dir.exists()
        dest_dir.mkdir(parents=True, exist_ok=True)
        checkout = [
            git,
            "-c",
            "advice.detachedHead=false",
            "-c",
            "core.autocrlf=false",
            "--git-dir",
            gitdir,
            "--work-tree",
            str(dest_dir),
            "checkout",
            "--quiet",
            "--detach",
            "--force",
            sha,
        ]
        try:
            _git_or_fail(checkout, what, timeout)
        except BaseException:
            if created:
                shutil.rmtree(dest_dir, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _git_or_fail(argv: list[str], what: str, timeout: float) -> str:
    try:
        result = _run_git(argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"cannot fetch {what}: git {argv[1]} took over {timeout:g} s") from exc
    except OSError as exc:
        raise FetchError(f"cannot fetch {what}: cannot run git: {exc}") from exc
    if result.returncode != 0:
        raise FetchError(f"cannot fetch {what}: git failed: {_tail(result.stderr)}")
    return result.stdout


def _tail(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _fetch_commit(
    git: str, gitdir: str, url: str, commit: str, problems: list[str], timeout: float
) -> str | None:
    """Fetch ``commit`` from ``url`` into ``gitdir``; its full SHA, or None (problem noted)."""
    shown = _redact(url)

    def run(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return _run_git([git, "--git-dir", gitdir, *args], timeout=timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"{shown}: git {args[0]} took over {timeout:g} s")
            return None

    def resolve() -> str | None:
        result = run("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
        if result is None or result.returncode != 0:
            return None
        sha = result.stdout.strip()
        return sha if sha.startswith(commit) else None

    if len(commit) == 40:
        shallow = run("fetch", "--quiet", "--no-tags", "--depth", "1", "--", url, commit)
        if shallow is not None and shallow.returncode == 0:
            sha = resolve()
            if sha is not None:
                return sha
    full = run(
        "fetch",
        "--quiet",
        "--no-tags",
        "--",
        url,
        "+refs/heads/*:refs/remotes/origin/*",
        "+refs/tags/*:refs/tags/*",
    )
    if full is None:
        return None
    if full.returncode != 0:
        problems.append(f"{shown}: {_tail(full.stderr.replace(url, shown))}")
        return None
    sha = resolve()
    if sha is None:
        problems.append(f"{shown}: no commit {commit} in its branches and tags")
    return sha


# --------------------------------------------------------------------------------------------
# HTTP


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Interrupted(Exception):
    """A download that stopped part-way; what arrived is kept for the next attempt."""


def _hash_file(path: Path) -> tuple[_Digest, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` of a Content-Range header; None where absent or ``*``."""
    if not header:
        return None, None
    match = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def fetch_http(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    auth: Callable[[httpx.Request], httpx.Request] | None = None,
    attempts: int = 3,
) -> None:
    """Download ``url`` to ``dest`` and check it against ``sha256`` (and ``size`` if known).

    When ``dest`` already holds the start of the file (an earlier, interrupted call), only the
    rest is asked for (``Range: bytes=<have>-``); a server that answers with the whole file
    instead is fine too. A connection that drops part-way is resumed the same way, up to
    ``attempts`` tries in all; what arrived stays in ``dest`` for a later call. If a resumed
    download does not match, it is fetched once more from the start. A final mismatch deletes
    ``dest`` and raises ``ChecksumMismatch`` naming the expected and actual sha256; an HTTP error
    status raises ``FetchError``. ``auth`` signs each request (httpx function auth).
    """
    if size is not None and size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    dest = Path(dest)
    shown = _redact(url)
    fetch_checked(
        lambda: _download(client, url, dest, size, auth, attempts, shown),
        dest,
        sha256=sha256,
        size=size,
        shown=shown,
        error=ChecksumMismatch,
    )


def _download(
    client: httpx.Client,
    url: str,
    dest: Path,
    size: int | None,
    auth: Callable[[httpx.Request], httpx.Request] | None,
    attempts: int,
    shown: str,
) -> tuple[_Digest, int]:
    """Bring ``dest`` to the full length of ``url``; (sha256 object, size) of the result."""
    problem = ""
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(min(0.1 * 2**attempt, 2.0))
        try:
            return _download_once(client, url, dest, size, auth, shown)
        except _Interrupted as exc:
            problem = str(exc)
    have = dest.stat().st_size if dest.exists() else 0
    raise FetchError(
        f"download of {shown} to {dest} failed after {max(1, attempts)} attempts ({problem}); "
        f"{have} bytes are kept to resume"
    )


def _download_once(
    client: httpx.Client,
    url: str,
    dest: Path,
    size: int | None,
    auth: Callable[[httpx.Request], httpx.Request] | None,
    shown: str,
) -> tuple[_Digest, int]:
    have = dest.stat().st_size if dest.exists() else 0
    if size is not None and have > size:
        dest.unlink()
        have = 0
    if size is not None and have == size and have > 0:
        return _hash_file(dest)

    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with client.stream(
            "GET",
            url,
            headers=headers,
            auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
        ) as response:
            if response.status_code == 416 and have:
                _, total = _content_range(response.headers.get("content-range"))
                if total == have:
                    return _hash_file(dest)  # the partial file was in fact complete
                dest.unlink()
                raise _Interrupted(f"the server refused to resume at byte {have}")
            if response.status_code == 206 and have:
                first, _ = _content_range(response.headers.get("content-range"))
                if first != have:
                    dest.unlink()
                    raise _Interrupted(
                        f"asked to resume at byte {have}, the server sent from byte {first}"
                    )
                digest, _ = _hash_file(dest)
                mode = "ab"
            elif response.status_code == 200:
                digest, have, mode = hashlib.sha256(), 0, "wb"
            else:
                raise FetchError(
                    f"download of {shown} failed: HTTP {response.status_code} "
                    f"{response.reason_phrase}"
                )
            return _append(response, dest, mode, digest, have, size, shown)
    except httpx.TransportError as exc:
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc


def _append(
    response: httpx.Response,
    dest: Path,
    mode: str,
    digest: _Digest,
    have: int,
    size: int | None,
    shown: str,
) -> tuple[_Digest, int]:
    total = have
    with dest.open(mode) as out:
        try:
            for chunk in response.iter_raw():  # as it arrives: a drop loses nothing
                total += len(chunk)
                if size is not None and total > size:
                    out.close()
                    dest.unlink()
                    raise ChecksumMismatch(
                        f"download of {shown} to {dest} is longer than the expected {size} "
                        "bytes; the file was deleted"
                    )
                out.write(chunk)
                digest.update(chunk)
        finally:
            if not out.closed:
                out.flush()
                os.fsync(out.fileno())
    return digest, total
