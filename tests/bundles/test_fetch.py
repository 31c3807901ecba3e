"""The agent's fetchers: S3 (against SeaweedFS), git (local repositories) and HTTP (a local
server with Range support, plus httpx.MockTransport for the odd answers)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_store

from opendeploy.bundles.fetch import ChecksumMismatch, FetchError, fetch_git, fetch_http, fetch_s3
from opendeploy.bundles.store import S3BundleStore, revision_location

SeaweedFS = test_store.SeaweedFS
seaweedfs = test_store.seaweedfs  # the same session-wide server as test_store.py


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------
# S3


@pytest.fixture
def s3(seaweedfs: SeaweedFS) -> tuple[Any, str]:
    return seaweedfs.client(), seaweedfs.bucket


def test_fetch_s3_with_and_without_etag(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    data = os.urandom(300_000)
    etag = client.put_object(Bucket=bucket, Key="fetch/plain.tgz", Body=data)["ETag"]
    for given in (None, etag, etag.strip('"'), etag.strip('"').upper()):
        dest = tmp_path / "bundle.tar"
        fetch_s3(client, bucket, "fetch/plain.tgz", version=None, etag=given, dest=dest)
        assert dest.read_bytes() == data
        dest.unlink()
    assert leftovers(tmp_path) == []


def test_fetch_s3_etag_mismatch_names_the_object_and_writes_nothing(
    s3: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="fetch/changed.tgz", Body=b"new content")
    stale = hashlib.md5(b"old content").hexdigest()  # what S3 uses as ETag
    with pytest.raises(ChecksumMismatch) as caught:
        fetch_s3(
            client,
            bucket,
            "fetch/changed.tgz",
            version=None,
            etag=stale,
            dest=tmp_path / "bundle.tar",
        )
    message = str(caught.value)
    assert f"s3://{bucket}/fetch/changed.tgz" in message
    assert stale in message
    assert leftovers(tmp_path) == []


def test_fetch_s3_checks_a_given_sha256(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    data = b"pushed bundle bytes"
    client.put_object(Bucket=bucket, Key="fetch/hashed.tgz", Body=data)
    dest = tmp_path / "bundle.tar"
    fetch_s3(
        client, bucket, "fetch/hashed.tgz", version=None, etag=None, dest=dest, sha256=sha(data)
    )
    assert dest.read_bytes() == data
    dest.unlink()
    wrong = sha(b"other bytes")
    with pytest.raises(ChecksumMismatch) as caught:
        fetch_s3(
            client, bucket, "fetch/hashed.tgz", version=None, etag=None, dest=dest, sha256=wrong
        )
    assert f"s3://{bucket}/fetch/hashed.tgz" in str(caught.value)
    assert wrong in str(caught.value)
    assert sha(data) in str(caught.value)
    assert leftovers(tmp_path) == []


def test_fetch_s3_missing_object_or_bucket(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    with pytest.raises(FetchError, match=rf"s3://{bucket}/fetch/nothing-here\.tgz.*no such"):
        fetch_s3(
            client, bucket, "fetch/nothing-here.tgz", version=None, etag=None, dest=tmp_path / "b"
        )
    with pytest.raises(FetchError, match=r"s3://no-such-bucket-od/k\.tgz"):
        fetch_s3(client, "no-such-bucket-od", "k.tgz", version=None, etag=None, dest=tmp_path / "b")
    assert leftovers(tmp_path) == []


def test_fetch_s3_replaces_an_existing_file(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="fetch/replace.tgz", Body=b"fresh")
    dest = tmp_path / "bundle.tar"
    dest.write_bytes(b"an older, longer bundle left from before")
    fetch_s3(client, bucket, "fetch/replace.tgz", version=None, etag=None, dest=dest)
    assert dest.read_bytes() == b"fresh"


def test_fetch_s3_a_given_version(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    client = seaweedfs.client()
    bucket = seaweedfs.new_bucket()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = client.put_object(Bucket=bucket, Key="app.tgz", Body=b"version one")
    second = client.put_object(Bucket=bucket, Key="app.tgz", Body=b"version two")
    assert first["VersionId"] != second["VersionId"]
    dest = tmp_path / "bundle.tar"
    fetch_s3(client, bucket, "app.tgz", version=first["VersionId"], etag=first["ETag"], dest=dest)
    assert dest.read_bytes() == b"version one"
    fetch_s3(client, bucket, "app.tgz", version=None, etag=None, dest=dest)
    assert dest.read_bytes() == b"version two"
    with pytest.raises(ChecksumMismatch, match="version"):
        fetch_s3(
            client, bucket, "app.tgz", version=second["VersionId"], etag=first["ETag"], dest=dest
        )


def test_a_pushed_bundle_is_fetched_with_its_revision_location(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    store = S3BundleStore(seaweedfs.bucket, "pushed", client, spool_dir=tmp_path)
    data = os.urandom(9 * 1024 * 1024)  # multipart: the ETag is not an MD5
    location = revision_location(store, store.put(io.BytesIO(data)))
    dest = tmp_path / "out" / "bundle.tar"
    fetch_s3(
        client,
        location["bucket"],
        location["key"],
        version=None,
        etag=location["eTag"],
        dest=dest,
    )
    assert sha(dest.read_bytes()) == sha(data)


# --------------------------------------------------------------------------------------------
# git


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Repo:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = base / "acme" / "webapp"
        self.path.mkdir(parents=True)
        git("init", "--quiet", "--initial-branch=main", cwd=self.path)
        (self.path / "appspec.yml").write_text("version: 0.0\nos: linux\n")
        scripts = self.path / "scripts"
        scripts.mkdir()
        (scripts / "start.sh").write_text("#!/bin/sh\necho one\n")
        (scripts / "start.sh").chmod(0o755)
        os.symlink("scripts/start.sh", self.path / "start-link")
        git("add", "-A", cwd=self.path)
        git("commit", "--quiet", "-m", "one", cwd=self.path)
        self.first = git("rev-parse", "HEAD", cwd=self.path)
        (scripts / "start.sh").write_text("#!/bin/sh\necho two\n")
        (self.path / "new.txt").write_text("added in two\n")
        git("add", "-A", cwd=self.path)
        git("commit", "--quiet", "-m", "two", cwd=self.path)
        self.second = git("rev-parse", "HEAD", cwd=self.path)
        # a third commit on a side branch only
        git("checkout", "--quiet", "-b", "side", cwd=self.path)
        (self.path / "side.txt").write_text("side\n")
        git("add", "-A", cwd=self.path)
        git("commit", "--quiet", "-m", "side", cwd=self.path)
        self.side = git("rev-parse", "HEAD", cwd=self.path)
        git("checkout", "--quiet", "main", cwd=self.path)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("git"))


def test_fetch_git_an_older_commit_by_full_sha(repo: Repo, tmp_path: Path) -> None:
    dest = tmp_path / "archive"
    fetch_git(repo.base.as_uri(), "acme/webapp", repo.first, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["appspec.yml", "scripts", "start-link"]
    assert (dest / "scripts" / "start.sh").read_text() == "#!/bin/sh\necho one\n"
    assert os.access(dest / "scripts" / "start.sh", os.X_OK)
    assert os.readlink(dest / "start-link") == "scripts/start.sh"
    assert not (dest / ".git").exists()
    assert leftovers(tmp_path) == ["archive"], "the temporary git directory must be gone"


def test_fetch_git_short_sha_from_a_plain_path(repo: Repo, tmp_path: Path) -> None:
    dest = tmp_path / "archive"
    fetch_git(str(repo.base), "acme/webapp", repo.second[:7].upper(), dest)
    assert (dest / "new.txt").read_text() == "added in two\n"
    assert (dest / "scripts" / "start.sh").read_text() == "#!/bin/sh\necho two\n"
    assert not (dest / "side.txt").exists()


def test_fetch_git_a_commit_on_another_branch(repo: Repo, tmp_path: Path) -> None:
    dest = tmp_path / "archive"
    fetch_git(repo.base.as_uri() + "/", "acme/webapp", repo.side, dest)
    assert (dest / "side.txt").read_text() == "side\n"


def test_fetch_git_tries_the_dot_git_name(repo: Repo, tmp_path: Path) -> None:
    hosted = tmp_path / "host"
    (hosted / "acme").mkdir(parents=True)
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(repo.path), str(hosted / "acme" / "webapp.git")],
        check=True,
    )
    dest = tmp_path / "archive"
    fetch_git(hosted.as_uri(), "acme/webapp", repo.first, dest)
    assert (dest / "appspec.yml").is_file()


def test_fetch_git_unknown_commit_names_repository_and_commit(repo: Repo, tmp_path: Path) -> None:
    unknown = "0123456789abcdef0123456789abcdef01234567"
    dest = tmp_path / "archive"
    with pytest.raises(FetchError) as caught:
        fetch_git(repo.base.as_uri(), "acme/webapp", unknown, dest)
    assert "acme/webapp" in str(caught.value)
    assert unknown in str(caught.value)
    assert leftovers(tmp_path) == []


def test_fetch_git_unknown_repository(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="acme/nothing"):
        fetch_git(repo.base.as_uri(), "acme/nothing", repo.first, tmp_path / "archive")


@pytest.mark.parametrize(
    "repository",
    [
        "acme",
        "acme/",
        "/webapp",
        "acme/../webapp",
        "../acme/webapp",
        "-c/x",
        "acme/-x",
        "acme/web app",
        "acme/web;rm",
        "a/b/c",
        "acme/..",
        "",
    ],
)
def test_fetch_git_refuses_odd_repository_names(
    repo: Repo, tmp_path: Path, repository: str
) -> None:
    with pytest.raises(ValueError, match="repository"):
        fetch_git(repo.base.as_uri(), repository, repo.first, tmp_path / "archive")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "commit", ["abc12", "xyz1234", "g" * 40, "a" * 41, "HEAD", "main", "--all", ""]
)
def test_fetch_git_refuses_what_is_not_a_sha(repo: Repo, tmp_path: Path, commit: str) -> None:
    with pytest.raises(ValueError, match="commit"):
        fetch_git(repo.base.as_uri(), "acme/webapp", commit, tmp_path / "archive")


def test_fetch_git_refuses_a_non_empty_destination(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "stale.txt").write_text("x")
    with pytest.raises(FetchError, match="not empty"):
        fetch_git(repo.base.as_uri(), "acme/webapp", repo.first, tmp_path / "archive")


# --------------------------------------------------------------------------------------------
# HTTP: a real server on loopback


class BundleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.content = b""
        self.requests: list[dict[str, str | None]] = []
        self.sent = 0  # body bytes sent, over all requests
        self.drop_after: int | None = None  # once: close after this many body bytes
        self.ignore_range = False
        self.required_token: str | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading part-way (as fetch_http does on purpose) is fine

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/bundle.tgz"


class _Handler(BaseHTTPRequestHandler):
    server: BundleServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        served = self.server
        served.requests.append(
            {"range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        )
        if self.path != "/bundle.tgz":
            self._reply(404, b"not found")
            return
        if served.required_token and self.headers.get("Authorization") != served.required_token:
            self._reply(403, b"forbidden")
            return
        content = served.content
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not served.ignore_range:
            start = int(match.group(1))
            if start >= len(content):
                self._reply(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                return
        body = content[start:]
        headers = {"Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self.send_response(206 if start else 200)
        headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if served.drop_after is not None:
            body = body[: served.drop_after]
            served.drop_after = None
            self.close_connection = True
        self.wfile.write(body)
        served.sent += len(body)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[BundleServer]:
    server = BundleServer()
    server.content = os.urandom(700_000)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def test_fetch_http_fresh_download(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    dest = tmp_path / "deep" / "bundle.tgz"
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert http_server.requests == [{"range": None, "auth": None}]


def test_fetch_http_resumes_a_partial_file(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(data[:250_000])
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert [r["range"] for r in http_server.requests] == ["bytes=250000-"]
    assert http_server.sent == len(data) - 250_000


def test_fetch_http_resumes_after_the_connection_drops(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    http_server.drop_after = 300_000
    dest = tmp_path / "bundle.tgz"
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=None)
    assert dest.read_bytes() == data
    ranges = [r["range"] for r in http_server.requests]
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=")
    assert http_server.sent == len(data)  # nothing was sent twice


def test_fetch_http_a_server_ignoring_range_starts_over(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    http_server.ignore_range = True
    data = http_server.content
    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(data[:1000])
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data


def test_fetch_http_a_complete_file_is_only_checked(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(data)
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=len(data))
    assert http_server.requests == []
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=None)  # size unknown: 416
    assert [r["range"] for r in http_server.requests] == [f"bytes={len(data)}-"]
    assert http_server.sent == 0
    assert dest.read_bytes() == data


def test_fetch_http_hash_mismatch_deletes_the_file(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    expected = sha(b"what the server was supposed to send")
    actual = sha(http_server.content)
    dest = tmp_path / "bundle.tgz"
    with pytest.raises(ChecksumMismatch) as caught:
        fetch_http(client, http_server.url, dest, sha256=expected, size=None)
    assert expected in str(caught.value)
    assert actual in str(caught.value)
    assert not dest.exists()


def test_fetch_http_a_partial_file_of_other_content_is_replaced(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(b"garbage from another bundle" * 100)
    fetch_http(client, http_server.url, dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert [r["range"] for r in http_server.requests] == ["bytes=2700-", None]


def test_fetch_http_longer_than_announced_is_refused(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    data = http_server.content
    dest = tmp_path / "bundle.tgz"
    with pytest.raises(ChecksumMismatch, match="longer than the expected 1000 bytes"):
        fetch_http(client, http_server.url, dest, sha256=sha(data[:1000]), size=1000)
    assert not dest.exists()


def test_fetch_http_error_status(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    url = http_server.url.replace("bundle.tgz", "missing.tgz")
    with pytest.raises(FetchError, match=r"HTTP 404") as caught:
        fetch_http(client, url + "?X-Amz-Signature=secret", tmp_path / "b", sha256=sha(b""), size=0)
    assert "missing.tgz" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert not (tmp_path / "b").exists()


def test_fetch_http_signs_with_the_auth_callable(
    http_server: BundleServer, client: httpx.Client, tmp_path: Path
) -> None:
    http_server.required_token = "Bearer agent-token"

    def sign(request: httpx.Request) -> httpx.Request:
        request.headers["Authorization"] = "Bearer agent-token"
        return request

    data = http_server.content
    with pytest.raises(FetchError, match="HTTP 403"):
        fetch_http(client, http_server.url, tmp_path / "b", sha256=sha(data), size=None)
    fetch_http(client, http_server.url, tmp_path / "b", sha256=sha(data), size=None, auth=sign)
    assert (tmp_path / "b").read_bytes() == data
    assert http_server.requests[-1]["auth"] == "Bearer agent-token"


# --------------------------------------------------------------------------------------------
# HTTP: answers a well-behaved server does not give


def test_fetch_http_gives_up_but_keeps_the_partial_file(tmp_path: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        raise httpx.ConnectError("connection refused", request=request)

    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(b"first half")
    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as mock,
        pytest.raises(FetchError, match="failed after 2 attempts") as caught,
    ):
        fetch_http(mock, "http://agent.test/b.tgz", dest, sha256=sha(b"x"), size=None, attempts=2)
    assert "10 bytes are kept" in str(caught.value)
    assert calls == ["bytes=10-", "bytes=10-"]
    assert dest.read_bytes() == b"first half"


def test_fetch_http_a_range_answer_from_the_wrong_offset_starts_over(tmp_path: Path) -> None:
    data = b"0123456789" * 100
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        # stream=, not content=: a real network body that is read once, as fetch_http does
        if request.headers.get("Range"):
            headers = {"Content-Range": f"bytes 10-999/{len(data)}"}
            return httpx.Response(206, stream=httpx.ByteStream(data[10:]), headers=headers)
        return httpx.Response(200, stream=httpx.ByteStream(data))

    dest = tmp_path / "bundle.tgz"
    dest.write_bytes(data[:500])
    with httpx.Client(transport=httpx.MockTransport(handler)) as mock:
        fetch_http(mock, "http://agent.test/b.tgz", dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert calls == ["bytes=500-", None]


def test_fetch_http_refuses_a_malformed_sha256(tmp_path: Path) -> None:
    with httpx.Client() as http, pytest.raises(ValueError, match="sha256"):
        fetch_http(http, "http://agent.test/b.tgz", tmp_path / "b", sha256="abc", size=None)
