"""Streamed messages: ``chat.startStream``, ``chat.appendStream`` and ``chat.stopStream``, as Slack checks them.

A stream is a message in a thread that grows: markdown text appended piece by piece, and task cards
(``task_update`` chunks: a tool call in progress, then complete or error) shown one by one (``timeline``) or
together in a plan (``plan``, titled by ``plan_update``). Stopping it finalizes the message, with blocks
under it (feedback buttons) and metadata.

The emulator enforces what Slack documents, so a bot that passes here does not trip over the real thing:

- a stream is started before it is appended to or stopped (``message_not_found`` / ``message_not_in_streaming_state``),
  and once stopped it takes nothing more (``message_not_in_streaming_state``); only the app that started it
  may append (``message_not_owned_by_app``); Slack ends a stream ``STREAM_LIFETIME`` seconds after it started;
- in a channel (not a DM) a stream is for one person: ``recipient_team_id`` and ``recipient_user_id`` are
  required (``missing_recipient_team_id``, ``missing_recipient_user_id``);
- chunks: ``markdown_text`` (at most 12,000 characters), ``task_update`` (``id``, ``title`` and a status of
  ``pending``/``in_progress``/``complete``/``error``; ``title``, ``details`` and ``output`` at most 256
  characters), ``plan_update`` (``title``, at most 256), ``blocks``; anything else is ``invalid_chunks``;
  ``task_display_mode`` is ``timeline`` or ``plan``.

The message's ``text`` is the markdown streamed so far; its ``blocks`` show the parts in order (``markdown``,
``task_card`` or one ``plan``, then the blocks given at the stop), as Slack renders a finished stream.
Every change is announced as ``message.updated`` with a ``stream`` field (state, mode, tasks and the calls
so far), which the sandbox page draws.

:meth:`Streams.refuse` makes the workspace refuse streaming (an app without Slack's Agents feature, an
admin's restriction): ``chat.startStream`` then answers ``not_agent_app``, the code Slack documents for apps
without the feature (what Slack answers for streaming in that case is not documented; the bot treats every
workspace-level refusal alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .state import Json, Message, WorkspaceState
from .web_api import ApiError, Handler

TASK_STATUSES = frozenset({"pending", "in_progress", "complete", "error"})
DISPLAY_MODES = frozenset({"timeline", "plan"})
FIELD_LIMIT = 256
MARKDOWN_LIMIT = 12_000
MAX_BLOCKS = 50
#: Seconds after which Slack ends a stream by itself (about five minutes; later appends are refused).
STREAM_LIFETIME = 300.0


@dataclass
class Stream:
    """One streamed message, its parts in order and what was called on it."""

    channel: str
    ts: str
    owner: str
    mode: str
    started_at: float
    state: str = "streaming"  # streaming | stopped
    parts: list[Json] = field(default_factory=list)  # {"type": "markdown", "text"} | {"type": "task", "id"}
    tasks: dict[str, Json] = field(default_factory=dict)
    task_history: dict[str, list[str]] = field(default_factory=dict)  # id -> statuses in the order received
    plan_title: str | None = None
    tail_blocks: list[Json] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # "start", "append", "stop", in order

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if p["type"] == "markdown")

    def blocks(self) -> list[Json]:
        out: list[Json] = []
        plan: Json | None = None
        for part in self.parts:
            if part["type"] == "markdown":
                if out and out[-1]["type"] == "markdown":
                    out[-1] = {"type": "markdown", "text": out[-1]["text"] + part["text"]}
                else:
                    out.append({"type": "markdown", "text": part["text"]})
            elif self.mode == "plan":
                if plan is None:
                    plan = {"type": "plan", "title": self.plan_title or "Plan", "tasks": []}
                    out.append(plan)
                plan["tasks"].append(task_card(self.tasks[part["id"]]))
            else:
                out.append(task_card(self.tasks[part["id"]]))
        return [*out, *self.tail_blocks]

    def to_json(self) -> Json:
        return {"state": self.state, "mode": self.mode, "plan_title": self.plan_title, "calls": list(self.calls),
                "tasks": [dict(t) for t in self.tasks.values()], "task_history": dict(self.task_history)}


def rich_text(text: str) -> Json:
    return {"type": "rich_text", "elements": [{"type": "rich_text_section",
                                               "elements": [{"type": "text", "text": text}]}]}


def task_card(task: Json) -> Json:
    card: Json = {"type": "task_card", "task_id": task["id"], "title": task["title"], "status": task["status"]}
    for key in ("details", "output"):
        if task.get(key):
            card[key] = rich_text(task[key])
    return card


class Streams:
    """The streaming methods of one workspace; :meth:`install` adds them to the Web API's methods table."""

    def __init__(self, state: WorkspaceState) -> None:
        self.state = state
        self.streams: dict[str, Stream] = {}
        self.refusal: str | None = None

    def install(self, methods: dict[str, Handler]) -> None:
        """Add these methods to the Web API's table (they answer errors by raising its ``ApiError``)."""
        methods["chat.startStream"] = self.start
        methods["chat.appendStream"] = self.append
        methods["chat.stopStream"] = self.stop

    def refuse(self, error: str | None = "not_agent_app") -> None:
        """Refuse ``chat.startStream`` with ``error`` from now on (None: stream again)."""
        self.refusal = error

    def of(self, ts: str) -> Stream | None:
        return self.streams.get(ts)

    def snapshot(self) -> Json:
        return {ts: s.to_json() for ts, s in self.streams.items()}

    # -- methods -----------------------------------------------------------------------------------

    def start(self, params: Json, caller: str) -> Json:
        if self.refusal:
            raise ApiError(self.refusal)
        channel = self._channel(params)
        thread_ts = str(params.get("thread_ts") or "")
        if not thread_ts:
            raise ApiError("invalid_arguments")  # streamed messages are replies to a person's request
        if self.state.find_message(thread_ts, channel.id) is None:
            raise ApiError("thread_not_found")
        if not channel.is_im:
            if not params.get("recipient_team_id"):
                raise ApiError("missing_recipient_team_id")
            if not params.get("recipient_user_id"):
                raise ApiError("missing_recipient_user_id")
        recipient = params.get("recipient_user_id")
        if recipient and recipient not in self.state.users:
            raise ApiError("user_not_found")
        mode = str(params.get("task_display_mode") or "timeline")
        if mode not in DISPLAY_MODES:
            raise ApiError("invalid_arguments")
        chunks = self._chunks(params)
        msg = self.state.add_message(channel.id, text="", user=caller, thread_ts=thread_ts, blocks=[])
        stream = self.streams[msg.ts] = Stream(channel.id, msg.ts, caller, mode, self.state.clock())
        stream.calls.append("start")
        self._apply(stream, chunks)
        self._show(stream, msg)
        return {"channel": channel.id, "ts": msg.ts}

    def append(self, params: Json, caller: str) -> Json:
        stream, msg = self._open_stream(params, caller)
        chunks = self._chunks(params)
        if not chunks:
            raise ApiError("no_text")
        stream.calls.append("append")
        self._apply(stream, chunks)
        self._show(stream, msg)
        return {"channel": stream.channel, "ts": stream.ts}

    def stop(self, params: Json, caller: str) -> Json:
        stream, msg = self._open_stream(params, caller)
        chunks = self._chunks(params)
        tail = params.get("blocks") or []
        if not isinstance(tail, list) or len(tail) > MAX_BLOCKS or not all(isinstance(b, dict) for b in tail):
            raise ApiError("invalid_blocks")
        metadata = params.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and metadata.get("event_type")):
            raise ApiError("invalid_metadata_format")
        stream.calls.append("stop")
        self._apply(stream, chunks)
        stream.tail_blocks = list(tail)
        stream.state = "stopped"
        if metadata is not None:
            msg.metadata = metadata
        self._show(stream, msg)
        return {"channel": stream.channel, "ts": stream.ts, "message": msg.to_api()}

    # -- checks and rendering --------------------------------------------------------------------

    def _channel(self, params: Json) -> Any:
        channel = self.state.resolve_channel(params.get("channel"))
        if channel is None:
            raise ApiError("channel_not_found")
        return channel

    def _open_stream(self, params: Json, caller: str) -> tuple[Stream, Message]:
        channel = self._channel(params)
        ts = str(params.get("ts") or "")
        msg = self.state.find_message(ts, channel.id)
        if msg is None:
            raise ApiError("message_not_found")
        stream = self.streams.get(ts)
        if stream is None:
            raise ApiError("message_not_in_streaming_state")  # a message that was never a stream
        if stream.owner != caller:
            raise ApiError("message_not_owned_by_app")
        if stream.state == "streaming" and self.state.clock() - stream.started_at > STREAM_LIFETIME:
            stream.state = "stopped"  # Slack ended it
        if stream.state != "streaming":
            raise ApiError("message_not_in_streaming_state")
        return stream, msg

    def _chunks(self, params: Json) -> list[Json]:
        chunks = params.get("chunks") or []
        markdown = params.get("markdown_text")
        if not isinstance(chunks, list):
            raise ApiError("invalid_chunks")
        if markdown:
            chunks = [{"type": "markdown_text", "text": markdown}, *chunks]
        for chunk in chunks:
            check_chunk(chunk)
        return chunks

    def _apply(self, stream: Stream, chunks: list[Json]) -> None:
        for chunk in chunks:
            kind = chunk["type"]
            if kind == "markdown_text" and chunk["text"]:
                stream.parts.append({"type": "markdown", "text": chunk["text"]})
            elif kind == "plan_update":
                stream.plan_title = chunk["title"]
            elif kind == "task_update":
                task_id = chunk["id"]
                known = stream.tasks.get(task_id)
                if known is None:
                    known = stream.tasks[task_id] = {"id": task_id}
                    stream.parts.append({"type": "task", "id": task_id})
                known["title"], known["status"] = chunk["title"], chunk["status"]
                if chunk.get("details"):  # details add to what the card said
                    known["details"] = (known.get("details", "") + chunk["details"])[-4 * FIELD_LIMIT:]
                if chunk.get("output"):
                    known["output"] = chunk["output"]
                stream.task_history.setdefault(task_id, []).append(chunk["status"])
            elif kind == "blocks":
                stream.tail_blocks.extend(chunk.get("blocks") or [])

    def _show(self, stream: Stream, msg: Message) -> None:
        msg.text = stream.text
        msg.blocks = stream.blocks()
        self.state.notify("message.updated", channel=msg.channel, ts=msg.ts,
                          message=msg.to_api() | {"stream": stream.to_json()})


def check_chunk(chunk: Any) -> None:
    """Slack's rules for one streaming chunk (``invalid_chunks`` / ``msg_too_long`` otherwise)."""
    if not isinstance(chunk, dict):
        raise ApiError("invalid_chunks")
    kind = chunk.get("type")
    if kind == "markdown_text":
        if not isinstance(chunk.get("text"), str):
            raise ApiError("invalid_chunks")
        if len(chunk["text"]) > MARKDOWN_LIMIT:
            raise ApiError("msg_too_long")
    elif kind == "task_update":
        if not chunk.get("id") or not isinstance(chunk.get("title"), str) or chunk.get("status") not in TASK_STATUSES:
            raise ApiError("invalid_chunks")
        for key in ("title", "details", "output"):
            value = chunk.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > FIELD_LIMIT):
                raise ApiError("invalid_chunks")
    elif kind == "plan_update":
        if not isinstance(chunk.get("title"), str) or len(chunk["title"]) > FIELD_LIMIT:
            raise ApiError("invalid_chunks")
    elif kind == "blocks":
        if not isinstance(chunk.get("blocks"), list) or len(chunk["blocks"]) > MAX_BLOCKS:
            raise ApiError("invalid_chunks")
    else:
        raise ApiError("invalid_chunks")


__all__ = ["STREAM_LIFETIME", "Stream", "Streams", "check_chunk"]
