"""First start: migrations, the sealing key, the account id and the first admin's key."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from opendeploy.bundles.store import open_store
from opendeploy.core.errors import Conflict, ServiceError
from opendeploy.core.policies import POLICY_ARNS, Role
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service import iam
from opendeploy.server.service.context import ServiceContext
from opendeploy.settings import ServerSettings
from opendeploy.store import identities, meta
from opendeploy.store.database import Database

__all__ = ["ADMIN_USER", "Bootstrap", "bootstrap"]

ADMIN_USER = "admin"
CREDENTIALS_FILE = "admin-credentials"


@dataclass(frozen=True)
class Bootstrap:
    context: ServiceContext
    #: Where the first admin's key was written, when this start created it.
    credentials_file: Path | None


def _secret_box(settings: ServerSettings) -> SecretBox:
    if settings.secret_key:
        return SecretBox.from_key(settings.secret_key, source="OPENDEPLOY_SECRET_KEY")
    return SecretBox.from_file(settings.data_dir / "secret.key")


def _write_credentials(path: Path, access_key_id: str, secret: str) -> None:
    text = f"[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _create_admin(context: ServiceContext, data_dir: Path) -> Path | None:
    """Create the admin user and its first key unless any user exists already."""
    with context.db.write() as connection:
        if identities.users_page(connection, "/", None, 1)[0]:
            return None
        user = iam.new_user(context, ADMIN_USER)
        try:
            identities.create_user(connection, user)
        except Conflict:
            return None
        identities.attach_policy(connection, user.name, POLICY_ARNS[Role.ADMIN])
        key = iam.issue_access_key(context, connection, user)
        path = data_dir / CREDENTIALS_FILE
        _write_credentials(path, key["AccessKeyId"], key["SecretAccessKey"])
    return path


def bootstrap(settings: ServerSettings) -> Bootstrap:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(settings.resolved_database_url)
    try:
        db.upgrade()
    except Exception as error:
        db.dispose()
        raise ServiceError(
            "DatabaseUnavailable", f"Cannot prepare the database: {error}"
        ) from error
    box = _secret_box(settings)
    with db.write() as connection:
        account = meta.get_or_create(
            connection, "account_id", "".join(secrets.choice("0123456789") for _ in range(12))
        )
    context = ServiceContext(
        db=db,
        secrets=box,
        account_id=account,
        region=settings.region,
        clock=time.time,
        max_instances_per_deployment=settings.max_instances_per_deployment,
        bundles=open_store(
            settings.bundle_store,
            data_dir=settings.data_dir,
            s3_endpoint_url=settings.s3_endpoint_url or None,
        ),
    )
    return Bootstrap(context=context, credentials_file=_create_admin(context, settings.data_dir))
