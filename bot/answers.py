"""An agent answering a person in a Slack thread: streamed as it is written, with its tool calls as task cards
and feedback buttons under the answer.

Used by thread chat (replies in a run's thread, mentions, direct messages) and by assistant threads. The
agent is called with streaming; what it writes is appended to one streamed message (see
:mod:`bot.slack.streams` for the pace and the fallbacks), each tool it calls shows as a task card (in progress,
then complete or error with a short output; several tools make a plan). Without a thread to stream into (a
top-level direct message) or with streaming switched off, the answer is posted whole when it is done. An answer
cancelled midway (a shutdown, after its grace period) ends its stream with a line saying it was cut short.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from workflows.agent import AgentDone, AgentResult, OutputRejected, ToolResult
from workflows.errors import ThreadflowError
from workflows.model_types import TextDelta, ToolCallDone

from . import blocks
from .delivery.live import can_stream_to
from .deps import BotDeps
from .slack import SlackCallError, with_retries
from .slack.streams import AnswerStream, clip_field, markdown_block

log = logging.getLogger("threadflow.bot.chat")

THINKING = "is thinking..."
#: What ends an answer cut short by a shutdown (or any cancellation): the message must not read as finished.
CUT_SHORT = "_(I was interrupted, probably by a restart, before I could finish this answer. Ask me again in a moment.)_"
#: Seconds a cancelled answer may take to end its stream with :data:`CUT_SHORT`.
CUT_SHORT_WITHIN = 3.0


def feedback_under(result: AgentResult[Any] | None) -> list[dict[str, Any]]:
    """The feedback buttons for an answer whose agent call was recorded (what a click is stored with)."""
    if result is None or result.context_id is None:
        return []
    return [blocks.feedback_block({"context_id": result.context_id})]


async def answer_with_agent(deps: BotDeps, agent: Any, prompt: str, *, thread: Any, author: str, team: str,
                            channel: str, thread_ts: str | None) -> AgentResult[Any] | None:
    """Have ``agent`` answer ``prompt`` from ``author`` in ``thread_ts`` (None: the channel itself); the
    answer is recorded in ``thread`` (memory). Returns the agent's result, or None when it failed (the person
    is told why in the thread)."""
    streams = deps.streams
    if thread_ts is None or streams is None or not can_stream_to(channel, author):
        return await _answer_whole(deps, agent, prompt, thread=thread, author=author, channel=channel,
                                   thread_ts=thread_ts)
    tools = getattr(agent, "tools", [])
    stream = streams.open(team_id=team, channel=channel, thread_ts=thread_ts, recipient_user_id=author,
                          planner=agent.name if len(tools) > 1 else None)
    async with stream:
        try:
            result, problem = await _feed(stream, agent.stream(prompt, thread=thread, author=author))
        except asyncio.CancelledError:
            await _cut_short(stream)
            raise
        if result is None:
            await stream.finish(problem)
            return None
        await stream.finish(blocks.escape(result.text or "(no answer)"), blocks=feedback_under(result))
    return result


async def _feed(stream: AnswerStream, events: Any) -> tuple[AgentResult[Any] | None, str]:
    """Stream an agent call's events; returns its result, or None and what to tell the person."""
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                stream.text(blocks.escape(event.text))
            elif isinstance(event, ToolCallDone):
                stream.task(event.call.id, event.call.name, "in_progress",
                            details=blocks.escape(clip_field(event.call.arguments)))
            elif isinstance(event, ToolResult):
                record = event.record
                stream.task(record.id, record.name, "error" if record.error else "complete",
                            output=blocks.escape(clip_field(record.result)))
            elif isinstance(event, OutputRejected):
                stream.restart_answer()
            elif isinstance(event, AgentDone):
                return event.result, ""
    except ThreadflowError as exc:
        return None, f":warning: I could not answer: {blocks.escape(str(exc))}"
    except Exception as exc:
        log.exception("thread chat failed")
        return None, f":warning: I could not answer ({type(exc).__name__})."
    return None, ":warning: I could not answer (the agent stopped without an answer)."


async def _cut_short(stream: AnswerStream) -> None:
    """End a cancelled answer's stream with :data:`CUT_SHORT`, shielded and within :data:`CUT_SHORT_WITHIN` seconds:
    left as it is, the message stays "streaming" until Slack gives up on it, and then reads as a finished answer."""
    ending = asyncio.ensure_future(stream.finish(CUT_SHORT))
    try:
        await asyncio.wait_for(asyncio.shield(ending), CUT_SHORT_WITHIN)
    except (TimeoutError, asyncio.CancelledError):
        ending.cancel()
        log.warning("could not end the answer cut short in %s within %gs", stream.channel, CUT_SHORT_WITHIN)
    except Exception:
        log.exception("could not end the answer cut short in %s", stream.channel)


async def _answer_whole(deps: BotDeps, agent: Any, prompt: str, *, thread: Any, author: str, channel: str,
                        thread_ts: str | None) -> AgentResult[Any] | None:
    result: AgentResult[Any] | None = None
    try:
        result = await agent.generate(prompt, thread=thread, author=author)
        reply = blocks.escape(result.text or "(no answer)")
    except ThreadflowError as exc:
        reply = f":warning: I could not answer: {blocks.escape(str(exc))}"
    except Exception as exc:
        log.exception("thread chat failed")
        reply = f":warning: I could not answer ({type(exc).__name__})."
    # One markdown block, like a streamed answer posted whole: it holds 12,000 characters, where a section
    # would cut the answer at 3,000; ``text`` is only the notification.
    body = [markdown_block(reply), *feedback_under(result)]
    text = blocks.clip(reply, blocks.TEXT_LIMIT)
    try:
        await with_retries(lambda: deps.slack.post_message(channel, text, blocks=body, thread_ts=thread_ts))
    except SlackCallError as exc:
        log.error("could not post the answer to %s's message: %s", author, exc)
    return result


async def show_thinking(deps: BotDeps, channel: str, thread_ts: str) -> None:
    """"is thinking..." under an assistant thread until the answer arrives (Slack clears it then)."""
    try:
        await deps.slack.set_assistant_status(channel, thread_ts, THINKING)
    except SlackCallError as exc:
        log.info("could not show that the assistant is thinking in %s: %s", channel, exc)


__all__ = ["THINKING", "answer_with_agent", "feedback_under", "show_thinking"]
