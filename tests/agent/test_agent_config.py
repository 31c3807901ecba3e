"""The agent's YAML configuration: typed, validated, secret kept out of sight."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opendeploy.agent.config import AgentConfig, ConfigError, S3Config, load_config, write_config

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


def _certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


CERT = _certificate()


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "endpoint": "http://127.0.0.1:8080/",
        "region": "us-east-1",
        "instance_name": "web-1",
        "host_identifier": "arn:aws:iam::000000000000:user/opendeploy-agent-web-1",
        "access_key_id": "AKIAAGENT",
        "secret_access_key": SECRET,
        "root_dir": "/var/lib/opendeploy-agent",
        "spec_signer_certificate": CERT,
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def _write(tmp_path: Path, data: Any, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


def test_a_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, _data()))
    assert config.endpoint == "http://127.0.0.1:8080"
    assert config.root_dir == Path("/var/lib/opendeploy-agent")
    assert config.destination_root == Path("/")
    assert config.max_revisions == 5
    assert config.heartbeat_interval == 10.0
    assert config.poll_read_timeout == 80.0
    assert config.git_base_url == "https://github.com"
    assert config.s3 is None
    assert config.ca_bundle is None


def test_the_secret_never_shows_in_repr(tmp_path: Path) -> None:
    s3 = {
        "endpoint_url": "http://127.0.0.1:8333",
        "access_key_id": "S3KEY",
        "secret_access_key": "S3SECRETVALUE",
    }
    config = load_config(_write(tmp_path, _data(s3=s3)))
    assert config.s3 == S3Config("http://127.0.0.1:8333", None, "S3KEY", "S3SECRETVALUE")
    shown = repr(config) + str(config)
    assert SECRET not in shown
    assert "S3SECRETVALUE" not in shown
    assert "AKIAAGENT" in shown


def test_write_then_load_round_trips_with_mode_0600(tmp_path: Path) -> None:
    config = AgentConfig(
        endpoint="https://deploy.example.com",
        region="eu-west-1",
        instance_name="db-2",
        host_identifier="arn:aws:iam::1:user/opendeploy-agent-db-2",
        access_key_id="AKIAX",
        secret_access_key=SECRET,
        root_dir=Path("/srv/agent"),
        spec_signer_certificate=CERT,
        destination_root=Path("/tmp/dest"),
        max_revisions=2,
        heartbeat_interval=3.5,
        s3=S3Config(region="eu-west-1"),
    )
    path = tmp_path / "etc" / "agent.yml"
    write_config(path, config)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_config(path) == config
    assert [p.name for p in path.parent.iterdir()] == ["agent.yml"]


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _data(), mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert load_config(path, check_permissions=False).instance_name == "web-1"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"region": None}, "region", "required"),
        ({"endpoint": "ftp://x"}, "endpoint", "http"),
        ({"endpoint": "http://user:pw@host"}, "endpoint", "credentials"),
        ({"root_dir": "relative/dir"}, "root_dir", "absolute"),
        ({"max_revisions": 0}, "max_revisions", "at least 1"),
        ({"max_revisions": True}, "max_revisions", "whole number"),
        ({"heartbeat_interval": -1}, "heartbeat_interval", "positive"),
        ({"poll_read_timeout": "soon"}, "poll_read_timeout", "positive"),
        ({"spec_signer_certificate": "nope"}, "spec_signer_certificate", "PEM"),
        ({"heartbeat_intervall": 5}, "heartbeat_intervall", "unknown setting"),
        ({"s3": {"endpoint_url": "http://s3", "access_key_id": "K"}}, "s3", "both"),
        ({"s3": {"bucket": "x"}}, "s3.bucket", "unknown"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle", "not a readable file"),
    ],
)
def test_bad_values_name_the_file_and_field(
    tmp_path: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    path = _write(tmp_path, _data(**changes))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field
    assert caught.value.file == str(path)
    assert words in str(caught.value)
    assert f"{path}: {field}: " in str(caught.value)


def test_a_bad_secret_is_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, _data(secret_access_key=["not", SECRET]))
    with pytest.raises(ConfigError, match="secret_access_key") as caught:
        load_config(path)
    assert SECRET not in str(caught.value)


def test_missing_file_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opendeploy agent register"):
        load_config(tmp_path / "missing.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("endpoint: [unclosed\n")
    os.chmod(broken, 0o600)
    with pytest.raises(ConfigError, match="line"):
        load_config(broken)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, ["a", "list"]))
