"""Who is looking at the dashboard: access-key sign-in, session cookies, CSRF tokens.

Framework-free: the Starlette glue in ``routes`` hands strings in and gets strings out.

- Sign-in takes an access key id and its secret. The secret is checked against the stored
  sealed secret with a constant-time comparison (browsers do not sign requests with SigV4).
  Only users whose roles may read the public API (reader, deployer, admin) may sign in.
- A session is a Fernet token (AES-128-CBC + HMAC-SHA256, so encrypted and authenticated)
  holding the access key id, a random session id and the session's CSRF token. Its key is
  random per installation, stored in ``meta`` sealed with the server's SecretBox, so replicas
  that share a database accept each other's sessions and a database dump alone forges none.
- Sessions expire (``lifetime``); Fernet's own timestamp is the issue time. Every request
  reads the key, its user and the user's policies again, so deleting a key, or detaching a
  role, ends its sessions at once. Signing out also revokes the session id in this process.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Connection

from opendeploy.core.errors import OpenDeployError
from opendeploy.core.policies import PUBLIC, Role, is_allowed, roles_of
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import Caller
from opendeploy.store import identities, meta
from opendeploy.store.database import Database

__all__ = [
    "SESSION_KEY_META",
    "Session",
    "SessionKeeper",
    "Viewer",
    "tokens_match",
]

#: The ``meta`` key under which the sealed session key is kept.
SESSION_KEY_META = "dashboard_session_key"
#: How long a session lasts, in seconds (absolute, not sliding).
DEFAULT_LIFETIME = 8 * 3600
#: How long a sign-in form stays valid, in seconds.
SIGN_IN_FORM_LIFETIME = 15 * 60
#: The longest access key id or secret accepted at sign-in.
MAX_CREDENTIAL_LENGTH = 256


@dataclass(frozen=True)
class Session:
    access_key_id: str
    session_id: str
    csrf_token: str


@dataclass(frozen=True)
class Viewer:
    """The signed-in person, as every page sees them."""

    caller: Caller
    roles: frozenset[Role]
    session: Session

    @property
    def user_name(self) -> str:
        return self.caller.user_name

    @property
    def role_label(self) -> str:
        for role in (Role.ADMIN, Role.DEPLOYER, Role.READER):
            if role in self.roles:
                return role.value
        return "none"

    def may(self, operation: str) -> bool:
        """Whether the API would let this person call ``operation`` (CodeDeploy's)."""
        return is_allowed(self.roles, PUBLIC, operation)

    @property
    def can_stop(self) -> bool:
        return self.may("StopDeployment")

    @property
    def can_deploy(self) -> bool:
        return self.may("CreateDeployment")


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison of two tokens; a missing one never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def _random_token() -> str:
    return secrets.token_urlsafe(32)


class SessionKeeper:
    """Issues and checks sessions and sign-in forms for one server process."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        clock: Callable[[], float],
        lifetime: int = DEFAULT_LIFETIME,
    ) -> None:
        self._db = db
        self._box = box
        self._clock = clock
        self.lifetime = lifetime
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()
        #: Session ids signed out in this process -> when their cookie would expire anyway.
        self._revoked: dict[str, float] = {}

    # -- the key --------------------------------------------------------------------------

    def _key(self) -> Fernet:
        """The installation's session key, made and stored (sealed) on first use."""
        with self._lock:
            if self._fernet is None:
                with self._db.write() as connection:
                    sealed = meta.get_or_create(
                        connection, SESSION_KEY_META, self._box.seal(Fernet.generate_key().decode())
                    )
                self._fernet = Fernet(self._box.open(sealed).encode("ascii"))
            return self._fernet

    def _seal(self, payload: dict[str, str]) -> str:
        data = json.dumps(payload, separators=(",", ":")).encode()
        return self._key().encrypt_at_time(data, int(self._clock())).decode("ascii")

    def _unseal(self, token: str | None, ttl: int) -> dict[str, str] | None:
        if not token or len(token) > 4096:
            return None
        try:
            data = self._key().decrypt_at_time(token.encode("ascii"), ttl, int(self._clock()))
            payload = json.loads(data)
        except (InvalidToken, UnicodeEncodeError, ValueError):
            return None
        if not isinstance(payload, dict) or not all(
            isinstance(value, str) for value in payload.values()
        ):
            return None
        return payload

    # -- sign-in forms (login CSRF) -------------------------------------------------------

    def new_sign_in_form(self) -> tuple[str, str]:
        """``(cookie value, form token)`` for a sign-in form: the form's token must come back
        with the cookie, so another site cannot sign a browser in to its own account."""
        nonce = _random_token()
        return self._seal({"purpose": "sign-in", "n": nonce}), nonce

    def check_sign_in_form(self, cookie: str | None, form_token: str | None) -> bool:
        payload = self._unseal(cookie, SIGN_IN_FORM_LIFETIME)
        if payload is None or payload.get("purpose") != "sign-in":
            return False
        return tokens_match(payload.get("n", ""), form_token)

    # -- credentials ----------------------------------------------------------------------

    def check_credentials(self, access_key_id: str, secret: str) -> Caller | None:
        """The caller owning this active key if ``secret`` is its secret and the caller may
        read the API; None otherwise (the reason is not told, to the caller or the page)."""
        if (
            not access_key_id
            or not secret
            or len(access_key_id) > MAX_CREDENTIAL_LENGTH
            or len(secret) > MAX_CREDENTIAL_LENGTH
        ):
            return None
        with self._db.read() as connection:
            record = identities.key_with_secret(connection, access_key_id)
            if record is None:
                return None
            key, sealed = record
            caller = _caller_of(connection, key.access_key_id) if key.status == "Active" else None
        if caller is None:
            return None
        try:
            stored = self._box.open(sealed)
        except OpenDeployError:
            return None
        if not hmac.compare_digest(stored.encode("utf-8"), secret.encode("utf-8")):
            return None
        if not is_allowed(roles_of(caller.policies), PUBLIC, "GetDeployment"):
            return None
        return caller

    # -- sessions -------------------------------------------------------------------------

    def issue(self, caller: Caller) -> tuple[str, Session]:
        """A new session for ``caller``: ``(cookie value, session)``."""
        session = Session(
            access_key_id=caller.access_key_id,
            session_id=_random_token(),
            csrf_token=_random_token(),
        )
        cookie = self._seal(
            {
                "purpose": "session",
                "k": session.access_key_id,
                "s": session.session_id,
                "c": session.csrf_token,
            }
        )
        return cookie, session

    def open(self, cookie: str | None) -> Session | None:
        """The session in ``cookie`` if it is genuine, unexpired and not signed out."""
        payload = self._unseal(cookie, self.lifetime)
        if payload is None or payload.get("purpose") != "session":
            return None
        try:
            session = Session(
                access_key_id=payload["k"], session_id=payload["s"], csrf_token=payload["c"]
            )
        except KeyError:
            return None
        with self._lock:
            if session.session_id in self._revoked:
                return None
        return session

    def viewer(self, cookie: str | None) -> Viewer | None:
        """The signed-in person behind ``cookie``, with their current roles; None when the
        session is not valid or its key, user or roles no longer allow the dashboard."""
        session = self.open(cookie)
        if session is None:
            return None
        with self._db.read() as connection:
            caller = _caller_of(connection, session.access_key_id)
        if caller is None:
            return None
        roles = roles_of(caller.policies)
        if not is_allowed(roles, PUBLIC, "GetDeployment"):
            return None
        return Viewer(caller=caller, roles=roles, session=session)

    def revoke(self, session: Session) -> None:
        now = self._clock()
        with self._lock:
            self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
            self._revoked[session.session_id] = now + self.lifetime


def _caller_of(connection: Connection, access_key_id: str) -> Caller | None:
    """The active key's owner with their policies, read in the caller's transaction."""
    record = identities.key_with_secret(connection, access_key_id)
    if record is None or record[0].status != "Active":
        return None
    user = identities.user_by_name(connection, record[0].user_name)
    if user is None:
        return None
    return Caller(
        user_name=user.name,
        arn=user.arn,
        policies=frozenset(identities.policies_of(connection, user.name)),
        access_key_id=access_key_id,
    )
