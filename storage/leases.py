"""Lease renewal from a thread of its own, on a database connection of its own.

A process keeps the runs it executes by renewing their leases every third of a lease. If that depended on
the event loop, one ``async def`` step that blocks the loop (CPU-bound code, ``time.sleep``, a sync HTTP call)
for longer than a lease would let other processes take over every run of this one, and the step would run
again there, and block that loop too. So the renewal runs in a thread with its own connection: SQLite's
``BEGIN IMMEDIATE`` waits its turn beside the engine's writer (one short UPDATE every few seconds), and
PostgreSQL gets one more connection. Runs found lost (canceled, or taken over while the database was out of
reach) are handed to the event loop to stop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection

from .backends import SideWriter
from .database import Database
from .runs import renew_leases

log = logging.getLogger("threadflow.storage")


class LeaseKeeper:
    """Renews ``owner``'s leases on ``held()`` every ``lease_seconds / 3`` until stopped.

    ``on_lost(ids)`` is called on the event loop with the runs it no longer holds.
    """

    def __init__(
        self,
        db: Database,
        owner: str,
        lease_seconds: float,
        held: Callable[[], Collection[str]],
        on_lost: Callable[[set[str]], None],
    ) -> None:
        self.db = db
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = max(0.05, lease_seconds / 3)
        self._held = held
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Renewals that committed (tests and metrics read it).
        self.renewals = 0

    def start(self) -> bool:
        """Start the thread; False if this database cannot be written from another thread (in-memory SQLite)."""
        writer = self.db.side_writer(timeout=max(1.0, self.interval))
        if writer is None:
            return False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(writer,), name="threadflow-leases", daemon=True)
        self._thread.start()
        return True

    async def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, self.interval + 10.0)

    def _run(self, writer: SideWriter) -> None:
        try:
            while not self._stop.wait(self.interval):
                ids = list(self._held())
                if ids:
                    self._renew(writer, ids)
        finally:
            writer.close()

    def _renew(self, writer: SideWriter, ids: list[str]) -> None:
        try:
            lost: set[str] = writer.run(renew_leases(self.owner, ids, self.lease_seconds))
        except Exception as exc:  # retried at the next interval; counted and logged once per outage
            self._call_soon(self.db.report_fault, "lease renewal", exc)
            return
        self.renewals += 1
        self._call_soon(self.db.report_recovered, "lease renewal")
        if lost:
            self._call_soon(self._on_lost, lost)

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is stopping
            self._stop.set()
