"""Workflows for the scale-out tests: each step appends ``run_id path pid`` to THREADFLOW_TEST_EXEC_LOG.

Appends of one short line with O_APPEND are atomic, so several worker processes can share the log.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class Item(BaseModel):
    n: int = 0
    delay: float = 0.0


def record(ctx: StepContext[Item]) -> None:
    line = f"{ctx.run_id} {ctx.path} {os.getpid()}\n".encode()
    fd = os.open(os.environ["THREADFLOW_TEST_EXEC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make_step(name: str) -> object:
    @step(id=name, input=Item, output=Item)
    async def body(ctx: StepContext[Item]) -> Item:
        if ctx.input.delay:
            await asyncio.sleep(ctx.input.delay)
        record(ctx)
        return Item(n=ctx.input.n + 1, delay=ctx.input.delay)

    return body


three_steps = Workflow(id="three-steps", input=Item, output=Item).then(make_step("a")).then(make_step("b")).then(make_step("c")).commit()


class Decision(BaseModel):
    approved: bool
    by: str | None = None


@step(id="gate", input=Item, output=Item, resume=Decision)
async def gate(ctx: StepContext[Item]) -> Item:
    decision = await ctx.suspend({})
    record(ctx)
    return Item(n=ctx.input.n + (1 if decision.approved else 0))


gated = Workflow(id="gated", input=Item, output=Item).then(gate).commit()

WORKFLOWS = [three_steps, gated]
