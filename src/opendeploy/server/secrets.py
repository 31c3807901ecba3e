"""Access-key secrets at rest: sealed with a key kept beside the data, never stored in clear.

SigV4 verification needs each access key's secret itself (not a hash of it), so the store keeps
secrets sealed with :class:`SecretBox` (Fernet: AES-128-CBC plus HMAC-SHA256) and opens them when
a request has to be checked. The box key lives in a file in the data directory, created with
mode 0600 on first start; replicas that share a database get the same key from the environment
through :meth:`SecretBox.from_key`.

Nothing here ever puts a key, a secret or a sealed value in an exception message or a repr.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from opendeploy.core.errors import OpenDeployError

__all__ = ["SecretBox", "SecretBoxError"]


class SecretBoxError(OpenDeployError):
    """The box key cannot be used, or a sealed secret cannot be opened with it."""


class SecretBox:
    """Seal and open short secrets with one symmetric key."""

    __slots__ = ("_fernet", "_source")

    def __init__(self, fernet: Fernet, *, source: str) -> None:
        self._fernet = fernet
        self._source = source

    def __repr__(self) -> str:
        return f"SecretBox(source={self._source!r})"

    @property
    def source(self) -> str:
        """Where the key came from, for messages (never the key itself)."""
        return self._source

    @staticmethod
    def generate_key() -> str:
        """A fresh key in the form :meth:`from_key` and key files use."""
        return Fernet.generate_key().decode("ascii")

    @classmethod
    def from_key(cls, key: str, *, source: str = "the configured key") -> SecretBox:
        """A box using ``key`` (url-safe base64 of 32 random bytes, as ``generate_key`` makes)."""
        try:
            fernet = Fernet(key.strip().encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise SecretBoxError(
                f"{source} is not a valid secret-box key: expected 32 bytes encoded as "
                "url-safe base64 (44 characters), as `SecretBox.generate_key()` makes"
            ) from None
        return cls(fernet, source=source)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The box whose key is in ``path``; the file is created (mode 0600) if missing.

        An existing key file that any group or other user may access is refused.
        """
        path = Path(path)
        source = f"key file {path}"
        if not path.exists():
            _create_key_file(path, cls.generate_key())
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SecretBoxError(f"refusing to use {source}: it is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise SecretBoxError(
                f"refusing to use {source}: its mode is {mode:04o}, so group or other users "
                f"can access it; make it private with `chmod 600 {path}` (and consider the "
                "key exposed: rotate it if others could have read it)"
            )
        key = path.read_text(encoding="ascii", errors="replace").strip()
        return cls.from_key(key, source=source)

    def seal(self, plaintext: str) -> str:
        """Encrypt and authenticate ``plaintext``; the result is ASCII, safe to store."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        """The plaintext that :meth:`seal` sealed, or ``SecretBoxError`` if that is impossible."""
        try:
            data = self._fernet.decrypt(sealed.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise SecretBoxError(
                f"cannot open a sealed secret with the key from {self._source}: the key is "
                "not the one it was sealed with, or the sealed value is corrupted"
            ) from None
        return data.decode("utf-8")


def _create_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path`` (mode 0600) atomically; if another process won, keep its key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, whatever the umask.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() fails if the name exists, so servers starting together agree on one key,
            # and nobody ever sees a half-written key file.
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:
            # A file system without hard links: exclusive create, then write.
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(key + "\n")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
