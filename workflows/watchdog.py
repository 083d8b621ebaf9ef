"""Noticing when the event loop stops answering, and which step made it stop.

An ``async def`` step that runs CPU-bound code or a blocking call (``time.sleep``, a sync HTTP client)
holds the event loop: no other run makes progress meanwhile. A thread pings the loop four times a second;
a ping that waits longer than STALL_SECONDS is a stall. While it lasts, the thread looks at the loop thread's
stack for the step being executed (the frame of ``RunExecution._call_step``), and when the loop answers
again the stall is reported with that step: logged, and counted in ``/metrics``.

Leases do not depend on this (see ``storage/leases.py``): a busy loop keeps its runs, however long it is busy.
A loop that stays stuck is logged while it lasts too (after 10 s, 1 min, 10 min, ...), so a process that a
step holds for good is visible: its runs are taken over only once it is stopped (SIGKILL; SIGTERM needs the
loop) and the run that held it then counts a recovery like any run whose process died.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType

log = logging.getLogger("threadflow.engine")

#: A loop that does not answer for this long is stalled (seconds).
STALL_SECONDS = 1.0
#: How often the watchdog pings the loop (seconds).
PING_SECONDS = 0.25
#: A stall still going on is logged from the watchdog's thread after this long, then after 6 times as long...
STILL_STUCK_AFTER = 10.0


@dataclass(frozen=True)
class StallSite:
    """Where the loop was stuck: the step (if it was in one) and the innermost function."""

    where: str
    run_id: str | None = None
    workflow_id: str | None = None
    path: str | None = None
    step_id: str | None = None

    def describe(self) -> str:
        if self.path is None:
            return f"outside any step (in {self.where})"
        return f"in step `{self.path}` of run {self.run_id} (workflow {self.workflow_id}, in {self.where})"


class LoopWatchdog:
    """Pings ``loop`` from a thread; ``on_stall(seconds, site)`` runs on the loop after each stall."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_stall: Callable[[float, StallSite | None], None],
        step_code: CodeType,
        *,
        threshold: float = STALL_SECONDS,
    ) -> None:
        self._loop = loop
        self._on_stall = on_stall
        self._step_code = step_code
        self.threshold = threshold
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When the ping in flight was sent (None: none in flight), and where the loop was when it stalled.
        self._ping_sent: float | None = None
        self._site: StallSite | None = None
        self._site_for: float | None = None
        self._next_report = STILL_STUCK_AFTER

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._run, name="threadflow-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PING_SECONDS):
            sent = self._ping_sent
            now = time.monotonic()
            if sent is None:
                self._ping_sent = now
                try:
                    self._loop.call_soon_threadsafe(self._pong, now)
                except RuntimeError:  # the loop is closed
                    return
            elif now - sent >= self.threshold:
                if self._site_for != sent:
                    self._site = self._find_site()
                    self._site_for = sent
                    self._next_report = STILL_STUCK_AFTER
                if now - sent >= self._next_report:
                    log_stall(now - sent, self._site, ongoing=True)
                    self._next_report *= 6

    def _pong(self, sent: float) -> None:
        waited = time.monotonic() - sent
        site = self._site if self._site_for == sent else None
        self._ping_sent = None
        if waited >= self.threshold:
            self._on_stall(waited, site)

    def _find_site(self) -> StallSite | None:
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return None
        innermost = frame
        where = f"{innermost.f_code.co_qualname} at {innermost.f_code.co_filename}:{innermost.f_lineno}"
        while frame is not None:
            if frame.f_code is self._step_code:
                ctx = frame.f_locals.get("ctx")
                return StallSite(
                    where=where, run_id=getattr(ctx, "run_id", None), workflow_id=getattr(ctx, "workflow_id", None),
                    path=getattr(ctx, "path", None), step_id=getattr(getattr(ctx, "step", None), "id", None),
                )
            frame = frame.f_back
        return StallSite(where=where)


def log_stall(seconds: float, site: StallSite | None, *, ongoing: bool = False) -> None:
    log.warning("the event loop %s blocked for %.1f s %s: every run in this process %s meanwhile; make the "
                "step a plain `def` (it then runs in a thread) or await its slow calls",
                "has been" if ongoing else "was", seconds, site.describe() if site is not None else "(where, unknown)",
                "waits" if ongoing else "waited")
