"""Workflows that carry what a run's input says into a place the bot shows in Slack (a suspend payload, a step's
error, a run's output, many checklist lines), loaded through THREADFLOW_WORKFLOWS=tests.helpers.content_flows.

Tests of what cards and replies show (escaping, mentions, Slack's size limits) start them from ``/flow run``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workflows import StepContext, Workflow, step
from workflows.errors import RunFailure


class Anything(BaseModel):
    card: dict[str, Any] = Field(default_factory=dict)
    text: str = ""
    count: int = 3
    #: Each string of ``card`` and ``text`` repeated this many times (big content from a short command).
    repeat: int = 1

    def big(self) -> tuple[dict[str, Any], str]:
        return ({k: v * self.repeat if isinstance(v, str) else v for k, v in self.card.items()},
                self.text * self.repeat)


class Decision(BaseModel):
    approved: bool
    by: str | None = None
    reason: str | None = None


class Done(BaseModel):
    ok: bool = True


class Boom(RunFailure):
    """A step failing with the message its input says."""


@step(id="ask", input=Anything, output=Done, resume=Decision)
async def ask(ctx: StepContext[Anything]) -> Done:
    """Suspend with the payload the input carries (as a step that asks a person about data would)."""
    decision: Decision = await ctx.suspend(ctx.input.big()[0])
    if not decision.approved:
        raise Boom(f"Rejected by {decision.by}")
    return Done()


card = Workflow(id="card", input=Anything, output=Done).then(ask).commit()


@step(id="explode", input=Anything)
async def explode(ctx: StepContext[Anything]) -> Any:
    raise Boom(ctx.input.big()[1])


fail = Workflow(id="fail", input=Anything).then(explode).commit()


@step(id="echo", input=Anything)
async def echo(ctx: StepContext[Anything]) -> Any:
    payload, text = ctx.input.big()
    return {"text": text, "card": payload}


echoes = Workflow(id="echo", input=Anything).then(echo).commit()


def _noop(i: int) -> Any:
    @step(id=f"stage-{i:02d}")
    async def stage(ctx: StepContext[Any]) -> Any:
        return ctx.input

    return stage


_long = Workflow(id="sixty-steps", input=Anything)
for _i in range(60):
    _long = _long.then(_noop(_i))
sixty_steps = _long.commit()


@step(id="item")
async def item(ctx: StepContext[Any]) -> Any:
    return ctx.input


fanout = Workflow(id="fanout", input=Anything).foreach(item, items=lambda x: list(range(x.count))).commit()
