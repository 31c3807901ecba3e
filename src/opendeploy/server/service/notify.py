"""How use cases tell waiting long polls that a host has new work.

Framework-free: the agent endpoint supplies an implementation bound to its event loop; the
default does nothing (then long polls find work at their next periodic re-check).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["CommandNotifier", "NoNotifier"]


class CommandNotifier(Protocol):
    def notify(self, instance_names: Iterable[str]) -> None: ...


class NoNotifier:
    def notify(self, instance_names: Iterable[str]) -> None:
        return None
