"""Resumable downloads checked against a sha256: the rule every bundle download follows.

Kept free of HTTP libraries, so the agent (its own transport) and ``bundles.fetch`` (httpx)
share it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_sha256", "fetch_checked"]

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


def check_sha256(sha256: str) -> str:
    """``sha256`` in lower case; ValueError unless it is 64 hexadecimal digits."""
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256 {sha256!r} is not 64 hexadecimal digits")
    return sha256.lower()


def fetch_checked(
    fetch: Callable[[], tuple[Any, int]],
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    shown: str,
    error: Callable[[str], Exception],
) -> None:
    """Run ``fetch`` (it resumes a partial ``dest`` and returns the hash object of the whole
    file and its size), start over once when a resumed file does not match, then check size
    and sha256. A mismatch deletes ``dest`` and raises ``error(message)``."""
    expected = check_sha256(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed = dest.exists() and dest.stat().st_size > 0
    digest, total = fetch()
    if digest.hexdigest() != expected and resumed:
        # The partial file was not the start of this content: start over once.
        dest.unlink(missing_ok=True)
        digest, total = fetch()
    actual = digest.hexdigest()
    if size is not None and total != size:
        dest.unlink(missing_ok=True)
        raise error(
            f"download of {shown} to {dest} has {total} bytes, expected {size} "
            f"(sha256 expected {expected}, actual {actual}); the file was deleted"
        )
    if actual != expected:
        dest.unlink(missing_ok=True)
        raise error(
            f"download of {shown} to {dest} does not match: sha256 expected {expected}, "
            f"actual {actual}; the file was deleted"
        )
