"""Assembling a streamed chat completion, whatever way the server cut it into chunks.

OpenAI sends a tool call's ``id`` and ``name`` in its first chunk and the arguments in later pieces,
keyed by ``index``, and a refusal in ``delta.refusal`` (read as the answer's text). Other servers differ:
arguments split mid-token or mid-escape, a whole call in one chunk (Ollama), no ``index`` at all, the name
repeated in every chunk, empty deltas, ``content: null``, arguments sent as an object rather than a string,
several calls interleaved, usage in a last chunk with no choices (``stream_options.include_usage``) or in the
chunk that finishes. :class:`StreamAssembler` takes chunks as plain dicts and yields events as soon as they
are certain: a text delta at once, a tool call when the next one starts or the stream ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .model_types import (
    CallOptions,
    Message,
    Model,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolSpec,
    Usage,
)


@dataclass
class _Slot:
    """One tool call being received."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def sent(self) -> bool:
        """Whether the server sent a call here: a name, an id or arguments. One without a name (seen from some parsers)
        is kept, with the name "": the agent tells the model it has no such tool, rather than the call being dropped
        and an empty answer taken for the reply."""
        return bool(self.name or self.id or self.arguments)

    def call(self, position: int) -> ToolCall:
        arguments = "".join(self.arguments).strip()
        return ToolCall(id=self.id or f"call_{position}", name=self.name, arguments=arguments or "{}")


class StreamAssembler:
    """Feed it chunks (``dict`` form of ``chat.completion.chunk``); it returns the events each one completes."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.usage = Usage()
        self.finish_reason: str | None = None
        #: Whether the server sent its usage: it does so at the end of a whole answer (a finish it may leave out).
        self.usage_seen = False
        self._slots: list[_Slot] = []
        self._by_index: dict[int, int] = {}  # the server's index -> our slot position

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if chunk.get("model"):
            self.model = str(chunk["model"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage_seen = True
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                total_tokens=int(usage.get("total_tokens") or 0),
            )
        for choice in chunk.get("choices") or []:
            if int(choice.get("index") or 0) != 0:
                continue  # we ask for one choice; a server that sends more gets its first one read
            delta = choice.get("delta") or {}
            for said in (delta.get("content"), delta.get("refusal")):
                # A refusal (``delta.refusal``, content null) is the answer's words, as ``message.refusal`` is
                # when the answer comes whole: an empty answer would read as no answer at all.
                if isinstance(said, str) and said:
                    self.text.append(said)
                    events.append(TextDelta(said))
            for piece in delta.get("tool_calls") or []:
                events.extend(self._tool_piece(piece))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return events

    def _tool_piece(self, piece: dict[str, Any]) -> list[StreamEvent]:
        function = piece.get("function") or {}
        call_id = piece.get("id") or ""
        name = function.get("name") or ""
        arguments = function.get("arguments")
        index = piece.get("index")
        slot, events = self._slot_for(index if isinstance(index, int) else None, call_id)
        if call_id and not slot.id:
            slot.id = call_id
        if name and name != slot.name:
            # A name repeated in every chunk is the same name; one split over chunks is joined.
            slot.name = name if not slot.name or name.startswith(slot.name) else slot.name + name
        if isinstance(arguments, dict | list):
            slot.arguments = [json.dumps(arguments)]  # an object, not text: it is the whole of them
        elif isinstance(arguments, str) and arguments:
            slot.arguments.append(arguments)
        return events

    def _slot_for(self, index: int | None, call_id: str) -> tuple[_Slot, list[StreamEvent]]:
        """The slot a piece belongs to; starting a new one completes the ones before it."""
        if index is not None and index in self._by_index:
            slot = self._slots[self._by_index[index]]
            if not call_id or not slot.id or call_id == slot.id:
                return slot, []
        elif index is None and self._slots:
            for existing in self._slots:
                if call_id and existing.id == call_id:
                    return existing, []
            if not call_id:
                return self._slots[-1], []
        events = self._complete_open()
        self._slots.append(_Slot())
        if index is not None:
            self._by_index[index] = len(self._slots) - 1
        return self._slots[-1], events

    def _complete_open(self, *, final: bool = False) -> list[StreamEvent]:
        """Calls that are complete: all at the end; before it, those whose arguments already parse (a
        server that interleaves two calls' pieces has its calls completed at the end instead)."""
        events: list[StreamEvent] = []
        for position, slot in enumerate(self._slots):
            if not slot.done and (slot.name and _parses("".join(slot.arguments)) or final and slot.sent):
                slot.done = True
                events.append(ToolCallDone(slot.call(position)))
        return events

    def finish(self) -> list[StreamEvent]:
        """The events left at the end of the stream: open tool calls, then :class:`ResponseDone`."""
        events = self._complete_open(final=True)
        calls = [s.call(i) for i, s in enumerate(self._slots) if s.sent]
        text = "".join(self.text)
        response = ModelResponse(
            text=text if text or not calls else None, tool_calls=calls, usage=self.usage, model=self.model
        )
        events.append(ResponseDone(response))
        return events


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def response_events(response: ModelResponse) -> AsyncIterator[StreamEvent]:
    """A whole answer as a stream: its text as one delta, its tool calls, the end."""
    if response.text:
        yield TextDelta(response.text)
    for call in response.tool_calls:
        yield ToolCallDone(call)
    yield ResponseDone(response)


def option_kwargs(options: CallOptions | None) -> dict[str, Any]:
    """``options=`` only when there are some, so models written without the keyword keep working."""
    return {"options": options} if options is not None else {}


async def complete(
    model: Model,
    messages: list[Message],
    tools: list[ToolSpec],
    output_schema: dict[str, Any] | None,
    options: CallOptions | None = None,
) -> ModelResponse:
    """``model.complete(...)``, passing ``options`` only when set."""
    call: Any = model.complete
    response: ModelResponse = await call(messages, tools, output_schema, **option_kwargs(options))
    return response


async def stream_or_complete(
    model: Model,
    messages: list[Message],
    tools: list[ToolSpec],
    output_schema: dict[str, Any] | None,
    options: CallOptions | None = None,
) -> AsyncIterator[StreamEvent]:
    """``model.stream(...)`` when it can stream; otherwise its one answer as a single delta and calls."""
    stream: Any = getattr(model, "stream", None)
    if stream is not None:
        async for event in stream(messages, tools, output_schema, **option_kwargs(options)):
            yield event
        return
    async for event in response_events(await complete(model, messages, tools, output_schema, options)):
        yield event
