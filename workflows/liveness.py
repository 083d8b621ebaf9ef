"""What keeps an executing process's hold on its runs while its event loop is busy, and tells a busy loop from a
dead process: the lease keeper thread (``storage/leases.py``), the loop watchdog (``watchdog.py``), the note of
signals sent to the process (``interrupts.py``) and the threads plain ``def`` steps run in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from storage import Database
from storage.leases import LeaseKeeper

from . import interrupts
from .observe import emit
from .step_call import call_step
from .step_threads import StepThreads
from .watchdog import LoopWatchdog, StallSite, log_stall


class Liveness:
    """Started when an engine that executes runs opens, stopped when it closes."""

    def __init__(
        self, db: Database, owner: str, lease_seconds: float, capacity: int,
        held: Callable[[], Collection[str]], lost: Callable[[set[str]], None],
    ) -> None:
        self._db = db
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._capacity = capacity
        self._held = held
        self._lost = lost
        self._keeper: LeaseKeeper | None = None
        self._watchdog: LoopWatchdog | None = None
        self._threads: StepThreads | None = None

    @property
    def keeps_leases(self) -> bool:
        """Leases are renewed by the keeper thread (False: by the engine's heartbeat, on the event loop)."""
        return self._keeper is not None

    def start(self) -> None:
        interrupts.install()
        self._watchdog = LoopWatchdog(asyncio.get_running_loop(), stalled, call_step.__code__)
        self._watchdog.start()
        keeper = LeaseKeeper(self._db, self._owner, self._lease_seconds, self._held, self._lost)
        self._keeper = keeper if keeper.start() else None  # (in-memory SQLite: one connection, no thread)

    async def stop(self) -> None:
        if self._keeper is not None:
            await self._keeper.stop()
            self._keeper = None
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
            interrupts.uninstall()
        if self._threads is not None:
            # Threads of steps that timed out may still run: they are not waited for (nothing can stop them).
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    def step_threads(self) -> StepThreads:
        """The daemon threads plain ``def`` steps run in (as many as runs the engine may execute at once)."""
        if self._threads is None:
            self._threads = StepThreads(max(4, self._capacity), "threadflow-step")
        return self._threads

    @property
    def abandoned_step_threads(self) -> int:
        """Threads of ``def`` steps that timed out and still run (see ``step_threads.py``)."""
        return self._threads.abandoned if self._threads is not None else 0


def stalled(seconds: float, site: StallSite | None) -> None:
    """The event loop answered again after ``seconds``: log it with the step that held it, and count it."""
    log_stall(seconds, site)
    emit("loop.stalled", seconds=seconds, workflow_id=site.workflow_id if site else None,
         step_id=site.step_id if site else None)
