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
    sns_endpoint_url: the SNS endpoint that triggers with an SNS topic ARN publish to (empty:
        AWS's; credentials from the AWS environment, region from the topic ARN).
    trigger_timeout: seconds one trigger delivery attempt may take (connect, send, answer).
    trigger_max_attempts: attempts per trigger delivery before it fails for good.
    trigger_retry_seconds: seconds before a failed delivery's first retry; each later retry
        waits twice as long, at most 5 minutes (defaults: 8 attempts over about 10 minutes).
    trigger_concurrency: trigger deliveries in flight at once.
    prometheus_url: the Prometheus whose alerts are deployment alarms (an alarm name is an
        alert name; in alarm while the alert fires). Empty: none, and a deployment with an
        enabled alarm configuration stops at its first alarm poll unless the configuration
        sets ignorePollAlarmFailure (docs/alarms.md).
    alarm_poll_seconds: seconds between alarm polls while deployments run.
    alertmanager_token: the bearer token Alertmanager presents to ``POST /alertmanager/webhook``;
        empty refuses every push.
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
    max_instances_per_deployment: int = 1000
    long_poll_seconds: float = 45.0
    reconcile_interval: float = 5.0
    bundle_store: str = ""
    s3_endpoint_url: str = ""
    max_bundle_bytes: int = 2 * 1024 * 1024 * 1024
    sns_endpoint_url: str = ""
    trigger_timeout: float = 10.0
    trigger_max_attempts: int = 8
    trigger_retry_seconds: float = 5.0
    trigger_concurrency: int = 4
    prometheus_url: str = ""
    alarm_poll_seconds: float = 5.0
    alertmanager_token: str = field(default="", repr=False)

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
            "max_instances_per_deployment": int(
                env.get("OPENDEPLOY_MAX_INSTANCES_PER_DEPLOYMENT", "1000")
            ),
            "long_poll_seconds": float(env.get("OPENDEPLOY_LONG_POLL_SECONDS", "45")),
            "bundle_store": env.get("OPENDEPLOY_BUNDLE_STORE", ""),
            "s3_endpoint_url": env.get("OPENDEPLOY_S3_ENDPOINT_URL", ""),
            "sns_endpoint_url": env.get("OPENDEPLOY_SNS_ENDPOINT_URL", ""),
            "trigger_timeout": float(env.get("OPENDEPLOY_TRIGGER_TIMEOUT", "10")),
            "trigger_max_attempts": int(env.get("OPENDEPLOY_TRIGGER_MAX_ATTEMPTS", "8")),
            "trigger_retry_seconds": float(env.get("OPENDEPLOY_TRIGGER_RETRY_SECONDS", "5")),
            "trigger_concurrency": int(env.get("OPENDEPLOY_TRIGGER_CONCURRENCY", "4")),
            "prometheus_url": env.get("OPENDEPLOY_PROMETHEUS_URL", ""),
            "alarm_poll_seconds": float(env.get("OPENDEPLOY_ALARM_POLL_SECONDS", "5")),
            "alertmanager_token": env.get("OPENDEPLOY_ALERTMANAGER_TOKEN", ""),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
