"""Agent steps streamed into a run's thread while they run, from the progress their process publishes.

The step runs in the engine (maybe on another replica); it publishes what it does as numbered rows
(:mod:`workflows.progress`, :mod:`storage.progress_store`). The renderer of the run follows those rows and
streams them into the run's thread (:class:`~bot.slack.streams.AnswerStream`): the answer as it is
written, tool calls as task cards (a plan when the agent has several tools).

The stream is best effort and never the only way the answer arrives. The step's output still becomes an
outbox post when its result commits (:mod:`bot.delivery.planner`), and that post is delivered exactly once:
when the sender reaches it and the step's stream is on screen, the stream is ended *as* that delivery
(``chat.stopStream`` with the rest of the answer, the feedback buttons and the post's delivery id as
metadata, so a crash right after is found like any half-done post); otherwise the post goes out as usual.
A stream is only started for an attempt this renderer saw begin (a restarted renderer does not start a
second message for an answer another one may have been streaming; that answer arrives as the post).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.progress_store import ProgressRow, ProgressStore
from storage.slack_store import SlackRun
from workflows import Engine

from .. import blocks
from ..slack import SlackCallError, SlackClient
from ..slack.streams import DEFAULT_INTERVAL, AnswerStream, StreamingSupport
from .planner import DescribeStep, stream_header

log = logging.getLogger("threadflow.bot.delivery")

#: A step attempt whose first progress is older than this when the renderer first sees it is not streamed:
#: another renderer may have been streaming it (after a restart), and its answer arrives as the post.
FRESH_FOR = 5.0
THINKING = "is thinking..."


@dataclass
class Streams:
    """What opening an answer stream needs, shared by every renderer (and the chat listeners)."""

    slack: SlackClient
    support: StreamingSupport
    interval: float = DEFAULT_INTERVAL
    metrics: Any = None

    def open(self, *, team_id: str, channel: str, thread_ts: str, recipient_user_id: str | None,
             planner: str | None = None, prefix: str = "") -> AnswerStream:
        """``planner``: the agent's name when its tool calls show as a plan ("NAME: working", then "NAME: done")."""
        return AnswerStream(self.slack, self.support, team_id=team_id, channel=channel, thread_ts=thread_ts,
                            recipient_user_id=recipient_user_id, interval=self.interval, prefix=prefix,
                            plan_title=f"{planner}: working" if planner else None,
                            plan_done=f"{planner}: done" if planner else None, metrics=self.metrics)


def can_stream_to(channel: str, recipient: str | None) -> bool:
    """Slack streams in a channel only to a person (``recipient_user_id``); a DM has its person already."""
    return channel.startswith("D") or (recipient is not None and recipient[:1] in "UW" and recipient.isalnum())


@dataclass
class _Attempt:
    path: str
    attempt: int
    step_id: str
    streams_text: bool
    stream: AnswerStream | None = None
    done: bool = False


class LiveSteps:
    """Follows one run's agent progress and streams it; see the module docstring."""

    def __init__(self, engine: Engine, progress: ProgressStore, run: SlackRun, streams: Streams,
                 describe: DescribeStep, workflow_id: Callable[[], str]) -> None:
        self.engine = engine
        self.progress = progress
        self.run = run
        self.streams = streams
        self.describe = describe
        self.workflow_id = workflow_id
        self.started_at = time.time()
        self.attempts: dict[tuple[str, int], _Attempt] = {}
        self._skipped: set[tuple[str, int]] = set()
        self._after = 0
        self._stopping = False

    def stop_following(self) -> None:
        """End :meth:`follow` at its next turn (a cancellation that races a wake-up can be lost in
        ``asyncio.wait_for`` on Python 3.11; this flag cannot)."""
        self._stopping = True

    async def follow(self) -> None:
        """Read the run's progress as it is published (woken by commits in this process, polling others)."""
        while not self._stopping:
            version = self.engine.db.changes.version
            try:
                rows = await self.progress.read(self.run.run_id, self._after)
            except Exception:  # the database hiccuped: streaming waits, the outbox still delivers the answers
                log.exception("could not read the live progress of run %s; trying again", self.run.run_id)
                await asyncio.sleep(self.engine.poll_interval)
                continue
            for row in rows:
                self._after = row.id
                try:
                    await self._apply(row)
                except SlackCallError as exc:  # the stream has its own fallbacks; this was a status
                    log.info("live progress of %s: %s", row.path, exc)
            if not rows:
                await self.engine.db.changes.wait(version, self.engine.poll_interval / 2)

    async def _apply(self, row: ProgressRow) -> None:
        key = (row.path, row.attempt)
        live = self.attempts.get(key)
        if live is None:
            if key in self._skipped:
                return
            if row.kind != "started" or row.at < self.started_at - FRESH_FOR or not self._streamable():
                self._skipped.add(key)
                return
            live = await self._begin(row)
            if live is None:
                self._skipped.add(key)
                return
        data = row.data or {}
        stream = live.stream
        if row.kind == "text" and stream is not None and live.streams_text:
            stream.text(blocks.escape(str(data.get("text") or "")))
        elif row.kind == "tool" and stream is not None:
            details, output = data.get("details"), data.get("output")
            stream.task(str(data.get("id")), str(data.get("name") or "tool"), data.get("status") or "in_progress",
                        details=blocks.escape(str(details)) if details else None,
                        output=blocks.escape(str(output)) if output else None)
        elif row.kind == "rejected" and stream is not None:
            stream.restart_answer()
        elif row.kind == "done":
            live.done = True
        elif row.kind == "failed" and stream is not None:
            live.stream = None
            await self._end(stream, f":warning: This attempt failed: {blocks.escape(str(data.get('error') or ''))}")

    def _streamable(self) -> bool:
        run = self.run
        return run.reply_ts is not None and can_stream_to(run.channel_id, run.started_by)

    async def _begin(self, row: ProgressRow) -> _Attempt | None:
        data = row.data or {}
        step_id = str(data.get("step_id") or row.path.rsplit("/", 1)[-1])
        step = self.describe(self.workflow_id(), step_id, row.path)
        if step is None or not step.post_output:
            return None
        run = self.run
        live = _Attempt(row.path, row.attempt, step_id, step.streams_text)
        # A newer attempt of the step replaces the older one's stream (which its failure already ended).
        for (path, attempt), older in list(self.attempts.items()):
            if path == row.path and attempt < row.attempt and older.stream is not None:
                stream, older.stream = older.stream, None
                await self._end(stream, ":warning: This attempt was retried.")
        live.stream = self.streams.open(
            team_id=run.team_id, channel=run.channel_id, thread_ts=run.reply_ts or "",
            recipient_user_id=run.started_by, planner=step.name if len(step.tools) > 1 else None,
            prefix=stream_header(step.name, step_id))
        await live.stream.__aenter__()
        self.attempts[(row.path, row.attempt)] = live
        if run.thread_ts is not None:  # an assistant thread: "is thinking..." under it while the agent works
            try:
                await self.streams.slack.set_assistant_status(run.channel_id, run.thread_ts, THINKING)
            except SlackCallError as exc:  # only a status: the answer streams all the same
                log.info("could not show that %s is thinking in %s: %s", step.name, run.channel_id, exc)
        return live

    async def _end(self, stream: AnswerStream, note: str) -> None:
        await stream.pause()
        if stream.on_screen:
            await stream.finish(note)

    async def take(self, path: str) -> AnswerStream | None:
        """The on-screen stream of the step at ``path`` (its newest attempt), handed over to be ended as the
        delivery of the step's output; None when nothing of it is on screen (the output is posted)."""
        found = [live for (p, _), live in self.attempts.items() if p == path and live.stream is not None]
        if not found:
            return None
        live = max(found, key=lambda a: a.attempt)
        stream, live.stream = live.stream, None
        assert stream is not None
        await stream.pause()
        return stream if stream.on_screen else None

    async def close(self, *, finished: bool) -> None:
        """Stop following; when the run is over, end the streams nothing will finish (a step that failed
        after its agent answered) so no message stays "streaming"."""
        for live in self.attempts.values():
            stream, live.stream = live.stream, None
            if stream is None:
                continue
            if finished:
                await self._end(stream, ":warning: The step did not finish, so this answer was not used.")
            else:
                await stream.pause()


__all__ = ["FRESH_FOR", "LiveSteps", "Streams", "can_stream_to"]
