"""Who is calling: SigV4 verification against stored keys, then the caller's policies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

from opendeploy.core.errors import AuthError
from opendeploy.core.policies import is_allowed, roles_of
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import Caller
from opendeploy.server.sigv4 import verify_request
from opendeploy.store import identities
from opendeploy.store.database import Database

__all__ = ["Authenticator"]

#: Unsealed secrets kept in memory (one per active key); the cache is reset past this.
_UNSEALED_LIMIT = 10_000


class Authenticator:
    def __init__(self, db: Database, secrets: SecretBox) -> None:
        self._db = db
        self._secrets = secrets
        self._unsealed: dict[str, str] = {}

    def authenticate(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        services: Collection[str],
        now: dt.datetime,
    ) -> tuple[Caller, str]:
        """The verified caller and the SigV4 service it signed for.

        The key, its user and the user's policies are read in one transaction, before the
        signature is checked, so every request sees revocations at once.
        """
        found: dict[str, Caller] = {}

        def secret_for(access_key_id: str) -> str | None:
            with self._db.read() as connection:
                record = identities.key_with_secret(connection, access_key_id)
                if record is None or record[0].status != "Active":
                    return None
                key, sealed = record
                user = identities.user_by_name(connection, key.user_name)
                if user is None:
                    return None
                policies = identities.policies_of(connection, user.name)
            found[access_key_id] = Caller(
                user_name=user.name,
                arn=user.arn,
                policies=frozenset(policies),
                access_key_id=access_key_id,
            )
            return self._open(sealed)

        signed = verify_request(
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            secret_for=secret_for,
            now=now,
            services=services,
        )
        return found[signed.access_key_id], signed.service

    def _open(self, sealed: str) -> str:
        """Unseal a secret; a sealed value never changes, so its plaintext is kept."""
        secret = self._unsealed.get(sealed)
        if secret is None:
            secret = self._secrets.open(sealed)
            if len(self._unsealed) >= _UNSEALED_LIMIT:
                self._unsealed.clear()
            self._unsealed[sealed] = secret
        return secret

    @staticmethod
    def authorize(caller: Caller, service: str, operation: str) -> None:
        if not is_allowed(roles_of(caller.policies), service, operation):
            raise AuthError(
                "AccessDenied" if service == "iam" else "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: {service}:{operation}",
            )
