"""``agent_step``: an agent as a workflow step that shares the run's memory thread.

Inside a run the step reads and writes the run's memory thread (``thread_id``/``resource_id`` given at
``engine.start``) without any parameter, so every agent of the run knows what the earlier ones said. A
run started without a thread still gets one of its own (``run:{run_id}``), so agents in it share memory
and ``threadflow show RUN_ID --context`` can show what each one was given.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .agent import Agent
from .context import StepContext, run_thread_id
from .progress import StepProgress
from .step import RetryPolicy, Step


class AgentText(BaseModel):
    """The output of an agent step without an output model: the agent's answer."""

    text: str


PromptArg = str | Callable[..., Any] | None


def agent_step(
    agent: Agent,
    *,
    id: str | None = None,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    prompt: PromptArg = None,
    retry: RetryPolicy | None = None,
    post_output: bool = True,
    description: str | None = None,
) -> Step[Any, Any]:
    """Turn ``agent`` into a step.

    ``prompt`` is a format string over the input's fields (``"Plan: {request}"``), a function of the input
    (or of input and ``ctx``; may be async), or None to send the input as JSON. Without ``output`` the step
    returns :class:`AgentText`; with it, the agent's validated structured answer. ``post_output`` tells the
    Slack bot this step's output is worth posting in the thread; such a step also publishes its progress while
    it runs (its answer as it streams, its tool calls) when the engine has somewhere to publish it
    (``engine.progress``), so the bot can show the answer growing.
    """

    async def run_agent(ctx: StepContext[Any]) -> Any:
        text = await render_prompt(prompt, ctx)
        thread = run_thread(ctx)
        progress = ctx.engine.progress if post_output and ctx.engine is not None else None
        if progress is None:
            result = await agent.generate(text, output=output, thread=thread, resource=ctx.resource_id,
                                          run_id=ctx.run_id, path=ctx.path, author="workflow")
        else:  # shown live where the run is shown (the Slack bot streams it into the run's thread)
            async with StepProgress(progress, ctx.run_id, ctx.path, ctx.attempt, step_id=ctx.step.id,
                                    agent=agent.name) as live:
                result = await live.follow(agent.stream(
                    text, output=output, thread=thread, resource=ctx.resource_id, run_id=ctx.run_id,
                    path=ctx.path, author="workflow"))
        return result.output if output is not None else AgentText(text=result.text)

    return Step(
        id=id or agent.name,
        fn=run_agent,
        input=input,
        output=output or AgentText,
        retry=retry,
        description=description or f"Agent {agent.name}",
        metadata={"agent": agent.name, "post_output": post_output, "answer": "structured" if output else "text",
                  "tools": [t.name for t in agent.tools]},
    )


def run_thread(ctx: StepContext[Any]) -> Any:
    """The run's memory thread bound to this step, or the run's own thread when it was started without one."""
    memory = ctx.memory
    if memory is not None:
        return memory
    shared = ctx.engine.memory if ctx.engine is not None else None
    if shared is None:
        return None
    return shared.thread(run_thread_id(None, ctx.run_id), ctx.resource_id, run_id=ctx.run_id, path=ctx.path)


async def render_prompt(prompt: PromptArg, ctx: StepContext[Any]) -> str:
    value = ctx.input
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    if prompt is None:
        return json.dumps(data, ensure_ascii=False, default=str)
    if isinstance(prompt, str):
        return prompt.format(**data) if isinstance(data, dict) else prompt
    params = len(inspect.signature(prompt).parameters)
    rendered = prompt(value, ctx) if params >= 2 else prompt(value)
    if inspect.isawaitable(rendered):
        rendered = await rendered
    return str(rendered)
