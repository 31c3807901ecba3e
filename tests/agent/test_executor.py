"""One host command at a time: DownloadBundle, Install and hook events, on real directories."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from opendeploy.agent import layout
from opendeploy.agent.config import AgentConfig
from opendeploy.agent.executor import (
    SUCCESS_DIAGNOSTICS,
    DeploymentSpec,
    Executor,
    LogUploader,
    SpecError,
)

GROUP = "0f1e2d3c-4b5a-6978-8899-aabbccddeeff"
APPSPEC = """version: 0.0
os: linux
files:
  - source: app
    destination: /srv/app
hooks:
  AfterInstall:
    - location: scripts/env.sh
  ApplicationStop:
    - location: scripts/stop.sh
  ApplicationStart:
    - location: scripts/fail.sh
"""
SCRIPTS = {
    "scripts/env.sh": '#!/bin/sh\nenv > "$OUT/env-$LIFECYCLE_EVENT"\n'
    "echo 'hello from' \"$DEPLOYMENT_ID\"\n"
    "echo 'to stderr' >&2\n",
    "scripts/stop.sh": '#!/bin/sh\necho "stop of $REVISION for $DEPLOYMENT_ID" >> "$OUT/stops"\n',
    "scripts/fail.sh": "#!/bin/sh\necho about to fail\nexit 3\n",
}


class FakeClient:
    """Serves bundles from a dict and records uploaded log chunks."""

    def __init__(self) -> None:
        self.bundles: dict[str, bytes] = {}
        self.logs: list[tuple[str, int, str]] = []
        self.log_failures = 0
        self.downloads: list[str] = []

    def put_log(self, command_id: str, offset: int, text: str) -> None:
        if self.log_failures:
            self.log_failures -= 1
            raise ConnectionError("server away")
        self.logs.append((command_id, offset, text))

    def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None:
        self.downloads.append(path)
        data = self.bundles[path]
        if hashlib.sha256(data).hexdigest() != sha256:
            from opendeploy.bundles.fetch import ChecksumMismatch

            raise ChecksumMismatch(f"download of {path} does not match: sha256 expected {sha256}")
        dest.write_bytes(data)

    def full_log(self, command_id: str) -> str:
        text = ""
        for cid, offset, chunk in self.logs:
            if cid == command_id:
                text = text[:offset] + chunk
        return text


def make_bundle(files: dict[str, str], *, gz: bool = True, revision: str = "r1") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for name, text in {**files, "app/version.txt": revision + "\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        endpoint="http://127.0.0.1:1",
        region="us-east-1",
        instance_name="web-1",
        host_identifier="arn:aws:iam::000000000000:user/opendeploy-agent-web-1",
        access_key_id="AKIAAGENT",
        secret_access_key="agent-secret-never-in-hooks",
        root_dir=tmp_path / "root",
        spec_signer_certificate="unused",
        destination_root=tmp_path / "dest",
        max_revisions=2,
    )


@pytest.fixture
def executor(config: AgentConfig, client: FakeClient) -> Executor:
    return Executor(config, client, log_flush_interval=0.05, kill_grace=0.5)


def spec_for(
    client: FakeClient, deployment_id: str, bundle: bytes | None = None, **extra: Any
) -> DeploymentSpec:
    document: dict[str, Any] = {
        "DeploymentId": deployment_id,
        "DeploymentGroupId": GROUP,
        "DeploymentGroupName": "web",
        "ApplicationName": "shop",
        "DeploymentCreator": "user",
        "DeploymentType": "IN_PLACE",
        "AgentActionOverrides": {"AgentOverrides": {"FileExistsBehavior": "DISALLOW"}},
        "Revision": {
            "RevisionType": "S3",
            "S3Revision": {
                "Bucket": "opendeploy-local",
                "Key": f"bundles/{deployment_id}.tgz",
                "BundleType": "tgz",
                "ETag": "etag-1",
            },
        },
    }
    if bundle is not None:
        sha = hashlib.sha256(bundle).hexdigest()
        path = f"/agent/bundles/{sha}"
        client.bundles[path] = bundle
        document["OpenDeploy"] = {
            "Bundle": {"Path": path, "Sha256": sha, "Size": len(bundle), "BundleType": "tgz"}
        }
    document.update(extra)
    return DeploymentSpec.parse(document)


def deploy(executor: Executor, spec: DeploymentSpec, *events: str) -> list[dict[str, Any]]:
    results = []
    for event in events:
        outcome = executor.execute(event, spec, host_command_id=f"hc-{spec.deployment_id}-{event}")
        results.append(dict(outcome.diagnostics))
        assert outcome.succeeded == (outcome.diagnostics["error_code"] == 0)
    executor.drain_logs(timeout=10)
    return results


@pytest.fixture(autouse=True)
def _agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets in the agent's own environment, which no hook may see."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaked-if-you-see-this")
    monkeypatch.setenv("OPENDEPLOY_AGENT_SECRET", "leaked-too")


def _with_out(out: Path, revision: str = "r1") -> dict[str, str]:
    """The bundle's scripts, with OUT and REVISION baked in (hooks get no outside env)."""
    prefix = f"#!/bin/sh\nOUT={out}\nREVISION={revision}\n"
    return {
        "appspec.yml": APPSPEC,
        **{name: prefix + body.removeprefix("#!/bin/sh\n") for name, body in SCRIPTS.items()},
        "app/index.html": f"<h1>{revision}</h1>\n",
    }


# -- DownloadBundle ------------------------------------------------------------------------


def test_download_bundle_from_the_server_store_unpacks_and_records(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-AAAAAAAA1", make_bundle(_with_out(tmp_path)))
    assert deploy(executor, spec, "DownloadBundle") == [dict(SUCCESS_DIAGNOSTICS)]
    archive = config.root_dir / GROUP / "d-AAAAAAAA1" / "deployment-archive"
    assert (archive / "appspec.yml").read_text() == APPSPEC
    assert os.access(archive / "scripts/env.sh", os.X_OK)
    assert layout.read_most_recent_install(config.root_dir, GROUP) == archive.parent
    assert spec.bundle is not None
    assert client.downloads == [spec.bundle.path]


def test_a_bundle_that_does_not_match_its_sha256_fails_with_code_5(
    executor: Executor, client: FakeClient, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-AAAAAAAA2", make_bundle(_with_out(tmp_path)))
    assert spec.bundle is not None
    client.bundles[spec.bundle.path] = b"tampered"
    [diagnostics] = deploy(executor, spec, "DownloadBundle")
    assert diagnostics["error_code"] == 5
    assert "sha256" in diagnostics["message"]
    assert diagnostics["script_name"] == "" and diagnostics["log"] == ""


def test_download_bundle_from_s3(config: AgentConfig, client: FakeClient, tmp_path: Path) -> None:
    data = make_bundle(_with_out(tmp_path), gz=False)
    calls: list[dict[str, Any]] = []

    class FakeS3:
        def get_object(self, **request: Any) -> dict[str, Any]:
            calls.append(request)
            return {"Body": io.BytesIO(data), "ETag": '"etag-1"'}

    executor = Executor(config, client, s3_client_factory=FakeS3)
    spec = spec_for(client, "d-AAAAAAAA3")
    spec = DeploymentSpec.parse(
        {
            "DeploymentId": spec.deployment_id,
            "DeploymentGroupId": GROUP,
            "DeploymentGroupName": "web",
            "ApplicationName": "shop",
            "Revision": {
                "RevisionType": "S3",
                "S3Revision": {
                    "Bucket": "b",
                    "Key": "k.tar",
                    "BundleType": "tar",
                    "Version": "v7",
                    "ETag": "etag-1",
                },
            },
        }
    )
    assert deploy(executor, spec, "DownloadBundle")[0]["error_code"] == 0
    assert calls == [{"Bucket": "b", "Key": "k.tar", "VersionId": "v7"}]
    archive = config.root_dir / GROUP / "d-AAAAAAAA3" / "deployment-archive"
    assert (archive / "app" / "version.txt").read_text() == "r1\n"


def test_download_bundle_from_a_git_host(
    config: AgentConfig, client: FakeClient, tmp_path: Path
) -> None:
    repository = tmp_path / "git" / "acme" / "shop"
    repository.mkdir(parents=True)
    for name, text in _with_out(tmp_path).items():
        path = repository / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for argv in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "one"]):
        subprocess.run(argv, cwd=repository, check=True, env=env, capture_output=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repository, check=True, capture_output=True, text=True
    ).stdout.strip()
    from dataclasses import replace

    executor = Executor(replace(config, git_base_url=f"file://{tmp_path / 'git'}"), client)
    spec = DeploymentSpec.parse(
        {
            "DeploymentId": "d-GIT000001",
            "DeploymentGroupId": GROUP,
            "DeploymentGroupName": "web",
            "ApplicationName": "shop",
            "Revision": {
                "RevisionType": "GitHub",
                "GitHubRevision": {
                    "Account": "acme",
                    "Repository": "shop",
                    "CommitId": commit,
                    "BundleType": "tar",
                },
            },
        }
    )
    assert deploy(executor, spec, "DownloadBundle")[0]["error_code"] == 0
    archive = config.root_dir / GROUP / "d-GIT000001" / "deployment-archive"
    assert (archive / "appspec.yml").read_text() == APPSPEC
    assert not (archive / ".git").exists()
    assert executor.environment("AfterInstall", spec)["BUNDLE_COMMIT"] == commit


def test_download_bundle_prunes_old_revisions_but_keeps_the_last_successful(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    first = spec_for(client, "d-OLD000001", make_bundle(_with_out(tmp_path), revision="r1"))
    deploy(executor, first, "DownloadBundle", "Install")
    group_dir = config.root_dir / GROUP
    for index, name in enumerate(("d-OLD000002", "d-OLD000003")):
        (group_dir / name).mkdir()
        os.utime(group_dir / name, (1000 + index, 1000 + index))
    os.utime(group_dir / "d-OLD000001", (10, 10))  # oldest, but the last successful install
    new = spec_for(client, "d-NEW000001", make_bundle(_with_out(tmp_path), revision="r2"))
    deploy(executor, new, "DownloadBundle")
    assert sorted(p.name for p in group_dir.iterdir()) == ["d-NEW000001", "d-OLD000001"]


def test_an_unsupported_revision_fails(executor: Executor, client: FakeClient) -> None:
    spec = DeploymentSpec.parse(
        {
            "DeploymentId": "d-NOREV0001",
            "DeploymentGroupId": GROUP,
            "DeploymentGroupName": "web",
            "ApplicationName": "shop",
        }
    )
    [diagnostics] = deploy(executor, spec, "DownloadBundle")
    assert diagnostics["error_code"] == 5
    assert "unsupported revision type" in diagnostics["message"]


# -- Install -------------------------------------------------------------------------------


def test_install_copies_files_under_the_destination_root(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-INST00001", make_bundle(_with_out(tmp_path), revision="r1"))
    assert [d["error_code"] for d in deploy(executor, spec, "DownloadBundle", "Install")] == [0, 0]
    assert (tmp_path / "dest" / "srv/app/version.txt").read_text() == "r1\n"
    assert layout.read_last_successful_install(config.root_dir, GROUP) == (
        config.root_dir / GROUP / "d-INST00001"
    )


def test_file_exists_behavior_override_is_honoured(
    executor: Executor, client: FakeClient, tmp_path: Path
) -> None:
    target = tmp_path / "dest" / "srv/app/index.html"
    target.parent.mkdir(parents=True)
    target.write_text("placed by hand\n")
    refused = spec_for(client, "d-FEB000001", make_bundle(_with_out(tmp_path)))
    results = deploy(executor, refused, "DownloadBundle", "Install")
    assert results[1]["error_code"] == 5
    assert "index.html" in results[1]["message"]
    assert target.read_text() == "placed by hand\n"

    overwrite = spec_for(
        client,
        "d-FEB000002",
        make_bundle(_with_out(tmp_path, revision="r2")),
        AgentActionOverrides={"AgentOverrides": {"FileExistsBehavior": "overwrite"}},
    )
    assert overwrite.file_exists_behavior == "OVERWRITE"
    assert [d["error_code"] for d in deploy(executor, overwrite, "DownloadBundle", "Install")] == [
        0,
        0,
    ]
    assert target.read_text() == "<h1>r2</h1>\n"


def test_install_before_download_fails_with_code_5(executor: Executor, client: FakeClient) -> None:
    spec = spec_for(client, "d-NODL00001")
    [diagnostics] = deploy(executor, spec, "Install")
    assert diagnostics["error_code"] == 5
    assert "not unpacked" in diagnostics["message"]


# -- hooks ---------------------------------------------------------------------------------


def test_hooks_get_only_the_documented_environment(
    executor: Executor, client: FakeClient, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-ENV000001", make_bundle(_with_out(tmp_path)))
    results = deploy(executor, spec, "DownloadBundle", "Install", "AfterInstall")
    assert results[2] == dict(SUCCESS_DIAGNOSTICS)
    lines = (tmp_path / "env-AfterInstall").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    env.pop("PWD", None)
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LIFECYCLE_EVENT": "AfterInstall",
        "DEPLOYMENT_ID": "d-ENV000001",
        "APPLICATION_NAME": "shop",
        "DEPLOYMENT_GROUP_NAME": "web",
        "DEPLOYMENT_GROUP_ID": GROUP,
        "BUNDLE_BUCKET": "opendeploy-local",
        "BUNDLE_KEY": "bundles/d-ENV000001.tgz",
        "BUNDLE_ETAG": "etag-1",
    }


def test_hook_output_is_streamed_to_the_server_and_kept_on_disk(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-LOG000001", make_bundle(_with_out(tmp_path)))
    deploy(executor, spec, "DownloadBundle", "Install", "AfterInstall")
    uploaded = client.full_log("hc-d-LOG000001-AfterInstall")
    on_disk = (config.root_dir / GROUP / "d-LOG000001" / "logs" / "scripts.log").read_text()
    assert "LifecycleEvent - AfterInstall" in uploaded
    assert "[stdout]hello from d-LOG000001" in uploaded
    assert "[stderr]to stderr" in uploaded
    assert on_disk.endswith(uploaded)  # the same bytes, timestamps included
    # A second event's log starts at offset 0 of its own command, not of the file.
    deploy(executor, spec, "ApplicationStart")
    start_chunks = [c for c in client.logs if c[0] == "hc-d-LOG000001-ApplicationStart"]
    assert start_chunks[0][1] == 0
    assert "hello from" not in client.full_log("hc-d-LOG000001-ApplicationStart")


def test_a_failing_script_reports_code_4_with_the_log_tail(
    executor: Executor, client: FakeClient, tmp_path: Path
) -> None:
    spec = spec_for(client, "d-FAIL00001", make_bundle(_with_out(tmp_path)))
    results = deploy(executor, spec, "DownloadBundle", "Install", "ApplicationStart")
    failure = results[2]
    assert failure["error_code"] == 4
    assert failure["script_name"] == "scripts/fail.sh"
    assert (
        failure["message"]
        == "Script at specified location: scripts/fail.sh failed with exit code 3"
    )
    assert "[stdout]about to fail" in failure["log"]


def test_application_stop_runs_the_last_successful_revision(
    executor: Executor, client: FakeClient, tmp_path: Path
) -> None:
    first = spec_for(client, "d-STOP00001", make_bundle(_with_out(tmp_path, "r1")))
    assert executor.is_noop("ApplicationStop", first)  # no previous revision yet
    assert deploy(executor, first, "ApplicationStop")[0]["error_code"] == 0
    assert not (tmp_path / "stops").exists()
    deploy(executor, first, "DownloadBundle", "Install")

    second = spec_for(client, "d-STOP00002", make_bundle(_with_out(tmp_path, "r2")))
    assert not executor.is_noop("ApplicationStop", second)
    assert deploy(executor, second, "ApplicationStop")[0]["error_code"] == 0
    assert (tmp_path / "stops").read_text() == "stop of r1 for d-STOP00002\n"


def test_application_stop_is_a_noop_when_the_previous_revision_is_gone(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    first = spec_for(client, "d-GONE00001", make_bundle(_with_out(tmp_path)))
    deploy(executor, first, "DownloadBundle", "Install")
    shutil.rmtree(config.root_dir / GROUP / "d-GONE00001")
    second = spec_for(client, "d-GONE00002")
    assert executor.is_noop("ApplicationStop", second)
    assert deploy(executor, second, "ApplicationStop")[0]["error_code"] == 0


def test_noop_answers(executor: Executor, client: FakeClient, tmp_path: Path) -> None:
    spec = spec_for(client, "d-NOOP00001", make_bundle(_with_out(tmp_path)))
    assert executor.is_noop("DownloadBundle", spec) is False
    assert executor.is_noop("FooBar", spec) is True
    with pytest.raises(SpecError, match="not unpacked"):
        executor.is_noop("BeforeInstall", spec)
    deploy(executor, spec, "DownloadBundle")
    assert executor.is_noop("Install", spec) is False
    assert executor.is_noop("AfterInstall", spec) is False
    assert executor.is_noop("ValidateService", spec) is True
    assert deploy(executor, spec, "ValidateService") == [dict(SUCCESS_DIAGNOSTICS)]


def test_an_unknown_command_fails_with_code_5(executor: Executor, client: FakeClient) -> None:
    spec = spec_for(client, "d-UNKN00001")
    succeeded, diagnostics = executor.execute("FooBar", spec, host_command_id="hc")
    assert succeeded is False and diagnostics["error_code"] == 5
    assert deploy(executor, spec, "FooBar") == [
        {
            "error_code": 5,
            "script_name": "",
            "message": "Unsupported command type: FooBar.",
            "log": "",
        }
    ]


def test_abort_kills_a_running_hook(
    config: AgentConfig, client: FakeClient, tmp_path: Path
) -> None:
    files = _with_out(tmp_path)
    files["appspec.yml"] = (
        "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: scripts/sleep.sh\n"
    )
    files["scripts/sleep.sh"] = "#!/bin/sh\nsleep 60 &\nwait\n"
    executor = Executor(config, client, kill_grace=0.2)
    spec = spec_for(client, "d-ABRT00001", make_bundle(files))
    deploy(executor, spec, "DownloadBundle")
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(executor.execute("AfterInstall", spec, host_command_id="hc"))
    )
    started = time.monotonic()
    worker.start()
    deadline = time.monotonic() + 10
    while not executor_has_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    executor.abort()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 10
    assert result[0].succeeded is False


def executor_has_children() -> bool:
    from opendeploy.agent.executor import _hook_process_groups

    return bool(_hook_process_groups())


# -- the spec ------------------------------------------------------------------------------


def test_spec_parsing() -> None:
    spec = DeploymentSpec.parse(
        {
            "DeploymentId": "arn:aws:codedeploy:us-east-1:000000000000:deployment/d-ARN000001",
            "DeploymentGroupId": GROUP,
            "DeploymentGroupName": "web",
            "ApplicationName": "shop",
            "AppSpecFilename": "deploy/appspec.yml",
            "Revision": {
                "RevisionType": "GitHub",
                "GitHubRevision": {"Account": "a", "Repository": "r", "CommitId": "abc1234"},
            },
            "Unknown": "ignored",
        }
    )
    assert spec.deployment_id == "d-ARN000001"
    assert spec.creator == "user" and spec.deployment_type == "IN_PLACE"
    assert spec.file_exists_behavior is None
    assert spec.github is not None and spec.github.bundle_type == "tar"
    assert spec.appspec_filename == "deploy/appspec.yml"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"DeploymentGroupId": "../../etc"}, "directory name"),
        ({"DeploymentId": ""}, "DeploymentId"),
        ({"ApplicationName": None}, "ApplicationName"),
        (
            {"AgentActionOverrides": {"AgentOverrides": {"FileExistsBehavior": "MERGE"}}},
            "FileExistsBehavior",
        ),
        (
            {"OpenDeploy": {"Bundle": {"Path": "/agent/bundles/x", "Sha256": "ab", "Size": -1}}},
            "Size",
        ),
    ],
)
def test_bad_specs_are_refused(changes: dict[str, Any], match: str) -> None:
    document: dict[str, Any] = {
        "DeploymentId": "d-1",
        "DeploymentGroupId": GROUP,
        "DeploymentGroupName": "web",
        "ApplicationName": "shop",
    }
    document.update(changes)
    with pytest.raises(SpecError, match=match):
        DeploymentSpec.parse(document)


# -- the log uploader ----------------------------------------------------------------------


def test_log_upload_retries_without_duplicating(tmp_path: Path, client: FakeClient) -> None:
    path = tmp_path / "scripts.log"
    path.write_bytes(b"earlier deployment line\n")
    uploader = LogUploader(client, "hc", path, path.stat().st_size, interval=60)
    with path.open("ab") as handle:
        handle.write("first \u00e9\n".encode())
    client.log_failures = 1
    uploader.flush()
    assert client.logs == []
    uploader.flush()
    with path.open("ab") as handle:
        handle.write(b"second\n")
    uploader.flush(final=True)
    assert client.full_log("hc") == "first \u00e9\nsecond\n"
    assert [offset for _, offset, _ in client.logs] == [0, 8]


def test_a_refused_log_upload_stops_streaming(tmp_path: Path) -> None:
    class Refusing:
        calls = 0

        def put_log(self, command_id: str, offset: int, text: str) -> None:
            Refusing.calls += 1
            error = RuntimeError("UnknownOperationException")
            error.retryable = False  # type: ignore[attr-defined]
            raise error

        def download_bundle(self, path: str, dest: Path, *, sha256: str, size: int | None) -> None:
            raise AssertionError

    path = tmp_path / "scripts.log"
    path.write_text("a\n")
    uploader = LogUploader(Refusing(), "hc", path, 0, interval=60)
    uploader.flush()
    uploader.flush()
    assert Refusing.calls == 1 and uploader.disabled


def test_a_multibyte_character_is_never_split_between_chunks() -> None:
    from opendeploy.agent.executor import _utf8_prefix

    data = "ab\u20ac".encode()  # the euro sign is 3 bytes
    assert _utf8_prefix(data) == len(data)
    assert _utf8_prefix(data[:-1]) == 2
    assert _utf8_prefix(data[:-2]) == 2
    assert _utf8_prefix("\U0001f600".encode()[:3]) == 0
    assert _utf8_prefix(b"plain") == 5


def test_a_revision_still_on_the_host_is_reused_without_downloading(
    executor: Executor, client: FakeClient, config: AgentConfig, tmp_path: Path
) -> None:
    bundle = make_bundle(_with_out(tmp_path))
    first = spec_for(client, "d-REUSE0001", bundle)
    deploy(executor, first, "DownloadBundle", "Install")
    assert len(client.downloads) == 1
    again = spec_for(client, "d-REUSE0002", bundle)
    results = deploy(executor, again, "DownloadBundle", "Install", "AfterInstall")
    assert all(result["error_code"] == 0 for result in results)
    assert len(client.downloads) == 1, "the rollback-style redeploy downloaded the bundle again"
    archives = [
        config.root_dir / GROUP / d / "deployment-archive" for d in ("d-REUSE0001", "d-REUSE0002")
    ]
    assert sorted(p.relative_to(archives[0]) for p in archives[0].rglob("*")) == sorted(
        p.relative_to(archives[1]) for p in archives[1].rglob("*")
    )
    other = spec_for(client, "d-REUSE0003", make_bundle(_with_out(tmp_path, "changed")))
    deploy(executor, other, "DownloadBundle")
    assert len(client.downloads) == 2, "a different bundle must be downloaded"


def test_the_appspec_is_parsed_once_per_file_version(
    executor: Executor, client: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opendeploy.agent.executor as executor_module

    spec = spec_for(client, "d-CACHE0001", make_bundle(_with_out(tmp_path)))
    deploy(executor, spec, "DownloadBundle")
    parsed: list[Path] = []
    real = executor_module.read_appspec

    def counting(archive: Path, name: str = "appspec.yml") -> Any:
        parsed.append(archive)
        return real(archive, name)

    monkeypatch.setattr(executor_module, "read_appspec", counting)
    for event in ("BeforeInstall", "AfterInstall", "ValidateService"):
        executor.is_noop(event, spec)
    deploy(executor, spec, "AfterInstall")
    assert len(parsed) == 1
    appspec = parsed[0] / "appspec.yml"
    appspec.write_text(APPSPEC.replace("  ApplicationStart:\n", "  ValidateService:\n"))
    assert executor.is_noop("ValidateService", spec) is False
    assert len(parsed) == 2
