"""Agents: instructions, a model, tools and (optionally) thread memory, run as a tool-calling loop.

Why the agent owns the loop instead of the model SDK: every tool result, retry and context must be
recorded (``threadflow show RUN_ID --context`` prints what each agent knew), errors from tools go back
to the model instead of failing a run, and the same loop drives the offline model in examples.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, overload

from pydantic import BaseModel, ValidationError

from storage.memory_store import NewAgentContext

from .errors import DefinitionError, ModelError, format_validation_errors
from .memory import AgentContext, Memory, ThreadMemory
from .model_capabilities import ModelProfile, resolve_profile
from .model_streaming import complete, stream_or_complete
from .model_types import (
    CallOptions,
    Message,
    Model,
    ModelResponse,
    ResponseDone,
    TextDelta,
    ToolCall,
    ToolCallDone,
    Usage,
    estimate_tokens,
)
from .models import ModelConfig, resolve_model
from .observe import emit
from .structured import extract_json, quote_reply
from .tools import Tool, ToolContext, ToolOutcome
from .tracing import span

log = logging.getLogger("threadflow.agent")

OutputT = TypeVar("OutputT")
T = TypeVar("T", bound=BaseModel)

#: How often an answer that does not fit the output model is sent back with the error, by default.
DEFAULT_OUTPUT_RETRIES = 1


class ToolCallRecord(BaseModel):
    id: str
    name: str
    arguments: str
    result: str
    error: bool = False


@dataclass
class _Turn:
    """What one generate() call has spent and done so far (kept when it fails, for the record)."""

    calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    text: str = ""
    parsed: BaseModel | None = None


class AgentResult(BaseModel, Generic[OutputT]):
    """The final answer: ``text`` always, ``output`` (validated) when an output model was asked for."""

    text: str
    output: OutputT | None = None
    tool_calls: list[ToolCallRecord] = []
    usage: Usage = Usage()
    model: str
    context: AgentContext | None = None
    #: The id of this call's agent context record, when one was recorded (what people's feedback rates).
    context_id: int | None = None


# -- what a streamed agent call yields (besides the model's TextDelta and ToolCallDone) ----------------


@dataclass(frozen=True)
class ToolResult:
    """A tool the model called has run; ``record`` holds its arguments and result."""

    record: ToolCallRecord


@dataclass(frozen=True)
class OutputRejected:
    """The answer did not fit the output model; it is sent back with ``errors`` and asked again."""

    text: str
    errors: str


@dataclass(frozen=True)
class AgentDone:
    """The end of the call: the same result ``generate`` returns."""

    result: AgentResult[Any]


AgentEvent: TypeAlias = TextDelta | ToolCallDone | ToolResult | OutputRejected | AgentDone


class Agent:
    """A named assistant. ``model`` is ``"openai:<name>"``, ``"offline"``, a :class:`Model`, or None for the
    configured default (``THREADFLOW_MODEL``; resolved at the first call, not at import).

    ``profile`` names what the model server is (``openai``, ``ollama``, ``vllm``, ``llamacpp``,
    ``lmstudio``, ``generic``; default ``THREADFLOW_MODEL_PROFILE``) for an ``openai:`` model.
    ``output_retries`` is how often an answer that does not fit the output model is sent back with the
    error before the call fails. ``tool_choice`` is ``"auto"``, ``"none"``, or ``"required"`` or a tool's
    name to force a tool call in the first model call of each turn (later calls are ``auto``, so the
    model can answer); a server that refuses it is called without it.
    """

    def __init__(
        self,
        name: str,
        instructions: str,
        model: str | Model | None = None,
        tools: Sequence[Tool] = (),
        memory: Memory | None = None,
        max_steps: int = 8,
        *,
        profile: str | ModelProfile | None = None,
        output_retries: int = DEFAULT_OUTPUT_RETRIES,
        tool_choice: str | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> None:
        if max_steps < 1:
            raise DefinitionError(f"Agent {name!r}: max_steps must be at least 1, got {max_steps}.")
        if not 0 <= output_retries <= 5:
            raise DefinitionError(f"Agent {name!r}: output_retries must be between 0 and 5, got {output_retries}.")
        names = [t.name for t in tools]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise DefinitionError(
                f"Agent {name!r} has several tools named {', '.join(duplicates)}; rename them."
            )
        if memory is not None and (clash := {t.name for t in memory.tools()} & set(names)):
            raise DefinitionError(f"Agent {name!r}: tool name(s) {sorted(clash)} are reserved for memory.")
        known = [*names, *(t.name for t in (memory.tools() if memory is not None else []))]
        if tool_choice is not None and tool_choice not in ("auto", "required", "none", *known):
            raise DefinitionError(
                f"Agent {name!r}: tool_choice={tool_choice!r} is neither 'auto', 'required', 'none' nor one of "
                f"its tools ({', '.join(known) or 'none'})."
            )
        self.name = name
        self.instructions = instructions
        self.tools = list(tools)
        self.memory = memory
        self.max_steps = max_steps
        self.profile = resolve_profile(profile) if profile is not None else None
        self.output_retries = output_retries
        self.options = (
            CallOptions(tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
            if tool_choice is not None or parallel_tool_calls is not None
            else None
        )
        self._model_spec = model
        self._model: Model | None = None
        self._model_key: tuple[ModelConfig, ModelProfile | None] | None = None
        self._retired: list[Model] = []
        self._owns_model = model is None or isinstance(model, str)
        if model is not None and not isinstance(model, str):
            with_profile = getattr(model, "with_profile", None)
            if self.profile is not None and with_profile is not None:
                self._model, self._owns_model = with_profile(self.profile), True
            else:
                self._model = model
        _known_agents.add(self)

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    @property
    def model(self) -> Model:
        """The model; one named by settings is resolved again when they change (a new key, base URL, ...)."""
        if self._model is not None and self._model_key is None:
            return self._model  # given as an object
        key = (ModelConfig.load(), self.profile)
        if self._model is None or key != self._model_key:
            if self._model is not None:
                self._retired.append(self._model)  # closed by aclose(); a call may still be using it
            spec = self._model_spec if isinstance(self._model_spec, str) else None
            self._model, self._model_key = resolve_model(spec, profile=self.profile), key
        return self._model

    async def aclose(self) -> None:
        """Close the model's HTTP client if this agent created the model (from a name or a profile)."""
        retired, self._retired = self._retired, []
        for model in [*retired, *([self._model] if self._owns_model and self._model is not None else [])]:
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()

    @overload
    async def generate(
        self,
        prompt: str,
        *,
        output: type[T],
        thread: str | ThreadMemory | None = None,
        resource: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        author: str | None = None,
        store_prompt: bool = True,
    ) -> AgentResult[T]: ...

    @overload
    async def generate(
        self,
        prompt: str,
        *,
        output: None = None,
        thread: str | ThreadMemory | None = None,
        resource: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        author: str | None = None,
        store_prompt: bool = True,
    ) -> AgentResult[None]: ...

    async def generate(
        self,
        prompt: str,
        *,
        output: type[BaseModel] | None = None,
        thread: str | ThreadMemory | None = None,
        resource: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        author: str | None = None,
        store_prompt: bool = True,
    ) -> AgentResult[Any]:
        """Answer ``prompt``; with a thread, using and then extending its memory.

        ``thread`` is a thread id (needs ``memory=``) or a bound :class:`ThreadMemory` (what a run's
        ``ctx.memory`` is). ``store_prompt=False`` when the caller already stored the user's message.
        """
        async for event in self._run(prompt, output, thread, resource, run_id, path, author, store_prompt,
                                     streaming=False):
            if isinstance(event, AgentDone):
                return event.result
        raise AssertionError("an agent call always ends with AgentDone")

    async def stream(
        self,
        prompt: str,
        *,
        output: type[BaseModel] | None = None,
        thread: str | ThreadMemory | None = None,
        resource: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        author: str | None = None,
        store_prompt: bool = True,
    ) -> AsyncIterator[AgentEvent]:
        """Like :meth:`generate`, calling the model with streaming and yielding what happens as it happens.

        Yields :class:`TextDelta` pieces of the answer, :class:`ToolCallDone` when the model has asked for a
        tool, :class:`ToolResult` when the tool has run, :class:`OutputRejected` when a structured answer is
        sent back to be fixed (text shown so far was that answer), and finally :class:`AgentDone` with the
        same :class:`AgentResult` ``generate`` returns. Models that cannot stream answer in one delta.
        """
        async for event in self._run(prompt, output, thread, resource, run_id, path, author, store_prompt,
                                     streaming=True):
            yield event

    async def _run(
        self,
        prompt: str,
        output: type[BaseModel] | None,
        thread: str | ThreadMemory | None,
        resource: str | None,
        run_id: str | None,
        path: str | None,
        author: str | None,
        store_prompt: bool,
        *,
        streaming: bool,
    ) -> AsyncIterator[AgentEvent]:
        model = self.model
        memory = self._thread(thread, resource, run_id, path)
        run_id = memory.run_id if memory is not None else run_id
        path = memory.path if memory is not None else path
        tools = {t.name: t for t in [*self.tools, *(memory.memory.tools() if memory is not None else [])]}
        specs = [t.spec for t in tools.values()]
        context: AgentContext | None = None
        if memory is not None:
            reserve = estimate_tokens(self.instructions + json.dumps(specs))
            context = await memory.build_context(prompt, reserve_tokens=reserve)
        messages = self._messages(prompt, context, memory.thread_id if memory is not None else None)
        record: dict[str, Any] = {
            "model": model.name,
            "messages": [dict(m) for m in messages],
            "tools": list(tools),
            "output_schema": output.__name__ if output is not None else None,
            "memory": context.model_dump(mode="json") if context is not None else None,
        }
        tool_ctx = ToolContext(agent=self.name, thread=memory, run_id=run_id, path=path)
        turn = _Turn()
        began = time.perf_counter()
        try:
            async for event in self._loop(model, messages, tools, output, tool_ctx, turn, record, streaming):
                yield event
        except ModelError as exc:
            failed: dict[str, Any] = {
                "error": str(exc), "text": turn.text or None, "tool_calls": [c.model_dump() for c in turn.calls],
                "latency_ms": _ms_since(began)}
            await self._record(memory, run_id, path, record, failed, turn.usage)
            raise
        usage, parsed = turn.usage, turn.parsed
        # A structured answer is kept as its validated JSON: fences and prose around it are the server's
        # habit, not something the next agent in the thread should read.
        text = parsed.model_dump_json() if parsed is not None else turn.text
        answer: dict[str, Any] = {
            "text": turn.text,
            "output": parsed.model_dump(mode="json") if parsed is not None else None,
            "tool_calls": [c.model_dump() for c in turn.calls],
            "latency_ms": _ms_since(began),  # model calls and tools, as the run inspector shows it
        }
        if memory is not None:
            new = [memory.new_message("user", prompt, author)] if store_prompt else []
            new.append(memory.new_message("assistant", text, self.name))
            _, context_id = await memory.save_answer(
                new, agent_context=self._context_record(memory, run_id, path, record, answer, usage)
            )
            try:
                usage = usage + await memory.maybe_summarize(model)
            except ModelError as exc:  # the answer stands; the next call tries to summarise again
                log.warning("agent %s: summarising thread %s failed: %s", self.name, memory.thread_id, exc)
        else:
            context_id = await self._record(None, run_id, path, record, answer, usage)
        yield AgentDone(AgentResult(
            text=text, output=parsed, tool_calls=turn.calls, usage=usage, model=model.name, context=context,
            context_id=context_id))

    async def _loop(
        self,
        model: Model,
        messages: list[Message],
        tools: dict[str, Tool],
        output: type[BaseModel] | None,
        tool_ctx: ToolContext,
        turn: _Turn,
        record: dict[str, Any],
        streaming: bool,
    ) -> AsyncIterator[AgentEvent]:
        """Call the model until it answers without tool calls; validate the answer if asked to."""
        specs = [t.spec for t in tools.values()]
        schema = output.model_json_schema() if output is not None else None
        ids = _CallIds()
        steps = 0
        reasks = 0
        while True:
            steps += 1
            options = self.options if steps == 1 or self.options is None else _after_first(self.options)
            started = time.perf_counter()
            response: ModelResponse | None = None
            try:
                if streaming:  # no span around the yields: a span's context must not outlive its task step
                    async for event in stream_or_complete(model, messages, specs, schema, options):
                        if isinstance(event, ResponseDone):
                            response = ids.answered(event.response)
                        elif isinstance(event, ToolCallDone):
                            yield ToolCallDone(ids.streamed(event.call))
                        else:
                            yield event
                    if response is None:
                        raise ModelError(f"Model {model.name!r} ended its stream without a final answer.")
                else:
                    with span("agent.call", agent=self.name, model=model.name):
                        response = ids.answered(await complete(model, messages, specs, schema, options))
            except ModelError as exc:
                emit("llm.call", model=model.name, agent=self.name, prompt_tokens=0, completion_tokens=0,
                     duration=time.perf_counter() - started, error=type(exc.__cause__ or exc).__name__)
                raise
            emit("llm.call", model=model.name, agent=self.name, prompt_tokens=response.usage.prompt_tokens,
                 completion_tokens=response.usage.completion_tokens, duration=time.perf_counter() - started, error=None)
            turn.usage = turn.usage + response.usage
            if output is not None:
                record["output_mode"] = response.output_mode
                record["output_instructions"] = response.output_instructions
            if response.tool_calls:
                if steps >= self.max_steps:
                    raise ModelError(
                        f"Agent {self.name!r} was still calling tools after {self.max_steps} model calls "
                        f"(last: {', '.join(c.name for c in response.tool_calls)}). Raise max_steps or make "
                        "the tools' results more conclusive."
                    )
                messages.append(_assistant_tool_message(response.text, response.tool_calls))
                for call in response.tool_calls:
                    outcome = await self._run_tool(tools, call, tool_ctx)
                    done = ToolCallRecord(**call.model_dump(), result=outcome.content, error=outcome.is_error)
                    turn.calls.append(done)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome.content})
                    yield ToolResult(done)
                continue
            turn.text = response.text or ""
            if output is None:
                return
            parsed, errors = _parse_output(turn.text, output)
            if parsed is not None:
                turn.parsed = parsed
                return
            if reasks >= self.output_retries:
                shown = f" even after being shown the error ({reasks} re-ask{'s' if reasks != 1 else ''})" if reasks else ""
                raise ModelError(
                    f"Agent {self.name!r}: the model's reply does not fit {output.__name__}{shown}: {errors}. "
                    f"It answered: {quote_reply(turn.text)}. Try a more capable model, a simpler output model, "
                    "or the THREADFLOW_MODEL_PROFILE that matches the model server."
                )
            reasks += 1
            emit("llm.output_retry", model=model.name, agent=self.name)
            yield OutputRejected(turn.text, errors)
            messages.append({"role": "assistant", "content": turn.text})
            messages.append(
                {
                    "role": "user",
                    "content": f"Your reply does not match the {output.__name__} JSON schema: {errors}. "
                    "Reply again with only a JSON object that matches the schema.",
                }
            )

    async def _run_tool(self, tools: dict[str, Tool], call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        found = tools.get(call.name)
        if found is None:
            known = ", ".join(tools) or "none"
            return ToolOutcome(
                f"Error: there is no tool named {call.name!r}. Available tools: {known}.", True
            )
        with span("tool.call", tool=call.name, agent=self.name):
            return await found.invoke(call.arguments, ctx)

    def _thread(
        self, thread: str | ThreadMemory | None, resource: str | None, run_id: str | None, path: str | None
    ) -> ThreadMemory | None:
        if thread is None:
            return None
        if isinstance(thread, ThreadMemory):
            if run_id is None and path is None:
                return thread
            return thread.bind(run_id=run_id or thread.run_id, path=path or thread.path)
        if self.memory is None:
            raise DefinitionError(
                f"Agent {self.name!r} was given thread={thread!r} but has no memory. Pass memory=Memory(db) "
                "to Agent(...), or pass a ThreadMemory as thread=."
            )
        return self.memory.thread(thread, resource, run_id=run_id, path=path)

    def _messages(self, prompt: str, context: AgentContext | None, thread_id: str | None) -> list[Message]:
        """System instructions, then working memory, summary, recalled and recent messages, then the prompt."""
        messages: list[Message] = [{"role": "system", "content": self.instructions}]
        if context is not None:
            if context.working_memory is not None:
                messages.append(
                    {
                        "role": "system",
                        "content": "Your working memory (rewrite it with the update_working_memory tool when you "
                        "learn something worth keeping):\n" + context.working_memory,
                    }
                )
            if context.summary:
                messages.append(
                    {"role": "system", "content": "Summary of the earlier conversation:\n" + context.summary}
                )
            if context.recalled:
                lines = []
                for item in context.recalled:
                    m = item.message
                    where = "" if m.thread_id == thread_id else " (in another thread)"
                    lines.append(f"- {m.author or m.role}: {' '.join(m.content.split())}{where}")
                messages.append(
                    {
                        "role": "system",
                        "content": "Earlier messages recalled from memory:\n" + "\n".join(lines),
                    }
                )
            for m in context.messages:
                if m.role == "tool":
                    continue  # a tool result without its call is not a valid chat message
                content = m.content if not m.author or m.author == self.name else f"[{m.author}] {m.content}"
                messages.append({"role": m.role, "content": content})
        messages.append({"role": "user", "content": prompt})
        return messages

    def _context_record(
        self,
        memory: ThreadMemory | None,
        run_id: str | None,
        path: str | None,
        context: dict[str, Any],
        answer: dict[str, Any],
        usage: Usage,
    ) -> NewAgentContext:
        return NewAgentContext(
            run_id=run_id,
            path=path,
            agent=self.name,
            thread_id=memory.thread_id if memory is not None else None,
            context=context,
            answer=answer,
            usage=usage.model_dump(),
        )

    async def _record(
        self,
        memory: ThreadMemory | None,
        run_id: str | None,
        path: str | None,
        context: dict[str, Any],
        answer: dict[str, Any],
        usage: Usage,
    ) -> int | None:
        """Record a context without thread messages (no thread, or a failed call); needs some store.
        Returns the record's id, or None when there was nowhere to record it."""
        store = memory.store if memory is not None else self.memory.store if self.memory is not None else None
        if store is not None and (memory is not None or run_id is not None):
            return await store.record_agent_context(
                self._context_record(memory, run_id, path, context, answer, usage)
            )
        return None


class _CallIds:
    """Gives each tool call of a turn an id of its own. Servers whose parser gives none are numbered per answer
    (``call_0``, ``call_1``, ...), so two model calls in a turn repeat them: the model would be told two results for
    one call, and Slack would show the second tool in the first one's task card. A call with no id, or an id already
    used this turn, gets the next free ``call_N``; a streamed call keeps the id it was shown with."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._shown: dict[str, list[str]] = {}  # the id a streamed call came with -> the ids it was shown with

    def streamed(self, call: ToolCall) -> ToolCall:
        """A call as it completes in a stream (before the answer it belongs to is whole)."""
        own = self._own(call)
        self._shown.setdefault(call.id, []).append(own.id)
        return own

    def answered(self, response: ModelResponse) -> ModelResponse:
        """The whole answer, its calls with the ids they were streamed with (or new ones)."""
        shown, self._shown = self._shown, {}
        if not response.tool_calls:
            return response
        calls = []
        for call in response.tool_calls:
            given = shown.get(call.id)
            calls.append(call.model_copy(update={"id": given.pop(0)}) if given else self._own(call))
        if all(a.id == b.id for a, b in zip(calls, response.tool_calls, strict=True)):
            return response
        return response.model_copy(update={"tool_calls": calls})

    def _own(self, call: ToolCall) -> ToolCall:
        if call.id and call.id not in self._used:
            self._used.add(call.id)
            return call
        n = len(self._used)
        while f"call_{n}" in self._used:
            n += 1
        self._used.add(f"call_{n}")
        return call.model_copy(update={"id": f"call_{n}"})


def _assistant_tool_message(text: str | None, calls: list[ToolCall]) -> Message:
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _parse_output(text: str, output: type[BaseModel]) -> tuple[BaseModel | None, str]:
    """The reply validated against ``output`` (its JSON found wherever it is), or the reason it is not."""
    found = extract_json(text)
    if found is None:
        return None, "the reply contains no JSON object"
    try:
        return output.model_validate_json(found), ""
    except ValidationError as exc:
        return None, format_validation_errors([dict(e) for e in exc.errors(include_url=False)])


def _after_first(options: CallOptions) -> CallOptions | None:
    """Options for the calls after the first in a turn: a forced tool call is lifted so the model can answer."""
    if options.tool_choice in (None, "auto", "none"):
        return options
    if options.parallel_tool_calls is None:
        return None
    return CallOptions(parallel_tool_calls=options.parallel_tool_calls)


_known_agents: weakref.WeakSet[Agent] = weakref.WeakSet()


def known_agents() -> list[Agent]:
    """Every agent alive in this process (``threadflow doctor`` looks at what the registered ones use)."""
    return list(_known_agents)


def _ms_since(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 1)
