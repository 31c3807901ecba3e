"""Revisions from elsewhere than the server's own store: an S3 bucket (SeaweedFS) and a git
repository, fetched by real agents configured for them."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from e2e_support import (
    FIRST_ORDER,
    REGION,
    Environment,
    SeaweedFS,
    hook_lines,
    unique,
    write_bundle,
)

from opendeploy.agent.config import S3Config, load_config, write_config
from opendeploy.bundles.archive import make_bundle
from opendeploy.localfleet import LocalAgent

pytestmark = pytest.mark.e2e

SHOW_BUNDLE = """#!/bin/bash
echo "bundle bucket=${BUNDLE_BUCKET:-} key=${BUNDLE_KEY:-} etag=${BUNDLE_ETAG:-}"
echo "bundle commit=${BUNDLE_COMMIT:-}"
"""


@dataclass
class Sources:
    environment: Environment
    seaweedfs: SeaweedFS
    bucket: str
    git_base: Path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sources]:
    workdir = tmp_path_factory.mktemp("e2e-sources")
    seaweedfs = SeaweedFS.launch(workdir / "seaweedfs")
    git_base = workdir / "git"
    git_base.mkdir()

    def configure(agent: LocalAgent) -> None:
        config = load_config(agent.config_path)
        s3 = S3Config(
            endpoint_url=seaweedfs.endpoint,
            region=REGION,
            access_key_id=SeaweedFS.ACCESS_KEY,
            secret_access_key=SeaweedFS.SECRET_KEY,
        )
        write_config(agent.config_path, replace(config, s3=s3, git_base_url=f"file://{git_base}"))

    try:
        environment = Environment.start(workdir / "opendeploy", hosts=3, configure=configure)
        try:
            bucket = seaweedfs.wait_ready()
            yield Sources(environment, seaweedfs, bucket, git_base)
        finally:
            environment.stop()
    finally:
        seaweedfs.stop()


@pytest.fixture(scope="module")
def e2e(sources: Sources) -> Environment:
    return sources.environment


def _bundle(tmp_path: Path, destination: str, content: str) -> Path:
    return write_bundle(
        tmp_path / "bundle",
        destination=destination,
        content=content,
        scripts={"scripts/show.sh": SHOW_BUNDLE},
        hooks={
            "AfterInstall": [
                {"location": "scripts/after_install.sh", "timeout": 30},
                {"location": "scripts/show.sh", "timeout": 30},
            ]
        },
    )


def _check_hosts(
    e2e: Environment, deployment_id: str, destination: str, content: str, expected: str
) -> None:
    for agent in e2e.agents:
        assert [line.event for line in hook_lines(agent, deployment_id)] == FIRST_ORDER
        installed = agent.destination_root / destination.lstrip("/") / "index.html"
        assert installed.read_text() == content, agent.name
        [scripts_log] = agent.root.glob(f"*/{deployment_id}/logs/scripts.log")
        assert f"[stdout]{expected}" in scripts_log.read_text(), agent.name


def test_an_s3_revision_from_seaweedfs(e2e: Environment, sources: Sources, tmp_path: Path) -> None:
    destination = f"/srv/{unique('s3')}"
    content = f"from s3 {destination}\n"
    archive = io.BytesIO()
    make_bundle(_bundle(tmp_path, destination, content), archive)
    key = f"releases/{unique('rev')}.tgz"
    s3 = sources.seaweedfs.client()
    etag = s3.put_object(Bucket=sources.bucket, Key=key, Body=archive.getvalue())["ETag"]
    etag = etag.strip('"')

    application = e2e.application()
    group = e2e.group(application, e2e.agents)
    revision = {
        "revisionType": "S3",
        "s3Location": {"bucket": sources.bucket, "key": key, "bundleType": "tgz", "eTag": etag},
    }
    deployment_id, info = e2e.run(application, group, revision)
    assert info["revision"]["s3Location"]["bucket"] == sources.bucket
    expected = f"bundle bucket={sources.bucket} key={key} etag={etag}"
    _check_hosts(e2e, deployment_id, destination, content, expected)


def _git(directory: Path, *args: str) -> str:
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.com",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    result = subprocess.run(
        ["git", *args], cwd=directory, env=environment, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def test_a_git_revision(e2e: Environment, sources: Sources, tmp_path: Path) -> None:
    destination = f"/srv/{unique('git')}"
    content = f"from git {destination}\n"
    name = unique("shop")
    repository = sources.git_base / "acme" / name
    repository.parent.mkdir(parents=True, exist_ok=True)
    _bundle(tmp_path, destination, content).rename(repository)
    _git(repository, "init", "--quiet")
    _git(repository, "add", ".")
    _git(repository, "commit", "--quiet", "-m", "the revision")
    commit = _git(repository, "rev-parse", "HEAD")

    application = e2e.application()
    group = e2e.group(application, e2e.agents)
    revision = {
        "revisionType": "GitHub",
        "gitHubLocation": {"repository": f"acme/{name}", "commitId": commit},
    }
    deployment_id, _ = e2e.run(application, group, revision)
    _check_hosts(e2e, deployment_id, destination, content, f"bundle commit={commit}")
