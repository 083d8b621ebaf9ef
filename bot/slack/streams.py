"""Answers streamed into a Slack thread: the text as it is written, tool calls as task cards, then the end.

:class:`AnswerStream` owns one answer. Whoever produces the answer feeds it (:meth:`~AnswerStream.text`,
:meth:`~AnswerStream.task`) without waiting for Slack; a writer task sends what piled up: the first piece
at once with ``chat.startStream``, then ``chat.appendStream`` at most every ``interval`` seconds and within
Slack's pace for the method (the shared :class:`~bot.slack.pacing.Pacer`). :meth:`~AnswerStream.finish`
ends it with ``chat.stopStream``: the rest of the answer and the blocks under it (feedback buttons).

When Slack will not stream, the answer still arrives, once:

- ``chat.startStream`` refused for the whole workspace (the feature is not enabled, the method unknown, a
  scope missing): one ``chat.postMessage`` with the whole answer; :class:`StreamingSupport` remembers the
  workspace (in the database, for every replica) and says so once in the log; streaming is tried again an
  hour later (an admin may have enabled it meanwhile);
- refused for this thread only (``channel_type_not_supported``, ...): one post for this answer;
- broken midway (``message_not_in_streaming_state``: Slack ends streams after a few minutes): nothing more is
  appended, and the finished answer replaces the message's content (``chat.update``);
- an answer done before anything was sent goes out as one post (two calls for nothing to watch grow is waste).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from storage.slack_store import SlackStore

from .client import SlackClient, with_retries
from .errors import Permanent, RateLimited, SlackCallError, Transient

log = logging.getLogger("threadflow.bot.slack")

Chunk = dict[str, Any]
TaskStatus = Literal["pending", "in_progress", "complete", "error"]

#: Seconds between two appends of one stream, by default (Slack's pace may make it longer).
DEFAULT_INTERVAL = 0.4
#: Slack's limits on one chunk: a task's title, details and output, and a piece of markdown.
FIELD_LIMIT = 256
MARKDOWN_LIMIT = 12_000
#: What a workspace refusing ``chat.startStream`` answers when streaming is off for the whole app or workspace
#: (a feature not enabled, an old or restricted API, a missing scope): remembered per workspace.
WORKSPACE_REFUSALS = frozenset({
    "not_agent_app", "feature_not_enabled", "unknown_method", "method_deprecated", "deprecated_endpoint",
    "not_allowed_token_type", "missing_scope", "no_permission", "access_denied", "accesslimited",
    "enterprise_is_restricted", "restricted_action", "messages_tab_disabled", "team_access_not_granted",
})
#: Seconds before a workspace that refused streaming is tried again.
RETRY_REFUSED = 3600.0
#: What a finished answer is: streamed (stopped), posted in one message, or put into the streamed message.
Finish = Literal["streamed", "posted", "updated", "failed"]


def clip_field(text: str, limit: int = FIELD_LIMIT) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def within_limits(chunks: list[Chunk]) -> list[Chunk]:
    """The chunks with any piece of markdown longer than Slack takes in one chunk cut into several."""
    out: list[Chunk] = []
    for chunk in chunks:
        text = chunk.get("text") if chunk.get("type") == "markdown_text" else None
        if isinstance(text, str) and len(text) > MARKDOWN_LIMIT:
            out += [{"type": "markdown_text", "text": text[i:i + MARKDOWN_LIMIT]}
                    for i in range(0, len(text), MARKDOWN_LIMIT)]
        else:
            out.append(chunk)
    return out


def markdown_block(text: str) -> dict[str, Any]:
    """``text`` as one ``markdown`` block. Slack takes at most ``MARKDOWN_LIMIT`` characters there: a longer
    text is cut, and its last line says so and how much is missing (a silent cut reads as a whole answer)."""
    if len(text) <= MARKDOWN_LIMIT:
        return {"type": "markdown", "text": text or " "}
    keep = _entity_safe(text[: MARKDOWN_LIMIT - 80])
    marker = f"…\n\n_(The answer is cut here: {len(text) - len(keep):,} more characters.)_"
    return {"type": "markdown", "text": keep + marker}


def _entity_safe(cut: str) -> str:
    """``cut`` without a trailing half of an escaped entity (``&l`` of ``&lt;``)."""
    amp = cut.rfind("&", max(0, len(cut) - 4))
    return cut[:amp] if amp != -1 and ";" not in cut[amp:] else cut


class StreamingSupport:
    """Which workspaces refused streaming, remembered in the database and in this process."""

    def __init__(self, store: SlackStore, *, retry_after: float = RETRY_REFUSED) -> None:
        self.store = store
        self.retry_after = retry_after
        self._refused: dict[str, tuple[float, str]] = {}  # team -> (since, code)
        self._checked: set[str] = set()
        self._logged: set[str] = set()

    async def allowed(self, team_id: str) -> bool:
        if team_id not in self._checked:
            self._checked.add(team_id)
            known = await self.store.feature(team_id, "streaming")
            if known is not None and known.state == "refused":
                self._refused[team_id] = (known.updated_at, known.detail or "")
        refused = self._refused.get(team_id)
        return refused is None or time.time() - refused[0] >= self.retry_after

    async def refused(self, team_id: str, code: str) -> None:
        self._refused[team_id] = (time.time(), code)
        if team_id not in self._logged:
            self._logged.add(team_id)
            log.warning("Slack refused to stream answers in workspace %s (%s): answers are posted whole there. "
                        "Enable Agents & AI Apps for the app (see the README) to have them streamed.",
                        team_id or "(default)", code)
        await self.store.set_feature(team_id, "streaming", "refused", code)

    async def worked(self, team_id: str) -> None:
        if team_id in self._refused:
            del self._refused[team_id]
            self._logged.discard(team_id)
            log.info("Slack streams answers in workspace %s again.", team_id or "(default)")
            await self.store.set_feature(team_id, "streaming", "ok")


@dataclass
class _Task:
    id: str
    title: str
    status: TaskStatus
    details: str | None = None
    output: str | None = None

    def chunk(self) -> Chunk:
        chunk: Chunk = {"type": "task_update", "id": self.id, "title": self.title, "status": self.status}
        if self.details:
            chunk["details"] = self.details
        if self.output:
            chunk["output"] = self.output
        return chunk


class AnswerStream:
    """One answer streamed into a thread (see the module docstring); ``async with`` around feeding it."""

    def __init__(self, slack: SlackClient, support: StreamingSupport, *, team_id: str, channel: str,
                 thread_ts: str, recipient_user_id: str | None, plan_title: str | None = None,
                 plan_done: str | None = None, interval: float = DEFAULT_INTERVAL, prefix: str = "",
                 metrics: Any = None) -> None:
        self.slack = slack
        self.support = support
        self.team_id = team_id
        self.channel = channel
        self.thread_ts = thread_ts
        self.recipient_user_id = recipient_user_id
        self.plan_title = plan_title
        #: The plan's title once the answer is complete ("forecaster: done"), sent with the stop.
        self.plan_done = plan_done
        self.interval = interval
        self.prefix = prefix
        self.metrics = metrics
        self.mode: Literal["idle", "streaming", "fallback", "broken", "done"] = "idle"
        self.ts: str | None = None
        self.shown = ""  # all markdown fed so far (the prefix included)
        self._segment_at = 0  # where in ``shown`` the text after the last tool call begins
        self._pending: list[Chunk] = [{"type": "markdown_text", "text": prefix}] if prefix else []
        self._tasks: dict[str, _Task] = {}
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_send = 0.0
        self._not_before = 0.0
        self._writer: asyncio.Task[None] | None = None
        self.shown += prefix
        self._segment_at = len(self.shown)

    async def __aenter__(self) -> AnswerStream:
        if not await self.support.allowed(self.team_id):
            self.mode = "fallback"
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="threadflow-answer-stream")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.pause()

    @property
    def on_screen(self) -> bool:
        """Slack shows this stream's message (started, not finished): only :meth:`finish` may end it."""
        return self.mode in ("streaming", "broken") and self.ts is not None

    # -- feeding (never waits for Slack) -----------------------------------------------------------------

    def text(self, piece: str) -> None:
        if not piece:
            return
        self.shown += piece
        last = self._pending[-1] if self._pending else None
        if last is not None and last["type"] == "markdown_text":
            last["text"] += piece
        else:
            self._pending.append({"type": "markdown_text", "text": piece})
        self._wanted.set()

    def task(self, task_id: str, title: str, status: TaskStatus, *, details: str | None = None,
             output: str | None = None) -> None:
        """A task card: created by its first update, changed by later ones (details are sent once)."""
        known = self._tasks.get(task_id)
        if known is None:
            known = self._tasks[task_id] = _Task(task_id, clip_field(title), status,
                                                 clip_field(details) if details else None)
            update = known.chunk()
        else:  # every state change is sent, in order: a quick tool still shows "in progress" first
            known.status = status
            update = {"type": "task_update", "id": task_id, "title": known.title, "status": status}
        if output:
            known.output = update["output"] = clip_field(output)
        # What came before the tool call was the model thinking aloud: the answer is what comes after.
        self._segment_at = len(self.shown)
        self._pending.append(update)
        self._wanted.set()

    def restart_answer(self) -> None:
        """What was shown since the last tool call is not the answer (it was sent back to be fixed)."""
        self._segment_at = len(self.shown)

    # -- sending -----------------------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            wait = max(self._not_before - time.time(), self._last_send + self.interval - loop.time()
                       if self.ts is not None else 0.0)
            if wait > 0:
                await asyncio.sleep(wait)
            self._wanted.clear()
            self._last_send = loop.time()
            await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            if self.mode not in ("idle", "streaming") or not self._pending:
                return
            chunks, self._pending = within_limits(self._pending), []
            try:
                if self.mode == "idle":
                    await self._start(chunks)
                else:
                    await self.slack.append_stream(self.channel, self.ts or "", chunks)
                    self._count("append", "ok")
            except (RateLimited, Transient) as exc:
                if isinstance(exc, Transient) and exc.maybe_delivered and not exc.answered:
                    # (No answer at all: the text may be on screen. A 5xx is tried again, as before: text shown
                    # twice is better than a stream given up.)
                    self._gave_up(exc)
                    return
                self._pending = chunks + self._pending  # nothing lost: sent with the next try
                delay = exc.retry_after if isinstance(exc, RateLimited) else 1.0
                self._not_before = time.time() + delay
                self._wanted.set()
                self._count("append" if self.ts else "start", "retried")
            except Permanent as exc:
                await self._refused(exc)

    async def _start(self, chunks: list[Chunk]) -> None:
        if self.plan_title:
            chunks = [{"type": "plan_update", "title": clip_field(self.plan_title)}, *chunks]
        posted = await self.slack.start_stream(
            self.channel, self.thread_ts, chunks=chunks, recipient_team_id=self.team_id or None,
            recipient_user_id=self.recipient_user_id, task_display_mode="plan" if self.plan_title else "timeline")
        self.ts, self.mode = posted.ts, "streaming"
        self._count("start", "ok")
        await self.support.worked(self.team_id)

    async def _refused(self, exc: Permanent) -> None:
        if self.mode == "idle":
            self.mode = "fallback"
            self._count("start", "refused")
            if exc.code in WORKSPACE_REFUSALS:
                await self.support.refused(self.team_id, exc.code)
            else:
                log.info("Slack would not stream an answer in %s (%s); it is posted whole.", self.channel, exc.code)
        else:
            self.mode = "broken"
            self._count("append", "refused")
            log.info("Slack stopped taking the stream %s in %s (%s); the whole answer replaces it at the end.",
                     self.ts, self.channel, exc.code)

    def _gave_up(self, exc: SlackCallError) -> None:
        """An answer was lost in transit: whether Slack took it is unknown, so nothing more goes to this stream."""
        self.mode = "broken" if self.ts else "fallback"
        log.info("lost Slack's answer while streaming in %s (%s); the whole answer goes out at the end.",
                 self.channel, exc)

    async def pause(self) -> None:
        """Send nothing more until :meth:`finish` (a call in flight completes first)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        async with self._lock:  # a call in flight completes first: a stream started is a stream known
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    # -- the end -----------------------------------------------------------------------------------------

    def tail_for(self, answer: str) -> str:
        """What to add so the message ends with ``answer`` (the final model answer after the last tool call)."""
        segment = self.shown[self._segment_at:]
        if answer.startswith(segment):
            return answer[len(segment):]
        return ("\n\n" if self.shown.strip() else "") + answer

    async def finish(self, answer: str, *, blocks: list[dict[str, Any]] | None = None,
                     metadata: dict[str, Any] | None = None, fallback_text: str | None = None) -> Finish:
        """End the stream so the message shows ``answer`` last, with ``blocks`` under it.

        ``answer`` is markdown; ``fallback_text`` is the notification text of a post or update (the
        answer by default). Returns how the answer got there."""
        await self.pause()
        async with self._lock:
            tail = self.tail_for(answer)
            whole = self.prefix + answer
            notification = (fallback_text or whole)[:3000]
            rest = within_limits(self._pending + ([{"type": "markdown_text", "text": tail}] if tail else []))
            self._pending = []
            outcome: Finish = "failed"
            if self.mode == "streaming" and self.ts is not None:
                if self.plan_title and self.plan_done and self._tasks:
                    rest = [{"type": "plan_update", "title": clip_field(self.plan_done)}, *rest]
                outcome = await self._stop(rest, blocks, metadata)
            if outcome == "failed" and self.mode in ("streaming", "broken") and self.ts is not None:
                outcome = await self._replace(notification, whole, blocks)
            if outcome == "failed":
                outcome = await self._post(notification, whole, blocks, metadata)
            self.mode = "done"
            self._count("finish", outcome)
            return outcome

    async def _stop(self, chunks: list[Chunk], blocks: list[dict[str, Any]] | None,
                    metadata: dict[str, Any] | None) -> Finish:
        ts = self.ts or ""
        try:
            await with_retries(lambda: self.slack.stop_stream(self.channel, ts, chunks=chunks, blocks=blocks,
                                                              metadata=metadata))
            return "streamed"
        except SlackCallError as exc:
            log.info("could not stop the stream %s in %s (%s); its content is replaced instead", ts, self.channel, exc)
            return "failed"

    def _whole_blocks(self, whole: str, blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The answer as one message: its text, the tools it used (one line), the blocks under it."""
        made = [markdown_block(whole)]
        if self._tasks:
            marks = {"complete": "✓", "error": "✗"}
            used = ", ".join(f"`{t.title}` {marks.get(t.status, '…')}" for t in self._tasks.values())
            made.append({"type": "context", "elements": [{"type": "mrkdwn", "text": clip_field(f"Tools: {used}", 2000)}]})
        return [*made, *(blocks or [])]

    async def _replace(self, text: str, whole: str, blocks: list[dict[str, Any]] | None) -> Finish:
        ts = self.ts or ""
        try:
            await with_retries(lambda: self.slack.update_message(self.channel, ts, text,
                                                                 blocks=self._whole_blocks(whole, blocks)))
            return "updated"
        except SlackCallError as exc:
            log.warning("could not put the finished answer into %s in %s (%s); posting it", ts, self.channel, exc)
            return "failed"

    async def _post(self, text: str, whole: str, blocks: list[dict[str, Any]] | None,
                    metadata: dict[str, Any] | None) -> Finish:
        try:
            posted = await with_retries(lambda: self.slack.post_message(
                self.channel, text, blocks=self._whole_blocks(whole, blocks), thread_ts=self.thread_ts,
                metadata=metadata))
        except SlackCallError as exc:
            log.error("could not post an answer in %s: %s", self.channel, exc)
            return "failed"
        self.ts = posted.ts
        return "posted"

    def _count(self, step: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.slack_streams.labels(step, outcome).inc()


__all__ = ["DEFAULT_INTERVAL", "AnswerStream", "Finish", "StreamingSupport", "WORKSPACE_REFUSALS", "clip_field",
           "markdown_block"]
