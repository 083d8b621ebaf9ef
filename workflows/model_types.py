"""The shapes every model shares: messages, tool calls, responses, stream events and the protocols.

A model answers ``complete(messages, tools, output_schema)`` with one :class:`ModelResponse`; a model
that can stream also has ``stream(...)``, an async iterator of :data:`StreamEvent` that ends with
:class:`ResponseDone` carrying the same assembled response ``complete`` would have returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict

#: An OpenAI function-tool declaration: ``{"type": "function", "function": {name, description, parameters}}``.
ToolSpec: TypeAlias = dict[str, Any]
Message: TypeAlias = dict[str, Any]

#: How structured output was asked for: the server's JSON-schema mode, its JSON mode with the schema in
#: the instructions, or plain text with the schema in the instructions and the JSON extracted.
OutputMode: TypeAlias = Literal["json_schema", "json_object", "text"]


def estimate_tokens(text: str) -> int:
    """A rough token count (characters / 4), used for budgets and offline usage; never for billing."""
    return (len(text) + 3) // 4


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class ModelResponse(BaseModel):
    text: str | None = None
    tool_calls: list[ToolCall] = []
    usage: Usage = Usage()
    model: str
    #: With an output schema: how it was asked for, and the instructions added to the system message
    #: (None in ``json_schema`` mode, where the server enforces the schema itself).
    output_mode: OutputMode | None = None
    output_instructions: str | None = None


@dataclass(frozen=True)
class CallOptions:
    """Optional request parameters an agent may ask for; a server that refuses one is called without it.

    ``tool_choice`` is ``"auto"``, ``"required"``, ``"none"`` or a tool name; ``parallel_tool_calls``
    False asks for at most one tool call per answer.
    """

    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None


# -- stream events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's text, as it arrived."""

    text: str


@dataclass(frozen=True)
class ToolCallDone:
    """A tool call the model finished asking for (its arguments complete)."""

    call: ToolCall


@dataclass(frozen=True)
class ResponseDone:
    """The end of a stream: the whole answer, assembled."""

    response: ModelResponse


StreamEvent: TypeAlias = TextDelta | ToolCallDone | ResponseDone


# -- protocols ----------------------------------------------------------------------------------------


@runtime_checkable
class Model(Protocol):
    """What an agent needs from a language model.

    Models of this package also take ``options: CallOptions | None`` as a keyword; the agent passes it
    only when an agent sets one, so a model written without it keeps working.
    """

    name: str

    async def complete(
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> ModelResponse: ...


@runtime_checkable
class StreamingModel(Model, Protocol):
    """A model that can also answer piece by piece."""

    def stream(
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> AsyncIterator[StreamEvent]: ...


@runtime_checkable
class Embedder(Protocol):
    name: str

    async def embed(self, texts: list[str]) -> list[list[float]]: ...
