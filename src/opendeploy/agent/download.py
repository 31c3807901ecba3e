"""Resumable, sha256-checked download of a bundle from the server's store.

The same rules as ``opendeploy.bundles.fetch.fetch_http``, over the agent's own connection
pool (``opendeploy.agent.transport``) so that deploying does not load httpx into the agent:

* When ``dest`` already holds the start of the file (an earlier, interrupted download), only
  the rest is asked for (``Range: bytes=<have>-``); a server that answers with the whole file
  instead is fine too. A resumed file that does not match is fetched once more from the start.
* Connection errors, drops part-way and 5xx answers are retried with backoff (``attempts`` in
  all); what arrived stays in ``dest`` for the next try, or a later call.
* A final size or sha256 mismatch deletes ``dest``; any other HTTP status is an error at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from opendeploy.agent.transport import EMPTY_SHA256, ConnectionPool, Signer, TransportError
from opendeploy.bundles.integrity import fetch_checked
from opendeploy.core.errors import OpenDeployError

__all__ = ["DownloadError", "download"]

_CHUNK: Final = 1024 * 1024
_CONTENT_RANGE_RE: Final = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(OpenDeployError):
    """A bundle that could not be downloaded, or not with the expected content."""


class _Interrupted(Exception):
    """A try that may succeed when repeated (what arrived is kept)."""


def download(
    pool: ConnectionPool,
    signer: Signer,
    path: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    attempts: int = 4,
    backoff: Callable[[int], float] = lambda attempt: min(0.2 * 2**attempt, 2.0),
    abort: threading.Event | None = None,
) -> None:
    """Bring ``dest`` to the content of ``GET path`` and check it against ``sha256``/``size``."""
    fetch = _Fetch(pool, signer, path, dest, size, attempts, backoff, abort or threading.Event())
    fetch_checked(fetch.run, dest, sha256=sha256, size=size, shown=path, error=DownloadError)


class _Fetch:
    def __init__(
        self,
        pool: ConnectionPool,
        signer: Signer,
        path: str,
        dest: Path,
        size: int | None,
        attempts: int,
        backoff: Callable[[int], float],
        abort: threading.Event,
    ) -> None:
        self.pool = pool
        self.signer = signer
        self.path = path
        self.dest = dest
        self.size = size
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.abort = abort

    def run(self) -> tuple[Any, int]:
        """(sha256 object, length) of ``dest`` once it holds the whole file."""
        problem = ""
        for attempt in range(self.attempts):
            if attempt and self.abort.wait(self.backoff(attempt - 1)):
                raise DownloadError(f"download of {self.path} stopped: the agent is stopping")
            try:
                return self.once()
            except _Interrupted as exc:
                problem = str(exc)
        have = self.dest.stat().st_size if self.dest.exists() else 0
        raise DownloadError(
            f"download of {self.path} to {self.dest} failed after {self.attempts} attempts "
            f"({problem}); {have} bytes are kept to resume"
        )

    def once(self) -> tuple[Any, int]:
        dest, size = self.dest, self.size
        have = dest.stat().st_size if dest.exists() else 0
        if size is not None and have > size:
            dest.unlink()
            have = 0
        if size is not None and have == size and have > 0:
            return _hash_file(dest)
        headers = {
            "Host": self.pool.host,
            "Accept-Encoding": "identity",
            "X-Amz-Content-Sha256": EMPTY_SHA256,
        }
        if have:
            headers["Range"] = f"bytes={have}-"
        self.signer.sign("GET", self.path, headers, EMPTY_SHA256)
        try:
            with self.pool.stream("GET", self.path, headers=headers) as response:
                return self.receive(response, have)
        except TransportError as exc:
            raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc

    def receive(self, response: Any, have: int) -> tuple[Any, int]:
        status = response.status
        if status == 416 and have:
            _, total = _content_range(response.getheader("content-range"))
            response.read()
            if total == have:
                return _hash_file(self.dest)  # the partial file was in fact complete
            self.dest.unlink()
            raise _Interrupted(f"the server refused to resume at byte {have}")
        if status == 206 and have:
            first, _ = _content_range(response.getheader("content-range"))
            if first != have:
                self.dest.unlink()
                raise _Interrupted(f"asked to resume at byte {have}, the server sent from {first}")
            digest, _ = _hash_file(self.dest)
            return self.append(response, "ab", digest, have)
        if status == 200:
            return self.append(response, "wb", hashlib.sha256(), 0)
        response.read()
        if status >= 500:
            raise _Interrupted(f"HTTP {status} {response.reason}")
        raise DownloadError(f"download of {self.path} failed: HTTP {status} {response.reason}")

    def append(self, response: Any, mode: str, digest: Any, have: int) -> tuple[Any, int]:
        """Write the body to ``dest`` as it arrives: a drop part-way loses nothing."""
        total = have
        try:
            out = self.dest.open(mode)
        except OSError as exc:
            raise DownloadError(f"cannot write {self.dest}: {exc}") from exc
        with out:
            try:
                while chunk := response.read1(_CHUNK):
                    total += len(chunk)
                    if self.size is not None and total > self.size:
                        out.close()
                        self.dest.unlink()
                        raise DownloadError(
                            f"download of {self.path} to {self.dest} is longer than the "
                            f"expected {self.size} bytes; the file was deleted"
                        )
                    _write(out, chunk, self.dest)
                    digest.update(chunk)
                if response.length:  # read1 ends quietly when the server hangs up early
                    raise _Interrupted(f"the connection closed {response.length} bytes early")
            finally:
                if not out.closed:
                    out.flush()
                    os.fsync(out.fileno())
        return digest, total


def _write(out: IO[bytes], chunk: bytes, dest: Path) -> None:
    """Write ``chunk``; a local failure (disk full) is an error, not a network drop to retry."""
    try:
        out.write(chunk)
    except OSError as exc:
        raise DownloadError(f"cannot write {dest}: {exc}") from exc


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header; None where absent or ``*``."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _hash_file(path: Path) -> tuple[Any, int]:
    digest = hashlib.sha256()
    total = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            total += len(chunk)
    return digest, total
