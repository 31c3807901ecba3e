"""One exception tree for the whole project.

    OpenDeployError                     base of everything we raise on purpose
    ├── ServiceError                    an error a client of the public API sees; ``code`` is the
    │   │                               CodeDeploy (or IAM) exception name, e.g.
    │   │                               ``ApplicationDoesNotExistException``
    │   ├── AuthError                   signature, key or permission problems (HTTP 400/403)
    │   └── NotImplementedOperation     a modelled operation this server does not offer yet
    ├── Conflict                        the store refused a write that breaks a uniqueness rule
    ├── IllegalTransition               the engine asked for a status change the tables forbid
    └── AppSpecError                    an appspec that cannot be used; carries file, line, field

The HTTP adapters translate ``ServiceError`` into ``{"__type": code, "message": ...}`` with the
status it carries. Nothing below the adapters knows about HTTP.
"""

from __future__ import annotations

__all__ = [
    "AppSpecError",
    "AuthError",
    "Conflict",
    "IllegalTransition",
    "NotImplementedOperation",
    "OpenDeployError",
    "ServiceError",
]


class OpenDeployError(Exception):
    """Base of every error OpenDeploy raises on purpose."""


class ServiceError(OpenDeployError):
    """An API error with a CodeDeploy exception name and a human message."""

    status: int = 400

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class AuthError(ServiceError):
    """A request whose signature, key or permissions do not allow it."""

    status = 403


class NotImplementedOperation(ServiceError):
    """A modelled operation that this server does not serve yet."""

    def __init__(self, operation: str) -> None:
        super().__init__(
            "OperationNotSupportedException",
            f"The operation {operation} is not available in this OpenDeploy server yet.",
        )
        self.operation = operation


class Conflict(OpenDeployError):
    """A write that would break a uniqueness rule (two servers racing on one name)."""


class IllegalTransition(OpenDeployError):
    """A status change that the transition tables do not allow."""

    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"{kind} cannot go from {current} to {target}")
        self.kind = kind
        self.current = current
        self.target = target


class AppSpecError(OpenDeployError):
    """An appspec that cannot be used, with where the problem is.

    ``field`` is the key path (``hooks.AfterInstall[0].timeout``); ``line`` is 1-based when the
    parser knows it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str = "appspec.yml",
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.reason = message
        where = file + (f":{line}" if line is not None else "")
        if field:
            where += f" at {field}"
        super().__init__(f"{where}: {message}")
