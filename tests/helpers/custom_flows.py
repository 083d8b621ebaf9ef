"""A team's own workflow module, loaded through THREADFLOW_WORKFLOWS in the CLI tests."""

from __future__ import annotations

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class Numbers(BaseModel):
    a: int
    b: int


class Sum(BaseModel):
    total: int


@step(id="add", input=Numbers, output=Sum)
async def add(ctx: StepContext[Numbers]) -> Sum:
    return Sum(total=ctx.input.a + ctx.input.b)


@step(id="double", input=Sum, output=Sum)
async def double(ctx: StepContext[Sum]) -> Sum:
    return Sum(total=ctx.input.total * 2)


class Ping(BaseModel):
    pong: str


adder = Workflow(id="adder", input=Numbers, output=Sum).then(add).then(double).commit()
waiter = Workflow(id="waiter", input=Numbers).then(add).wait_for_event("ping", Ping).commit()
