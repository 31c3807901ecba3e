"""The agent's configuration file (YAML, mode 0600, written by ``opendeploy agent register``).

::

    endpoint: https://deploy.example.com:8080      # the OpenDeploy server (agent API)
    region: us-east-1                               # SigV4 region
    instance_name: web-1                            # the registered on-premises instance
    host_identifier: arn:aws:iam::123456789012:user/opendeploy-agent-web-1
    access_key_id: AKIA...                          # the agent user's key
    secret_access_key: ...                          # never logged, never in repr()
    root_dir: /var/lib/opendeploy-agent             # deployment root (stock layout)
    destination_root: /                             # prefix of every appspec destination
    max_revisions: 5                                # deployment dirs kept per group (>= 1)
    poll_read_timeout: 80                           # seconds; above the server's 45 s long poll
    heartbeat_interval: 10                          # seconds between PostHostCommandUpdate
    ca_bundle: /etc/opendeploy/ca.pem               # optional: CA (PEM) the server's TLS must use
    spec_signer_certificate: |                      # pinned at registration
      -----BEGIN CERTIFICATE-----
      ...
    s3:                                             # optional: for S3 revisions
      endpoint_url: http://127.0.0.1:8333
      region: us-east-1
      access_key_id: ...
      secret_access_key: ...
    git_base_url: https://github.com                # where GitHub revisions are fetched from
    hook_environment:                               # optional: extra variables for every hook
      APP_ENV: production

Unknown keys are errors (a misspelt key must not silently fall back to a default), and every
error names the file and the field. A file that other users could read is refused: it holds
the agent's secret key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from opendeploy.core.errors import OpenDeployError

__all__ = [
    "AgentConfig",
    "ConfigError",
    "S3Config",
    "is_pem_certificate",
    "load_config",
    "parse_config",
    "validate_hook_environment",
    "write_config",
]

DEFAULT_MAX_REVISIONS: Final = 5
DEFAULT_POLL_READ_TIMEOUT: Final = 80.0
DEFAULT_HEARTBEAT_INTERVAL: Final = 10.0
DEFAULT_GIT_BASE_URL: Final = "https://github.com"


class ConfigError(OpenDeployError):
    """A configuration file that cannot be used; names the file and, when known, the field."""

    def __init__(self, file: Path | str, message: str, *, field: str | None = None) -> None:
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)
        self.file = str(file)
        self.field = field


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where and how the agent reads S3 revisions; None fields use boto3's usual chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)

    def to_mapping(self) -> dict[str, str]:
        return {
            key: value
            for key, value in (
                ("endpoint_url", self.endpoint_url),
                ("region", self.region),
                ("access_key_id", self.access_key_id),
                ("secret_access_key", self.secret_access_key),
            )
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs; ``secret_access_key`` is kept out of ``repr``."""

    endpoint: str
    region: str
    instance_name: str
    host_identifier: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    root_dir: Path
    spec_signer_certificate: str = field(repr=False)
    destination_root: Path = Path("/")
    max_revisions: int = DEFAULT_MAX_REVISIONS
    poll_read_timeout: float = DEFAULT_POLL_READ_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    ca_bundle: Path | None = None
    s3: S3Config | None = None
    git_base_url: str = DEFAULT_GIT_BASE_URL
    #: Operator-set variables every hook sees (never secrets: hooks may log them).
    hook_environment: Mapping[str, str] = field(default_factory=dict)

    def to_mapping(self) -> dict[str, Any]:
        """The YAML document ``write_config`` writes (includes the secrets)."""
        data: dict[str, Any] = {
            "endpoint": self.endpoint,
            "region": self.region,
            "instance_name": self.instance_name,
            "host_identifier": self.host_identifier,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "root_dir": str(self.root_dir),
            "destination_root": str(self.destination_root),
            "max_revisions": self.max_revisions,
            "poll_read_timeout": self.poll_read_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "git_base_url": self.git_base_url,
        }
        if self.ca_bundle is not None:
            data["ca_bundle"] = str(self.ca_bundle)
        if self.s3 is not None:
            data["s3"] = self.s3.to_mapping()
        if self.hook_environment:
            data["hook_environment"] = dict(self.hook_environment)
        data["spec_signer_certificate"] = self.spec_signer_certificate
        return data


_REQUIRED: Final = (
    "endpoint",
    "region",
    "instance_name",
    "host_identifier",
    "access_key_id",
    "secret_access_key",
    "root_dir",
    "spec_signer_certificate",
)
_OPTIONAL: Final = (
    "destination_root",
    "max_revisions",
    "poll_read_timeout",
    "heartbeat_interval",
    "ca_bundle",
    "s3",
    "git_base_url",
    "hook_environment",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables the agent sets itself (codedeploy-spec §7.2); the config may not override them.
RESERVED_HOOK_VARIABLES: Final = frozenset(
    {
        "PATH",
        "LIFECYCLE_EVENT",
        "DEPLOYMENT_ID",
        "APPLICATION_NAME",
        "DEPLOYMENT_GROUP_NAME",
        "DEPLOYMENT_GROUP_ID",
        "BUNDLE_BUCKET",
        "BUNDLE_KEY",
        "BUNDLE_VERSION",
        "BUNDLE_ETAG",
        "BUNDLE_COMMIT",
    }
)
_S3_KEYS: Final = ("endpoint_url", "region", "access_key_id", "secret_access_key")


def load_config(path: Path | str, *, check_permissions: bool = True) -> AgentConfig:
    """Read and validate the agent's configuration file.

    With ``check_permissions`` (the default) a file that its group or other users may read or
    write is refused, as ssh refuses such a key file.
    """
    path = Path(path)
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            path, "no such file; create it with `opendeploy agent register`"
        ) from None
    except OSError as exc:
        raise ConfigError(path, f"cannot be read: {exc.strerror or exc}") from None
    if check_permissions and stat.S_IMODE(info.st_mode) & 0o077:
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        raise ConfigError(
            path,
            f"has mode {mode}, so other users can read the agent's secret key; "
            f"run: chmod 600 {path}",
        )
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(path, f"is not valid YAML{line}: {problem}") from None
    return parse_config(data, file=path)


def parse_config(data: object, *, file: Path | str = "<config>") -> AgentConfig:
    """Validate an already-parsed configuration mapping."""
    if not isinstance(data, Mapping):
        raise ConfigError(file, "must be a YAML mapping of settings")
    unknown = sorted(str(key) for key in data if key not in _REQUIRED + _OPTIONAL)
    if unknown:
        raise ConfigError(
            file,
            "unknown setting; known settings are " + ", ".join(_REQUIRED + _OPTIONAL),
            field=unknown[0],
        )
    for key in _REQUIRED:
        if data.get(key) in (None, ""):
            raise ConfigError(file, "is required", field=key)
    reader = _Reader(file, data)
    endpoint = reader.url("endpoint")
    certificate = reader.text("spec_signer_certificate")
    if not is_pem_certificate(certificate):
        raise ConfigError(
            file,
            "is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
            field="spec_signer_certificate",
        )
    ca_bundle = reader.optional_path("ca_bundle")
    return AgentConfig(
        endpoint=endpoint,
        region=reader.text("region"),
        instance_name=reader.text("instance_name"),
        host_identifier=reader.text("host_identifier"),
        access_key_id=reader.text("access_key_id"),
        secret_access_key=reader.text("secret_access_key", secret=True),
        root_dir=reader.absolute_path("root_dir"),
        spec_signer_certificate=certificate,
        destination_root=reader.absolute_path("destination_root", default="/"),
        max_revisions=reader.integer("max_revisions", DEFAULT_MAX_REVISIONS, minimum=1),
        poll_read_timeout=reader.seconds("poll_read_timeout", DEFAULT_POLL_READ_TIMEOUT),
        heartbeat_interval=reader.seconds("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL),
        ca_bundle=ca_bundle,
        s3=reader.s3(),
        git_base_url=reader.text("git_base_url", default=DEFAULT_GIT_BASE_URL),
        hook_environment=reader.hook_environment(),
    )


_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


def is_pem_certificate(text: str) -> bool:
    """Whether ``text`` holds a PEM certificate block whose DER is one whole ASN.1 SEQUENCE.

    A shape check only, so that loading the configuration does not load an X.509 library
    into an agent that may idle for days; the envelope check parses the certificate fully
    when the first deployment specification arrives.
    """
    match = _PEM_CERTIFICATE.search(text)
    if match is None:
        return False
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return len(der) == 2 + first
    count = first & 0x7F
    if not 1 <= count <= 4 or len(der) < 2 + count:
        return False
    return len(der) == 2 + count + int.from_bytes(der[2 : 2 + count], "big")


def validate_hook_environment(value: object, *, file: Path | str) -> dict[str, str]:
    """``hook_environment`` checked as the config file's would be."""
    return _Reader(file, {"hook_environment": value}).hook_environment()


def write_config(path: Path | str, config: AgentConfig) -> None:
    """Write ``config`` as YAML with mode 0600, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_mapping(), sort_keys=False, default_flow_style=False)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class _Reader:
    def __init__(self, file: Path | str, data: Mapping[Any, Any]) -> None:
        self.file = file
        self.data = data

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, message, field=key)

    def text(self, key: str, *, default: str | None = None, secret: bool = False) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            shown = "a value that is not text" if secret else f"{value!r}"
            raise self.fail(key, f"must be non-empty text, not {shown}")
        return value.strip() if not key.endswith("certificate") else value

    def url(self, key: str, value: object | None = None) -> str:
        value = self.data.get(key) if value is None else value
        if not isinstance(value, str):
            raise self.fail(key, f"must be an http:// or https:// URL, not {value!r}")
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.fail(key, f"must be an http:// or https:// URL, not {value!r}")
        if "@" in parts.netloc:
            raise self.fail(key, "must not carry credentials in the URL")
        return value.strip().rstrip("/")

    def absolute_path(self, key: str, *, default: str | None = None) -> Path:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value.startswith("/"):
            raise self.fail(key, f"must be an absolute path, not {value!r}")
        return Path(value)

    def optional_path(self, key: str) -> Path | None:
        if self.data.get(key) is None:
            return None
        path = self.absolute_path(key)
        if not path.is_file():
            raise self.fail(key, f"{path} is not a readable file")
        return path

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be a whole number of at least {minimum}, not {value!r}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, f"must be a positive number of seconds, not {value!r}")
        return float(value)

    def hook_environment(self) -> dict[str, str]:
        value = self.data.get("hook_environment") or {}
        if not isinstance(value, Mapping):
            raise self.fail("hook_environment", "must be a mapping of NAME: value")
        result: dict[str, str] = {}
        for name, item in value.items():
            where = f"hook_environment.{name}"
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise self.fail(where, "is not a valid environment variable name")
            if name in RESERVED_HOOK_VARIABLES:
                raise self.fail(where, "is set by the agent for every hook and cannot be changed")
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise self.fail(where, f"must be text, not {item!r}")
            result[name] = str(item)
        return result

    def s3(self) -> S3Config | None:
        value = self.data.get("s3")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(
                "s3",
                "must be a mapping with endpoint_url, region, access_key_id, secret_access_key",
            )
        unknown = sorted(str(key) for key in value if key not in _S3_KEYS)
        if unknown:
            raise self.fail(f"s3.{unknown[0]}", "unknown setting; known: " + ", ".join(_S3_KEYS))
        fields: dict[str, str | None] = {}
        for key in _S3_KEYS:
            item = value.get(key)
            if item is not None and (not isinstance(item, str) or not item.strip()):
                shown = "a value that is not text" if key == "secret_access_key" else repr(item)
                raise self.fail(f"s3.{key}", f"must be non-empty text, not {shown}")
            fields[key] = item.strip() if isinstance(item, str) else None
        if fields["endpoint_url"] is not None:
            fields["endpoint_url"] = self.url("s3.endpoint_url", fields["endpoint_url"])
        if (fields["access_key_id"] is None) != (fields["secret_access_key"] is None):
            raise self.fail("s3", "give both access_key_id and secret_access_key, or neither")
        return S3Config(**fields)
