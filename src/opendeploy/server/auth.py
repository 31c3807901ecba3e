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


class Authenticator:
    def __init__(self, db: Database, secrets: SecretBox) -> None:
        self._db = db
        self._secrets = secrets

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
        """The verified caller and the SigV4 service it signed for."""
        found: dict[str, tuple[str, str]] = {}

        def secret_for(access_key_id: str) -> str | None:
            with self._db.read() as connection:
                record = identities.key_with_secret(connection, access_key_id)
            if record is None or record[0].status != "Active":
                return None
            key, sealed = record
            found[access_key_id] = (key.user_name, sealed)
            return self._secrets.open(sealed)

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
        user_name = found[signed.access_key_id][0]
        with self._db.read() as connection:
            user = identities.user_by_name(connection, user_name)
            policies = identities.policies_of(connection, user_name)
        if user is None:
            raise AuthError(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                status=400,
            )
        caller = Caller(
            user_name=user.name,
            arn=user.arn,
            policies=frozenset(policies),
            access_key_id=signed.access_key_id,
        )
        return caller, signed.service

    @staticmethod
    def authorize(caller: Caller, service: str, operation: str) -> None:
        if not is_allowed(roles_of(caller.policies), service, operation):
            raise AuthError(
                "AccessDenied" if service == "iam" else "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: {service}:{operation}",
            )
