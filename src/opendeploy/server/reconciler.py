"""Background work that time alone triggers: agents that went silent.

``step(now)`` is one pass; ``Reconciler.run`` repeats it in a thread until stopped. Deadlines
are re-derived from stored timestamps every pass, so a restarted server resumes where it was.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from opendeploy.core.engine import HostLost
from opendeploy.server.service.context import ServiceContext
from opendeploy.server.service.engine_runner import feed
from opendeploy.store import contacts as contact_store
from opendeploy.store import deployments as store
from opendeploy.store import leases

__all__ = ["LEASE", "Reconciler"]

log = logging.getLogger(__name__)

#: The lease whose holder runs the passes when several replicas share a database.
LEASE = "reconciler"


class Reconciler:
    def __init__(
        self, ctx: ServiceContext, *, heartbeat_timeout: float = 60.0, interval: float = 5.0
    ) -> None:
        self.ctx = ctx
        self.heartbeat_timeout = heartbeat_timeout
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When this reconciler started (a restarted server gives agents a full timeout).
        self.started_at = ctx.clock()
        #: This replica, as lease holder.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def step(self, now: float) -> int:
        """Fail the open commands of hosts silent for longer than the heartbeat timeout.

        With several replicas only the holder of the ``reconciler`` lease does it.
        """
        if not leases.acquire(
            self.ctx.db, LEASE, self.holder, now=now, ttl=max(3 * self.interval, 15.0)
        ):
            return 0
        with self.ctx.db.read() as connection:
            open_commands = store.overdue_commands(connection)
            contacts = contact_store.last_contacts(
                connection, sorted({command.instance_name for command, _ in open_commands})
            )
        lost = 0
        for command, _ in open_commands:
            # Time this server was down is nobody's silence: count from its start at most.
            reference = max(
                contacts.get(command.instance_name, 0.0), command.created_time, self.started_at
            )
            silent = now - reference
            if silent <= self.heartbeat_timeout:
                continue
            log.warning(
                "deployment %s: host %s silent for %.0f s; failing %s",
                command.deployment_id,
                command.instance_name,
                silent,
                command.event,
            )
            feed(
                self.ctx,
                command.deployment_id,
                HostLost(command.instance_name, silent, self.heartbeat_timeout),
            )
            lost += 1
        return lost

    def start(self) -> None:
        self.started_at = self.ctx.clock()
        self._thread = threading.Thread(target=self._run, name="opendeploy-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, then release the ``reconciler`` lease so that another replica takes
        over at its next pass instead of once the lease has expired.

        The lease is released only once the loop has ended: a pass still running would renew
        it. The database must still be open."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("the reconciler pass did not end; its lease will expire on its own")
            return
        try:
            leases.release(self.ctx.db, LEASE, self.holder)
        except Exception:
            log.exception("releasing the reconciler lease failed; it will expire on its own")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step(self.ctx.clock())
            except Exception:
                log.exception("reconciler pass failed; retrying in %.0f s", self.interval)
