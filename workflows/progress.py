"""An agent step's progress while it runs, published for whoever shows it live (the Slack bot streams it).

The step calls its agent with streaming and hands every event to :class:`StepProgress`, which turns them into
numbered rows (:mod:`storage.progress_store`): pieces of text merged until the next write, tool calls as they
start and end, the end of the call. Writes are coalesced to at most one every ``interval`` seconds (the first
piece of an answer goes out at once), so a fast model costs a handful of commits, not one per token.

Publishing is best effort: a failed write is logged and the step goes on, because the step's result, not
its progress, is what the run depends on (the Slack thread gets the answer from the committed output).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from storage.progress_store import NewProgress, ProgressKind, ProgressStore

from .agent import AgentDone, AgentEvent, AgentResult, OutputRejected, ToolResult
from .errors import ModelError
from .model_types import TextDelta, ToolCallDone
from .waits import wait_set

log = logging.getLogger("threadflow.progress")

#: Seconds between two writes of one step's progress (a piece of text waits at most this long).
DEFAULT_INTERVAL = 0.05
#: Slack shows at most 256 characters of a task's details and output; nothing longer is worth storing.
SHORT = 256


def short(text: str, limit: int = SHORT) -> str:
    """``text`` on one line, clipped to ``limit`` characters (with an ellipsis when clipped)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class StepProgress:
    """Publishes one agent step attempt's progress; use as ``async with`` around :meth:`follow`."""

    def __init__(self, store: ProgressStore, run_id: str, path: str, attempt: int, *, step_id: str, agent: str,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.store = store
        self.step_id = step_id
        self.agent = agent
        self.run_id = run_id
        self.path = path
        self.attempt = attempt
        self.interval = interval
        self._seq = 0
        self._pending: list[NewProgress] = []
        self._dirty = asyncio.Event()
        self._last_write = 0.0
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StepProgress:
        self.add("started", {"step_id": self.step_id, "agent": self.agent})
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name=f"progress-{self.path}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._closing.set()
        self._dirty.set()
        try:
            await writer  # it writes what is pending at once (before the step's result commits), then ends
        except asyncio.CancelledError:
            writer.cancel()  # the step itself is being canceled: its progress no longer matters
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            raise

    async def follow(self, events: AsyncIterator[AgentEvent]) -> AgentResult[Any]:
        """Publish each event of a streamed agent call; returns the call's result."""
        try:
            async for event in events:
                if isinstance(event, AgentDone):
                    self.add("done", {"context_id": event.result.context_id})
                    return event.result
                self.publish(event)
        except ModelError as exc:
            self.add("failed", {"error": short(str(exc))})
            raise
        raise AssertionError("an agent call always ends with AgentDone")

    def publish(self, event: AgentEvent) -> None:
        if isinstance(event, TextDelta):
            if event.text:
                self.add("text", {"text": event.text})
        elif isinstance(event, ToolCallDone):
            call = event.call
            self.add("tool", {"id": call.id, "name": call.name, "status": "in_progress",
                              "details": short(call.arguments)})
        elif isinstance(event, ToolResult):
            record = event.record
            self.add("tool", {"id": record.id, "name": record.name, "status": "error" if record.error else "complete",
                              "output": short(record.result)})
        elif isinstance(event, OutputRejected):
            self.add("rejected", {"errors": short(event.errors)})

    def add(self, kind: ProgressKind, data: dict[str, Any]) -> None:
        last = self._pending[-1] if self._pending else None
        if kind == "text" and last is not None and last.kind == "text" and last.data is not None:
            last.data["text"] += data["text"]  # merged until written: one row per write, not per token
        else:
            self._pending.append(NewProgress(run_id=self.run_id, path=self.path, attempt=self.attempt,
                                             seq=self._seq, kind=kind, data=data))
            self._seq += 1
        self._dirty.set()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            wait = self._last_write + self.interval - loop.time()
            if wait > 0 and not self._closing.is_set():
                await wait_set(self._closing, wait)  # not wait_for: it can swallow a cancel (see waits.py)
            self._last_write = loop.time()
            await self._write()
            if self._closing.is_set() and not self._pending:
                return

    async def _write(self) -> None:
        self._dirty.clear()
        rows, self._pending = self._pending, []
        if not rows:
            return
        try:
            await self.store.append(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # best effort (see the module docstring); the step's result is what counts
            log.warning("could not publish the progress of %s/%s (%d rows): %s", self.run_id, self.path,
                        len(rows), type(exc).__name__)


__all__ = ["DEFAULT_INTERVAL", "StepProgress", "short"]
