"""What every use case is handed: the database, the clock, the ids, the account."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opendeploy.bundles.store import BundleStore
from opendeploy.core.errors import ServiceError
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.batches import Batches
from opendeploy.server.service.notify import CommandNotifier, NoNotifier
from opendeploy.store.database import Database
from opendeploy.store.snapshots import SnapshotCache

__all__ = ["PAGE_SIZE", "Caller", "ServiceContext", "decode_token", "encode_token"]

#: Largest page any List operation returns (AWS: at most 100).
PAGE_SIZE = 100


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one request."""

    user_name: str
    arn: str
    policies: frozenset[str]
    access_key_id: str


@dataclass
class ServiceContext:
    db: Database
    secrets: SecretBox
    account_id: str
    region: str
    clock: Callable[[], float]
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))
    page_size: int = PAGE_SIZE
    caller: Caller | None = None
    notifier: CommandNotifier = field(default_factory=NoNotifier)
    #: Where pushed revisions live; None when this server takes no pushes.
    bundles: BundleStore | None = None
    #: Deployment snapshots this process fed events to (shared by every request's copy).
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)
    #: Targets one deployment may have (AWS: 1000, an adjustable quota).
    max_instances_per_deployment: int = 1000
    #: Engine events waiting to be applied, by deployment (``engine_runner.feed``).
    feeds: Batches[Any, Any] = field(default_factory=Batches)

    def application_arn(self, name: str) -> str:
        return f"arn:aws:codedeploy:{self.region}:{self.account_id}:application:{name}"

    def group_arn(self, application: str, group: str) -> str:
        prefix = f"arn:aws:codedeploy:{self.region}:{self.account_id}"
        return f"{prefix}:deploymentgroup:{application}/{group}"

    def config_arn(self, name: str) -> str:
        return f"arn:aws:codedeploy:{self.region}:{self.account_id}:deploymentconfig:{name}"

    def instance_arn(self, name: str, suffix: str) -> str:
        return f"arn:aws:codedeploy:{self.region}:{self.account_id}:instance/{name}_{suffix}"

    def user_arn(self, name: str, path: str = "/") -> str:
        return f"arn:aws:iam::{self.account_id}:user{path}{name}"


def encode_token(scope: str, position: Any) -> str:
    """An opaque nextToken that is valid only for the listing (``scope``) that made it."""
    raw = json.dumps({"s": scope, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(scope: str, token: str | None) -> Any:
    if token is None:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError("InvalidNextTokenException", "The nextToken is not valid.") from error
    if not isinstance(data, dict) or data.get("s") != scope:
        raise ServiceError(
            "InvalidNextTokenException", "The nextToken was not issued for this listing."
        )
    return data.get("p")
