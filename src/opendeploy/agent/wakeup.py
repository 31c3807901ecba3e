"""A wake-up a signal handler may give: the agent's main thread blocks here, without polling.

The main thread waits for a worker thread (the long poll, the running command) or for a stop
request from a signal handler. ``threading.Event`` cannot serve the second: its ``set()``
takes a lock that the interrupted main thread may hold inside ``Event.wait()``, and a handler
that blocks on it deadlocks the agent. A self-pipe needs no lock, and with
``signal.set_wakeup_fd(wakeup.fileno())`` a signal that the kernel delivers to another thread
still ends the main thread's wait at once, so that Python runs the handler promptly.
"""

from __future__ import annotations

import contextlib
import os
import select
import weakref

__all__ = ["Wakeup"]


class Wakeup:
    """A self-pipe: ``notify()`` from any thread or signal handler ends a ``wait()``.

    Waiters call ``clear()`` before they look at what they wait for, then ``wait()``: a
    notification that comes in between is not lost (the byte stays in the pipe).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        for descriptor in (self._read, self._write):
            os.set_blocking(descriptor, False)
        self._poller = select.poll()
        self._poller.register(self._read, select.POLLIN)
        self._closer = weakref.finalize(self, _close, self._read, self._write)

    def fileno(self) -> int:
        """The write end, for ``signal.set_wakeup_fd``."""
        return self._write

    def notify(self) -> None:
        # Full: a wake-up is pending anyway. Closed: nobody waits any more.
        with contextlib.suppress(OSError):
            os.write(self._write, b"\0")

    def clear(self) -> None:
        """Forget the notifications so far."""
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            return

    def wait(self, timeout: float | None = None) -> bool:
        """Block until notified (True) or ``timeout`` seconds passed (False)."""
        milliseconds = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(self._poller.poll(milliseconds))

    def close(self) -> None:
        self._closer()


def _close(*descriptors: int) -> None:
    for descriptor in descriptors:
        try:
            os.close(descriptor)
        except OSError:
            continue
