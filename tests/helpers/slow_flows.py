"""A workflow whose first step takes a while (``seconds``, 3 by default), so a signal or a restart lands during it;
loaded through THREADFLOW_WORKFLOWS=tests.helpers.slow_flows."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class Slow(BaseModel):
    seconds: float = 3.0


class Done(BaseModel):
    ran_in: int


@step(id="nap", input=Slow, output=Slow)
async def nap(ctx: StepContext[Slow]) -> Slow:
    await asyncio.sleep(ctx.input.seconds)
    return ctx.input


@step(id="finish", input=Slow, output=Done)
async def finish(ctx: StepContext[Slow]) -> Done:
    return Done(ran_in=os.getpid())


slow_flow = Workflow(id="slow-flow", input=Slow, output=Done).then(nap).then(finish).commit()
