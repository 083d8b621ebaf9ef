"""Agents: instructions, a model, tools and (optionally) thread memory, run as a tool-calling loop.

Why the agent owns the loop instead of the model SDK: every tool result, retry and context must be
recorded (``threadflow show RUN_ID --context`` prints what each agent knew), errors from tools go back
to the model instead of failing a run, and the same loop drives the offline model in examples.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel, ValidationError

from storage.memory_store import NewAgentContext

from .errors import DefinitionError, ModelError, format_validation_errors
from .memory import AgentContext, Memory, ThreadMemory
from .models import Message, Model, ToolCall, Usage, estimate_tokens, resolve_model
from .observe import emit
from .tools import Tool, ToolContext, ToolOutcome
from .tracing import span

log = logging.getLogger("threadflow.agent")

OutputT = TypeVar("OutputT")
T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


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


class AgentResult(BaseModel, Generic[OutputT]):
    """The final answer: ``text`` always, ``output`` (validated) when an output model was asked for."""

    text: str
    output: OutputT | None = None
    tool_calls: list[ToolCallRecord] = []
    usage: Usage = Usage()
    model: str
    context: AgentContext | None = None


class Agent:
    """A named assistant. ``model`` is ``"openai:<name>"``, ``"offline"``, a :class:`Model`, or None for the
    configured default (``THREADFLOW_MODEL``; resolved at the first call, not at import)."""

    def __init__(
        self,
        name: str,
        instructions: str,
        model: str | Model | None = None,
        tools: Sequence[Tool] = (),
        memory: Memory | None = None,
        max_steps: int = 8,
    ) -> None:
        if max_steps < 1:
            raise DefinitionError(f"Agent {name!r}: max_steps must be at least 1, got {max_steps}.")
        names = [t.name for t in tools]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise DefinitionError(
                f"Agent {name!r} has several tools named {', '.join(duplicates)}; rename them."
            )
        if memory is not None and (clash := {t.name for t in memory.tools()} & set(names)):
            raise DefinitionError(f"Agent {name!r}: tool name(s) {sorted(clash)} are reserved for memory.")
        self.name = name
        self.instructions = instructions
        self.tools = list(tools)
        self.memory = memory
        self.max_steps = max_steps
        self._model_spec = model
        self._model: Model | None = model if model is not None and not isinstance(model, str) else None

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    @property
    def model(self) -> Model:
        if self._model is None:
            self._model = resolve_model(self._model_spec)
        return self._model

    async def aclose(self) -> None:
        """Close the model's HTTP client if this agent created the model from a name."""
        if isinstance(self._model_spec, (str, type(None))) and self._model is not None:
            close = getattr(self._model, "aclose", None)
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
        try:
            text, parsed = await self._loop(model, messages, tools, output, tool_ctx, turn)
        except ModelError as exc:
            failed: dict[str, Any] = {"error": str(exc), "tool_calls": [c.model_dump() for c in turn.calls]}
            await self._record(memory, run_id, path, record, failed, turn.usage)
            raise
        usage = turn.usage
        answer: dict[str, Any] = {
            "text": text,
            "output": parsed.model_dump(mode="json") if parsed is not None else None,
            "tool_calls": [c.model_dump() for c in turn.calls],
        }
        if memory is not None:
            new = [memory.new_message("user", prompt, author)] if store_prompt else []
            new.append(memory.new_message("assistant", text, self.name))
            await memory.save(
                new, agent_context=self._context_record(memory, run_id, path, record, answer, usage)
            )
            try:
                usage = usage + await memory.maybe_summarize(model)
            except ModelError as exc:  # the answer stands; the next call tries to summarise again
                log.warning("agent %s: summarising thread %s failed: %s", self.name, memory.thread_id, exc)
        else:
            await self._record(None, run_id, path, record, answer, usage)
        return AgentResult(
            text=text, output=parsed, tool_calls=turn.calls, usage=usage, model=model.name, context=context
        )

    async def _loop(
        self,
        model: Model,
        messages: list[Message],
        tools: dict[str, Tool],
        output: type[BaseModel] | None,
        tool_ctx: ToolContext,
        turn: _Turn,
    ) -> tuple[str, BaseModel | None]:
        """Call the model until it answers without tool calls; validate the answer if asked to."""
        specs = [t.spec for t in tools.values()]
        schema = output.model_json_schema() if output is not None else None
        steps = 0
        repaired = False
        while True:
            steps += 1
            started = time.perf_counter()
            try:
                with span("agent.call", agent=self.name, model=model.name):
                    response = await model.complete(messages, specs, schema)
            except ModelError as exc:
                emit("llm.call", model=model.name, agent=self.name, prompt_tokens=0, completion_tokens=0,
                     duration=time.perf_counter() - started, error=type(exc.__cause__ or exc).__name__)
                raise
            emit("llm.call", model=model.name, agent=self.name, prompt_tokens=response.usage.prompt_tokens,
                 completion_tokens=response.usage.completion_tokens, duration=time.perf_counter() - started, error=None)
            turn.usage = turn.usage + response.usage
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
                    turn.calls.append(
                        ToolCallRecord(**call.model_dump(), result=outcome.content, error=outcome.is_error)
                    )
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": outcome.content})
                continue
            text = response.text or ""
            if output is None:
                return text, None
            try:
                return text, output.model_validate_json(_strip_fence(text))
            except ValidationError as exc:
                errors = format_validation_errors([dict(e) for e in exc.errors(include_url=False)])
                if repaired:
                    raise ModelError(
                        f"Agent {self.name!r}: the model's reply does not fit {output.__name__} even after "
                        f"being shown the error: {errors}. Try a more capable model or a simpler output model."
                    ) from exc
                repaired = True
                messages.append({"role": "assistant", "content": text})
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
    ) -> None:
        """Record a context without thread messages (no thread, or a failed call); needs some store."""
        store = memory.store if memory is not None else self.memory.store if self.memory is not None else None
        if store is not None and (memory is not None or run_id is not None):
            await store.record_agent_context(
                self._context_record(memory, run_id, path, context, answer, usage)
            )


def _assistant_tool_message(text: str | None, calls: list[ToolCall]) -> Message:
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _strip_fence(text: str) -> str:
    """Models sometimes wrap JSON in a Markdown code fence even when asked for JSON only."""
    match = _FENCE.match(text)
    return match.group(1) if match else text
