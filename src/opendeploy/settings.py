"""Typed settings, read only by entry points (env prefix ``OPENDEPLOY_``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """How one server process runs.

    data_dir: holds the SQLite database, the bundle store, the secret key and the admin
        credentials written at first start.
    database_url: SQLAlchemy URL; empty means SQLite in ``data_dir``.
    secret_key: the key that seals access-key secrets at rest; empty means the key file in
        ``data_dir`` (replicas sharing a database must share this key).
    region: the region in ARNs and the one clients sign for (any region is accepted).
    max_request_bytes: bodies larger than this are refused.
    heartbeat_timeout: seconds an agent with unfinished work may stay silent before its
        lifecycle event fails as "heartbeat lost".
    long_poll_seconds: how long PollHostCommand is held when there is nothing to do.
    reconcile_interval: seconds between passes of the background reconciler.
    bundle_store: where pushed revisions go: empty for ``data_dir/bundles``, or
        ``s3://bucket/prefix`` on any S3-compatible store.
    s3_endpoint_url: the S3 endpoint for an ``s3://`` bundle store (empty: AWS's).
    max_bundle_bytes: the largest revision bundle a push may upload.
    """

    data_dir: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "us-east-1"
    secret_key: str = field(default="", repr=False)
    max_request_bytes: int = 1024 * 1024
    strict_shapes: bool = False
    heartbeat_timeout: float = 60.0
    long_poll_seconds: float = 45.0
    reconcile_interval: float = 5.0
    bundle_store: str = ""
    s3_endpoint_url: str = ""
    max_bundle_bytes: int = 2 * 1024 * 1024 * 1024

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'opendeploy.db').resolve()}"

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:  # an IPv6 address goes in brackets
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerSettings:
        """Settings from ``OPENDEPLOY_*`` variables; explicit overrides win when not None."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "data_dir": Path(env.get("OPENDEPLOY_DATA_DIR", "./od-data")),
            "database_url": env.get("OPENDEPLOY_DATABASE_URL", ""),
            "host": env.get("OPENDEPLOY_HOST", "127.0.0.1"),
            "port": int(env.get("OPENDEPLOY_PORT", "8080")),
            "region": env.get("OPENDEPLOY_REGION", "us-east-1"),
            "secret_key": env.get("OPENDEPLOY_SECRET_KEY", ""),
            "heartbeat_timeout": float(env.get("OPENDEPLOY_HEARTBEAT_TIMEOUT", "60")),
            "long_poll_seconds": float(env.get("OPENDEPLOY_LONG_POLL_SECONDS", "45")),
            "bundle_store": env.get("OPENDEPLOY_BUNDLE_STORE", ""),
            "s3_endpoint_url": env.get("OPENDEPLOY_S3_ENDPOINT_URL", ""),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
