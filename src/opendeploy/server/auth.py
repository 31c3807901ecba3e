"""Who is calling: SigV4 verification against stored keys, then the caller's policies.

Who a key stands for (the key, its user, the user's policies and the unsealed secret) is kept
in memory for ``cache_seconds`` (300 s): an idle agent calls once per long poll, 45 s apart,
so only a cache that outlives a poll saves the read. It never serves a revoked permission
longer than the change takes to reach it: deleting a key or a user and attaching or detaching
a policy is announced by ``store.identities`` to this process's cache when it commits and, on
PostgreSQL, to the other replicas through NOTIFY (``store.wakeups`` listens; while its
connection is down and when it comes back, caches are emptied). Only a change made outside
OpenDeploy (SQL run by hand) waits out ``cache_seconds``. Unknown and inactive keys are never
kept: a new key works at once.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from opendeploy.core.errors import AuthError
from opendeploy.core.policies import is_allowed, roles_of
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import Caller
from opendeploy.server.sigv4 import verify_request
from opendeploy.store import identities
from opendeploy.store.database import Database

__all__ = ["CALLER_CACHE_SECONDS", "Authenticator"]

#: How long who a key stands for is kept without being asked of the database.
CALLER_CACHE_SECONDS = 300.0
#: Keys kept in memory at most; past this the oldest half is dropped.
_CACHE_LIMIT = 50_000


@dataclass(frozen=True)
class _Known:
    caller: Caller
    secret: str
    expires: float
    #: ``identities.changes.version`` of the user when read.
    version: int


class _Signed(NamedTuple):
    """What a SigV4 check reads of one request."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes | None
    services: Collection[str]
    now: dt.datetime


class _NotCached(Exception):
    """The key's identity is not in memory (``authenticate_cached`` answers None)."""


class Authenticator:
    def __init__(
        self,
        db: Database,
        secrets: SecretBox,
        *,
        cache_seconds: float = CALLER_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        changes: identities.IdentityChanges = identities.changes,
    ) -> None:
        self._db = db
        self._secrets = secrets
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._changes = changes
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()

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
        """The verified caller and the SigV4 service it signed for (may read the database)."""
        request = _Signed(method, path, query, headers, body, services, now)
        return self._verify(request, lambda key: self._cached(key) or self._load(key))

    def authenticate_cached(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        services: Collection[str],
        now: dt.datetime,
    ) -> tuple[Caller, str] | None:
        """As :meth:`authenticate`, without any I/O: None when the key is not in memory (then
        call :meth:`authenticate`). Cheap enough for an event loop."""

        def cached_only(access_key_id: str) -> _Known:
            known = self._cached(access_key_id)
            if known is None:
                raise _NotCached
            return known

        try:
            return self._verify(
                _Signed(method, path, query, headers, body, services, now), cached_only
            )
        except _NotCached:
            return None

    @staticmethod
    def _verify(request: _Signed, lookup: Callable[[str], _Known | None]) -> tuple[Caller, str]:
        found: dict[str, Caller] = {}

        def secret_for(access_key_id: str) -> str | None:
            known = lookup(access_key_id)
            if known is None:
                return None
            found[access_key_id] = known.caller
            return known.secret

        signed = verify_request(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=request.body,
            secret_for=secret_for,
            now=request.now,
            services=request.services,
        )
        return found[signed.access_key_id], signed.service

    def _cached(self, access_key_id: str) -> _Known | None:
        known = self._known.get(access_key_id)
        if known is None:
            return None
        if (
            known.expires <= self._clock()
            or self._changes.version(known.caller.user_name) != known.version
        ):
            with self._lock:
                if self._known.get(access_key_id) is known:
                    del self._known[access_key_id]
            return None
        return known

    def _load(self, access_key_id: str) -> _Known | None:
        """Read the key, its user and policies in one transaction; cache what is usable."""
        before = self._changes.count
        with self._db.read() as connection:
            record = identities.key_with_secret(connection, access_key_id)
            if record is None or record[0].status != "Active":
                return None
            key, sealed = record
            user = identities.user_by_name(connection, key.user_name)
            if user is None:
                return None
            policies = identities.policies_of(connection, user.name)
        version = self._changes.version(user.name)
        known = _Known(
            caller=Caller(
                user_name=user.name,
                arn=user.arn,
                policies=frozenset(policies),
                access_key_id=access_key_id,
            ),
            secret=self._secrets.open(sealed),
            expires=self._clock() + self.cache_seconds,
            version=version,
        )
        if version > before:
            # The user changed while we read: use what we read for this request only.
            return known
        with self._lock:
            if len(self._known) >= _CACHE_LIMIT:
                for stale in list(self._known)[: _CACHE_LIMIT // 2]:
                    del self._known[stale]
            self._known[access_key_id] = known
        return known

    @staticmethod
    def authorize(caller: Caller, service: str, operation: str) -> None:
        if not is_allowed(roles_of(caller.policies), service, operation):
            raise AuthError(
                "AccessDenied" if service == "iam" else "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: {service}:{operation}",
            )
