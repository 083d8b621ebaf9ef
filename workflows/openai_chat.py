"""Chat completions on OpenAI or any OpenAI-compatible server, degrading to what the server supports.

Each call is built from the model's profile and what its server refused so far in this process
(:mod:`workflows.model_capabilities`). When the server refuses part of a call, the refusal is learned
and the call is made again without it: a structured-output mode falls back along the profile's chain
(``json_schema`` -> ``json_object`` with the schema in the instructions -> plain text), an optional
parameter is dropped. Every step of that is bounded: each thing is dropped once, then the error stands.
A refusal of ``tools`` is one clear error naming what to change on the server.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

from .errors import ModelError
from .model_capabilities import (
    ModelProfile,
    ServerCapabilities,
    capabilities_for,
    resolve_profile,
    tools_hint,
)
from .model_streaming import StreamAssembler, response_events
from .model_types import (
    CallOptions,
    Message,
    ModelResponse,
    OutputMode,
    ResponseDone,
    StreamEvent,
    ToolCall,
    ToolSpec,
    Usage,
    estimate_tokens,
)
from .openai_model import EmptyStream, Refused, _OpenAIClient
from .structured import output_instructions, with_instructions

_NAMED_CHOICES = ("auto", "required", "none")


class _Prepared:
    """One request as sent, and how it asked for structured output."""

    def __init__(self, kwargs: dict[str, Any], mode: OutputMode | None, instructions: str | None) -> None:
        self.kwargs = kwargs
        self.mode = mode
        self.instructions = instructions


class OpenAIChatModel(_OpenAIClient):
    """Chat completions on OpenAI or any compatible server (``OPENAI_BASE_URL``).

    ``profile`` (a name or :class:`ModelProfile`; default ``THREADFLOW_MODEL_PROFILE``, else ``openai``)
    says what to assume about the server before it refuses anything.
    """

    def __init__(self, name: str, *, profile: str | ModelProfile | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.profile = resolve_profile(profile)

    def with_profile(self, profile: str | ModelProfile) -> OpenAIChatModel:
        """The same model and server, assumed to be ``profile`` (for ``Agent(profile=...)``)."""
        return OpenAIChatModel(self.name, profile=profile, api_key=self._api_key, base_url=self.base_url,
                               timeout=self.timeout, retry=self.retry, sleep=self._sleep)

    @property
    def capabilities(self) -> ServerCapabilities:
        return capabilities_for(self.base_url, self.name)

    @property
    def _what(self) -> str:
        return f"Model 'openai:{self.name}'"

    # -- one answer ---------------------------------------------------------------------------------

    async def complete(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> ModelResponse:
        resp, prepared = await self._send(messages, tools, output_schema, options, stream=False)
        if not getattr(resp, "choices", None):
            raise ModelError(
                f"{self._what} returned no choices; the server at {self.base_url} may not be OpenAI-compatible."
            )
        message = resp.choices[0].message
        calls = [
            # (A call without a name, seen from some parsers, keeps the name "": the model is told there is no such tool.)
            ToolCall(id=tc.id or f"call_{i}", name=tc.function.name or "", arguments=_arguments(tc.function.arguments))
            for i, tc in enumerate(message.tool_calls or [])
            if getattr(tc, "function", None) is not None
        ]
        usage = Usage()
        if resp.usage is not None:
            usage = Usage(
                prompt_tokens=resp.usage.prompt_tokens or 0,
                completion_tokens=resp.usage.completion_tokens or 0,
                total_tokens=resp.usage.total_tokens or 0,
            )
        text = message.content if message.content is not None else getattr(message, "refusal", None)
        return ModelResponse(text=text, tool_calls=calls, usage=usage, model=resp.model or self.name,
                             output_mode=prepared.mode, output_instructions=prepared.instructions)

    # -- a streamed answer --------------------------------------------------------------------------

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Text deltas and finished tool calls as they arrive, then :class:`ResponseDone`.

        A server that refuses to stream with tools (llama.cpp builds of early 2025) is asked without
        streaming instead, and its answer comes as one delta. Failures before the first chunk are retried
        like any call; a stream that breaks after it, or ends without the server saying the answer is finished,
        is a :class:`ModelError` (a retry would repeat text the caller has already shown).
        """
        opened: _OpenedStream | None = None
        if not (tools and self.capabilities.stream_with_tools_refused):
            try:
                opened, prepared = await self._send(messages, tools, output_schema, options, stream=True)
            except _StreamWithToolsRefused:
                opened = None
        if opened is None:
            async for event in response_events(await self.complete(messages, tools, output_schema, options=options)):
                yield event
            return
        assembler = StreamAssembler(self.name)
        received = 0
        try:
            chunk = opened.first
            while chunk is not None:
                received += 1
                for event in assembler.feed(_as_dict(chunk)):
                    yield event
                try:
                    chunk = await anext(opened.chunks, None)
                except Exception as exc:  # the SDK's and the transport's errors, translated once, here
                    raise ModelError(
                        f"{self._what}: the answer's stream broke after {received} chunk(s): "
                        f"{type(exc).__name__}: {self._scrub(str(exc))[:300]}. Try again."
                    ) from None  # (not chained: the SDK's error keeps the server's answer unscrubbed)
        finally:
            await opened.stream.close()
        if assembler.finish_reason is None and not assembler.usage_seen:
            # The body ended without the server saying the answer was done (a proxy or a worker that closed the
            # stream cleanly mid-answer): what came is not all of it, and must not be taken for the answer. (A
            # server that leaves the finish out still ends a whole answer with its usage, which it is asked for.)
            raise ModelError(f"{self._what}: the answer's stream ended after {received} chunk(s) before the server "
                             "said the answer was finished (no finish_reason): it was cut short. Try again.")
        for event in assembler.finish():
            if isinstance(event, ResponseDone):
                event = ResponseDone(self._finished(event.response, prepared))
            yield event

    def _finished(self, response: ModelResponse, prepared: _Prepared) -> ModelResponse:
        usage = response.usage
        if usage.total_tokens == 0:  # the server reported none (no stream_options): estimate
            prompt = sum(estimate_tokens(str(m.get("content") or "")) for m in prepared.kwargs["messages"])
            completion = estimate_tokens((response.text or "") + "".join(c.arguments for c in response.tool_calls))
            usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        return response.model_copy(update={
            "usage": usage, "output_mode": prepared.mode, "output_instructions": prepared.instructions})

    # -- negotiating with the server ------------------------------------------------------------------

    async def _send(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        options: CallOptions | None,
        *,
        stream: bool,
    ) -> tuple[Any, _Prepared]:
        """Send the call, dropping what the server refuses; until a structured mode is confirmed, concurrent
        structured calls wait for each other, so they find out once, not once each."""
        caps = self.capabilities
        probing = output_schema is not None and caps.confirmed_mode is None
        async with caps.probe_lock() if probing else contextlib.nullcontext():
            dropped: set[str] = set()
            while True:
                prepared = self._prepare(messages, tools, output_schema, options, stream=stream)
                try:
                    result = await self._with_retries(self._what, _create(prepared.kwargs), prepared.kwargs)
                except Refused as refused:
                    refusal = refused.refusal
                    if refusal.kind == "tools":
                        raise ModelError(
                            f"The model server at {self.base_url or 'api.openai.com'} refuses tools for model "
                            f"{self.name!r}: {refusal.text}. {tools_hint(refusal.text, self.profile)} (Agents with "
                            "tools cannot run on it until then.)"
                        ) from refused
                    what = caps.learn(refusal, self.name)
                    if refusal.kind == "stream":
                        raise _StreamWithToolsRefused(str(refused)) from refused
                    if what in dropped:  # dropping it did not help: the error stands
                        raise
                    dropped.add(what)
                    continue
                if output_schema is not None and prepared.mode is not None:
                    caps.confirmed_mode = prepared.mode
                return result, prepared

    def _prepare(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        options: CallOptions | None,
        *,
        stream: bool,
    ) -> _Prepared:
        caps, profile = self.capabilities, self.profile
        kwargs: dict[str, Any] = {"model": self.name, "messages": messages}
        if tools:
            strict = caps.sends("strict", profile)
            kwargs["tools"] = tools if strict else [_without_strict(t) for t in tools]
            choice = options.tool_choice if options is not None else None
            if choice is not None and caps.sends("tool_choice", profile):
                key = choice if choice in _NAMED_CHOICES else "named"
                if key not in caps.refused_tool_choices:
                    kwargs["tool_choice"] = (
                        choice if key != "named" else {"type": "function", "function": {"name": choice}}
                    )
            parallel = options.parallel_tool_calls if options is not None else None
            if parallel is not None and caps.sends("parallel_tool_calls", profile):
                kwargs["parallel_tool_calls"] = parallel
        mode: OutputMode | None = None
        instructions: str | None = None
        if output_schema is not None:
            mode = caps.output_mode(profile)
            if mode == "json_schema":
                # strict=False: pydantic schemas (defaults, optional fields) rarely meet strict mode's rules;
                # the agent validates the reply itself and asks again when it does not fit.
                name = re.sub(r"[^A-Za-z0-9_-]", "_", str(output_schema.get("title") or "output"))[:64]
                wrapper: dict[str, Any] = {"name": name, "schema": output_schema}
                if caps.sends("strict", profile):
                    wrapper["strict"] = False
                kwargs["response_format"] = {"type": "json_schema", "json_schema": wrapper}
                if profile.schema_in_instructions:
                    instructions = output_instructions(output_schema)
            else:
                instructions = output_instructions(output_schema)
                if mode == "json_object":
                    kwargs["response_format"] = {"type": "json_object"}
                    if profile.json_object_schema:
                        kwargs["response_format"]["schema"] = output_schema
            kwargs["messages"] = with_instructions(messages, instructions)
        if stream:
            kwargs["stream"] = True
            if caps.sends("stream_options", profile):
                kwargs["stream_options"] = {"include_usage": True}
        return _Prepared(kwargs, mode, instructions)


def _create(kwargs: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
    """The SDK call for one prepared request. A streamed one returns an :class:`_OpenedStream` once its first chunk is
    in: a server sends the headers at once, so a stream that times out, drops, reports an outage or ends before any
    chunk (nothing shown yet) fails inside the call, and is retried like any call."""
    if not kwargs.get("stream"):
        return lambda client: client.chat.completions.create(**kwargs)

    async def open_stream(client: Any) -> _OpenedStream:
        stream = await client.chat.completions.create(**kwargs)
        try:
            chunks = stream.__aiter__()
            first = await anext(chunks, None)
            if first is None:
                raise EmptyStream("the answer's stream ended before its first chunk")
            return _OpenedStream(stream, chunks, first)
        except BaseException:
            await stream.close()
            raise

    return open_stream


class _OpenedStream(NamedTuple):
    """A streamed answer with its first chunk read."""

    stream: Any
    chunks: AsyncIterator[Any]
    first: Any


class _StreamWithToolsRefused(ModelError):
    """The server will not stream an answer that may call tools; ask without streaming."""


def _without_strict(tool: ToolSpec) -> ToolSpec:
    function = tool.get("function")
    if not isinstance(function, dict) or "strict" not in function:
        return tool
    return {**tool, "function": {k: v for k, v in function.items() if k != "strict"}}


def _arguments(arguments: Any) -> str:
    """Tool-call arguments as JSON text (some servers send an object instead of a string)."""
    if isinstance(arguments, dict | list):
        return json.dumps(arguments)
    return str(arguments) if arguments else "{}"


def _as_dict(chunk: Any) -> dict[str, Any]:
    if isinstance(chunk, dict):
        return chunk
    dumped: dict[str, Any] = chunk.model_dump(warnings=False)
    return dumped


__all__ = ["OpenAIChatModel"]
