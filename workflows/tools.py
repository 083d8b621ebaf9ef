"""Tools: async functions an agent's model may call, declared by a pydantic model of their arguments.

Why a pydantic model per tool: the same class gives the JSON schema the model sees and validates what
the model sends back. A model that sends bad arguments, or a tool that raises, is not a crash: the
error goes back to the model as the tool's result (so it can correct itself), and the agent records it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_type_hints, overload

from pydantic import BaseModel, ValidationError

from .errors import DefinitionError, ToolFailed, format_validation_errors
from .models import ToolSpec

if TYPE_CHECKING:
    from .memory import ThreadMemory

log = logging.getLogger("threadflow.tools")


@dataclass
class ToolContext:
    """What a tool may know about the call: which agent, run position and thread memory."""

    agent: str
    thread: ThreadMemory | None = None
    run_id: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool


class Tool:
    """A callable tool; build it with :func:`tool`."""

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(f"Tool {fn.__qualname__!r} must be an `async def` function.")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or self.name.replace("_", " ")
        self.args_model, self.wants_context = _signature(fn)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    @property
    def spec(self) -> ToolSpec:
        """The OpenAI function-tool declaration."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.args_model.model_json_schema(),
            },
        }

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        """Run the tool on the model's JSON arguments; errors come back as text for the model."""
        return (await self.invoke(arguments, ctx)).content

    async def invoke(self, arguments: str, ctx: ToolContext) -> ToolOutcome:
        try:
            args = self.args_model.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            errors = format_validation_errors([dict(e) for e in exc.errors(include_url=False)])
            return ToolOutcome(
                f"Error: invalid arguments for tool {self.name!r}: {errors}. "
                "Call it again with arguments that match its parameters schema.",
                True,
            )
        try:
            result = await (self.fn(args, ctx) if self.wants_context else self.fn(args))
        except ToolFailed as exc:
            return ToolOutcome(f"Error: tool {self.name!r} failed: {exc}", True)
        except Exception as exc:  # reported to the model, which decides what to do next
            log.warning("tool %s raised %s: %s", self.name, type(exc).__name__, exc, exc_info=True)
            return ToolOutcome(f"Error: tool {self.name!r} failed: {type(exc).__name__}: {exc}", True)
        return ToolOutcome(_to_text(result), False)


def _signature(fn: Callable[..., Any]) -> tuple[type[BaseModel], bool]:
    params = list(inspect.signature(fn).parameters.values())
    try:
        hints = get_type_hints(fn)
    except NameError as exc:
        raise DefinitionError(
            f"Tool {fn.__qualname__!r} has an annotation that cannot be resolved ({exc}); define its "
            "argument model at module level so its name can be found."
        ) from exc
    usage = (
        f"Tool {fn.__qualname__!r} must take one pydantic model argument, optionally followed by a "
        "ToolContext: `async def my_tool(args: MyArgs, ctx: ToolContext) -> str`."
    )
    if not 1 <= len(params) <= 2:
        raise DefinitionError(usage)
    model = hints.get(params[0].name)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise DefinitionError(usage)
    if len(params) == 2 and hints.get(params[1].name) not in (ToolContext, None):
        raise DefinitionError(usage)
    return model, len(params) == 2


def _to_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, default=str)


@overload
def tool(fn: Callable[..., Awaitable[Any]], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Tool]: ...


def tool(
    fn: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Awaitable[Any]]], Tool]:
    """Make an async function a :class:`Tool`: ``@tool`` or ``@tool(name=..., description=...)``.

    The name defaults to the function's name and the description to its docstring: the model reads
    both when it decides which tool to call.
    """
    if fn is not None:
        return Tool(fn, name=name, description=description)

    def wrap(f: Callable[..., Awaitable[Any]]) -> Tool:
        return Tool(f, name=name, description=description)

    return wrap
