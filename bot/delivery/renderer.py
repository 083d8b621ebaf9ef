"""One renderer per run shown in Slack: the run's events in, the outbox recorded, Slack calls out.

A renderer holds the run's render lease (in the database, renewed by the sweeper), replays the run's events
into a :class:`~bot.delivery.planner.RunView`, records what the events past the render offset call for
(messages and the new offset in one commit), writes the notes the thread's memory should have, and lets the
:class:`~bot.delivery.sender.Sender` deliver. It ends when the run has ended and Slack has taken everything
(or refused it for good); until then it keeps retrying, and after a restart the sweeper starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from storage.progress_store import ProgressStore
from storage.slack_store import SlackRun, SlackStore
from workflows import Engine, WorkflowEvent
from workflows.events import RunCanceled
from workflows.waits import wait_set

from .live import LiveSteps, Streams
from .planner import DescribeStep, DescribeVersionStep, RunView, StepPresentation, plan
from .sender import Sender

log = logging.getLogger("threadflow.bot.delivery")

#: Seconds to wait for more events before planning what arrived: a burst becomes one commit.
BATCH_WINDOW = 0.02


class RunRenderer:
    def __init__(self, engine: Engine, store: SlackStore, sender: Sender, slack_run: SlackRun,
                 describe: DescribeVersionStep, remember: Callable[[SlackRun, str], Any], *,
                 streams: Streams | None = None,
                 follow_move: Callable[[SlackRun, str], Awaitable[str | None]] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.sender = sender
        self.run = slack_run
        self.view = RunView(slack_run)
        self._describe_version = describe
        self.describe: DescribeStep = self._describe
        self.remember = remember
        #: Shows the run a moved run went on as (``RunCanceled.moved_to``) in this run's thread; returns its version.
        self.follow_move = follow_move
        self.progress = ProgressStore(engine.db)
        #: The run's agent steps streamed live into its thread (None: their outputs are only posted).
        self.live = (LiveSteps(engine, self.progress, slack_run, streams, self.describe, lambda: self.view.workflow_id)
                     if streams is not None else None)
        self._events: list[WorkflowEvent] = []
        self._watch_ended = False
        self._wake = asyncio.Event()

    def _describe(self, workflow_id: str, step_id: str, path: str) -> StepPresentation | None:
        """How to show a step of this run: as the run's own version has it."""
        return self._describe_version(workflow_id, step_id, path, fingerprint=self.view.workflow_fingerprint)

    def nudge(self) -> None:
        """Look at the outbox again now (a message was marked for reposting, say)."""
        self._wake.set()

    async def render(self) -> None:
        run = await self.engine.get_run(self.run.run_id)
        self.view.workflow_id = self.view.checklist.workflow_id = run.workflow_id
        self.view.workflow_fingerprint = run.workflow_fingerprint
        self.view.checklist.status = run.status if run.status != "pending" else "running"
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(), name=f"threadflow-events-{self.run.run_id}")
        follow = (loop.create_task(self.live.follow(), name=f"threadflow-live-{self.run.run_id}")
                  if self.live is not None else None)
        finished = False
        try:
            await self._loop(pump)
            finished = True
        finally:
            if self.live is not None:
                self.live.stop_following()
            for task in (pump, follow):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.live is not None:
                await self.live.close(finished=finished)
        if finished:
            await self.progress.delete_run(self.run.run_id)  # the run is over: its live progress is no use now

    async def _follow_moves(self, new: list[WorkflowEvent]) -> None:
        """A run moved onto another version goes on as a new run: shown in this thread before the move is recorded
        as planned (a crash in between shows it on the replay; showing it is idempotent)."""
        for ev in new:
            if isinstance(ev.payload, RunCanceled) and ev.payload.moved_to and self.follow_move is not None:
                version = await self.follow_move(self.run, ev.payload.moved_to)
                if version is not None:
                    self.view.moved_versions[ev.payload.moved_to] = version

    async def _pump(self) -> None:
        try:
            async for ev in self.engine.watch(self.run.run_id, after=0):
                self._events.append(ev)
                self._wake.set()
        finally:
            self._watch_ended = True
            self._wake.set()

    async def _loop(self, pump: asyncio.Task[None]) -> None:
        offset = self.run.last_event_id
        replayed = False
        while True:
            if self._events:
                await asyncio.sleep(BATCH_WINDOW)  # let a burst gather: one commit for all of it
            self._wake.clear()
            ended = self._watch_ended
            batch, self._events = self._events, []
            old = [ev for ev in batch if ev.id <= offset]
            new = [ev for ev in batch if ev.id > offset]
            for ev in old:
                self.view.apply(ev)
            if new or not replayed:
                await self._follow_moves(new)
                # The first pass records the cards even without new events: that restores a card that was
                # never delivered, or is wanted again (the reconciler's invariant), from the database alone.
                result = plan(self.view, new, self.describe)
                for note in result.notes:
                    await self.remember(self.run, note)
                upto = new[-1].id if new else offset
                await self.store.record(self.run, upto, result.wanted)
                offset = max(offset, upto)
                replayed = True
            next_due = await self.sender.deliver(self.run, live=self.live)
            if ended and next_due is None and not self._events:
                return
            if self._events or self._wake.is_set():
                continue
            timeout = None if next_due is None else max(0.0, next_due - time.time())
            await wait_set(self._wake, timeout)  # not wait_for: it can swallow the shutdown's cancel (waits.py)
