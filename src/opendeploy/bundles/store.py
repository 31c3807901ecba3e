"""The server's bundle store: content-addressed by sha256, so identical content is stored once.

Two implementations of ``BundleStore``:

``LocalBundleStore(root)``
    ``<root>/<sha[:2]>/<sha>.tgz``. A put streams into a temporary file in ``root`` (same file
    system), hashing as it goes, fsyncs it and renames it into place atomically; a reader never
    sees a half-written bundle.
``S3BundleStore(bucket, prefix, client)``
    ``<prefix>/bundles/<sha>.tgz`` in any S3-compatible bucket. A put spools the stream to a
    temporary file while hashing (the key depends on the hash), then uploads it with boto3's
    managed, multipart-capable ``upload_fileobj`` unless the object is already there.

``open_store(url, data_dir=..., s3_endpoint_url=...)`` picks one from the ``--bundle-store``
setting: ``""`` is the local store in ``<data_dir>/bundles``, ``s3://bucket/prefix`` the S3 one.

In the public API a pushed bundle is an ordinary S3 revision location. The local store has no real
bucket, so its bundles are presented in the bucket ``LOCAL_BUCKET`` with key
``bundles/<sha256>.tgz`` and the sha256 as ETag; the S3 store's are the real bucket and key with
the real (unquoted) S3 ETag. ``revision_location`` builds that mapping and
``sha256_from_location`` recognises it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from opendeploy.bundles.archive import BundleError, BundleInfo

__all__ = [
    "LOCAL_BUCKET",
    "BundleIntegrityError",
    "BundleNotFound",
    "BundleStore",
    "LocalBundleStore",
    "S3BundleStore",
    "open_store",
    "revision_location",
    "s3_client",
    "sha256_from_location",
]

LOCAL_BUCKET = "opendeploy-local"
BUNDLE_TYPE = "tgz"
_CHUNK = 1024 * 1024
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_KEY_RE = re.compile(r"(?:.*/)?bundles/([0-9a-f]{64})\.tgz")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


class BundleNotFound(BundleError):
    """No bundle with that sha256 in the store (or the name is not a sha256 at all)."""


class BundleIntegrityError(BundleError):
    """A put whose content does not hash to the sha256 the caller announced."""


@runtime_checkable
class BundleStore(Protocol):
    """Where the server keeps pushed bundles."""

    def put(self, stream: IO[bytes], *, sha256: str | None = None) -> BundleInfo:
        """Store the bytes of ``stream``; with ``sha256`` given, refuse content that differs."""
        ...

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        """A readable binary stream of the bundle from byte ``offset`` (0 <= offset <= size)."""
        ...

    def size(self, sha256: str) -> int:
        """The bundle's size in bytes."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the bundle is stored."""
        ...

    def location(self, sha256: str) -> tuple[str, str]:
        """``(bucket, key)`` under which the public API shows the bundle."""
        ...

    def etag(self, sha256: str) -> str:
        """The ETag (unquoted) the public API shows for the bundle."""
        ...


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise BundleNotFound(f"no bundle {sha256!r}: a bundle name is a lowercase hex sha256")
    return sha256


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")


def _copy_hashing(stream: IO[bytes], out: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _verify(expected: str | None, actual: str) -> None:
    if expected is not None and expected.lower() != actual:
        raise BundleIntegrityError(
            f"bundle content does not match its sha256: expected {expected.lower()}, got {actual}"
        )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalBundleStore:
    """Bundles as files under ``root``: ``<root>/<sha[:2]>/<sha>.tgz``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBundleStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        sha256 = _check_sha256(sha256)
        return self.root / sha256[:2] / f"{sha256}.tgz"

    def put(self, stream: IO[bytes], *, sha256: str | None = None) -> BundleInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual, size = _copy_hashing(stream, out)
                out.flush()
                os.fsync(out.fileno())
            _verify(sha256, actual)
            final = self.path(actual)
            if final.is_file() and final.stat().st_size == size:
                tmp.unlink()  # identical content is already stored
            else:
                created = not final.parent.exists()
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
                if created:
                    _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BundleInfo(sha256=actual, size=size)

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        _check_offset(offset)
        path = self.path(sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise BundleNotFound(f"no bundle {sha256} in {self.root}") from None
        if offset:
            total = os.fstat(handle.fileno()).st_size
            if offset > total:
                handle.close()
                raise ValueError(
                    f"offset {offset} is beyond the end of bundle {sha256} ({total} bytes)"
                )
            handle.seek(offset)
        return handle

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise BundleNotFound(f"no bundle {sha256} in {self.root}") from None

    def exists(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except BundleNotFound:
            return False

    def location(self, sha256: str) -> tuple[str, str]:
        return LOCAL_BUCKET, f"bundles/{_check_sha256(sha256)}.tgz"

    def etag(self, sha256: str) -> str:
        if not self.exists(sha256):
            raise BundleNotFound(f"no bundle {sha256} in {self.root}")
        return sha256


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping) and error.get("Code"):
            return str(error["Code"])
        meta = response.get("ResponseMetadata")
        if isinstance(meta, Mapping) and meta.get("HTTPStatusCode"):
            return str(meta["HTTPStatusCode"])
    return ""


class S3BundleStore:
    """Bundles as objects ``<prefix>/bundles/<sha>.tgz`` in an S3-compatible bucket.

    ``client`` is a boto3 S3 client (see ``s3_client``). ``spool_dir`` is where a put keeps the
    temporary copy it hashes before uploading (the system temp directory by default).
    """

    def __init__(
        self, bucket: str, prefix: str, client: Any, *, spool_dir: Path | None = None
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bundle store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.spool_dir = spool_dir

    def __repr__(self) -> str:
        return f"S3BundleStore({self.bucket!r}, {self.prefix!r})"

    def key(self, sha256: str) -> str:
        name = f"bundles/{_check_sha256(sha256)}.tgz"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha256)}"

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND:
                return None
            raise BundleError(f"cannot read {self._where(sha256)}: {exc}") from exc
        except BotoCoreError as exc:
            raise BundleError(f"cannot read {self._where(sha256)}: {exc}") from exc
        return cast(dict[str, Any], head)

    def put(self, stream: IO[bytes], *, sha256: str | None = None) -> BundleInfo:
        with tempfile.TemporaryFile(dir=self.spool_dir, prefix="opendeploy-bundle-") as spool:
            actual, size = _copy_hashing(stream, spool)
            _verify(sha256, actual)
            head = self._head(actual)
            if head is None or int(head.get("ContentLength", -1)) != size:
                spool.seek(0)
                try:
                    self.client.upload_fileobj(
                        spool,
                        self.bucket,
                        self.key(actual),
                        ExtraArgs={
                            "ContentType": "application/gzip",
                            "Metadata": {"sha256": actual},
                        },
                    )
                except Exception as exc:
                    raise BundleError(f"cannot upload {self._where(actual)}: {exc}") from exc
        return BundleInfo(sha256=actual, size=size)

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        _check_offset(offset)
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(sha256)}
        if offset:
            request["Range"] = f"bytes={offset}-"
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND:
                raise BundleNotFound(f"no bundle {sha256} at {self._where(sha256)}") from None
            if code in ("InvalidRange", "416"):
                total = self.size(sha256)
                if offset == total:
                    return io.BytesIO(b"")
                raise ValueError(
                    f"offset {offset} is beyond the end of bundle {sha256} ({total} bytes)"
                ) from None
            raise BundleError(f"cannot read {self._where(sha256)}: {exc}") from exc
        except BotoCoreError as exc:
            raise BundleError(f"cannot read {self._where(sha256)}: {exc}") from exc
        body = cast(BinaryIO, response["Body"])
        if offset and not response.get("ContentRange"):
            # The server ignored the Range header and sent everything: skip to the offset.
            remaining = offset
            while remaining:
                skipped = body.read(min(remaining, _CHUNK))
                if not skipped:
                    break
                remaining -= len(skipped)
        return body

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise BundleNotFound(f"no bundle {sha256} at {self._where(sha256)}")
        return int(head["ContentLength"])

    def exists(self, sha256: str) -> bool:
        try:
            return self._head(sha256) is not None
        except BundleNotFound:
            return False

    def location(self, sha256: str) -> tuple[str, str]:
        return self.bucket, self.key(sha256)

    def etag(self, sha256: str) -> str:
        head = self._head(sha256)
        if head is None:
            raise BundleNotFound(f"no bundle {sha256} at {self._where(sha256)}")
        return str(head["ETag"]).strip('"')


def revision_location(store: BundleStore, info: BundleInfo) -> dict[str, str]:
    """The ``s3Location`` under which the public API shows a stored bundle."""
    bucket, key = store.location(info.sha256)
    return {
        "bucket": bucket,
        "key": key,
        "bundleType": info.bundle_type,
        "eTag": store.etag(info.sha256),
    }


def sha256_from_location(store: BundleStore, location: Mapping[str, Any]) -> str | None:
    """The sha256 of the bundle an S3 location names in this store, else None.

    ``location`` is an ``s3Location`` mapping or a whole ``RevisionLocation`` holding one. Only
    the bucket and key are compared (whether the bundle is really stored is ``store.exists``'s
    business; ``bundleType``, ``version`` and ``eTag`` are the caller's to check).
    """
    if "s3Location" in location or "revisionType" in location:
        if location.get("revisionType", "S3") != "S3":
            return None
        inner = location.get("s3Location")
        if not isinstance(inner, Mapping):
            return None
        location = inner
    bucket = location.get("bucket")
    key = location.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        return None
    match = _KEY_RE.fullmatch(key)
    if match is None:
        return None
    sha256 = match.group(1)
    return sha256 if store.location(sha256) == (bucket, key) else None


def s3_client(endpoint_url: str | None = None, **client_args: Any) -> Any:
    """A boto3 S3 client; with ``endpoint_url`` one set up for S3-compatible servers.

    Credentials and region come from boto3's usual chain unless given in ``client_args``. For a
    custom endpoint, path-style addressing is used (no bucket DNS names needed) and checksums are
    sent only where S3 requires them (several S3-compatible servers reject the newer defaults).
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    options: dict[str, Any] = {"signature_version": "s3v4"}
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    try:
        config = Config(**options)
    except TypeError:  # botocore before 1.36 knows no checksum settings
        options.pop("request_checksum_calculation", None)
        options.pop("response_checksum_validation", None)
        config = Config(**options)
    config = config.merge(client_args.pop("config")) if "config" in client_args else config
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or None, config=config, **client_args
    )


def open_store(url: str, *, data_dir: Path, s3_endpoint_url: str | None = None) -> BundleStore:
    """The store a ``--bundle-store`` value names: ``""`` or ``s3://bucket[/prefix]``."""
    if not url:
        return LocalBundleStore(Path(data_dir) / "bundles")
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(
            f"bundle store {url!r} is not understood: use an empty value for the local store "
            "in the data directory, or s3://bucket/prefix"
        )
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(
            f"bundle store {url!r} is not understood: an S3 store is s3://bucket/prefix, "
            "without credentials, port, query or fragment (set the endpoint separately)"
        )
    return S3BundleStore(parts.netloc, parts.path, s3_client(s3_endpoint_url))
