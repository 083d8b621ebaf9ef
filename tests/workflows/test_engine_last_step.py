"""A run's last step commits with the run's end: what happens around it (a cancel elsewhere, nested shapes)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel

from storage import Database
from storage.records import NewEvent
from storage.runs import RunStore
from tests.helpers import eventually
from workflows import StepContext, Workflow, step

gate: dict[str, asyncio.Event] = {}
ran: list[str] = []


class Num(BaseModel):
    n: int


@step(id="first", input=Num, output=Num)
async def first(ctx: StepContext[Num]) -> Num:
    ran.append("first")
    return Num(n=ctx.input.n + 1)


@step(id="slow-last", input=Num, output=Num)
async def slow_last(ctx: StepContext[Num]) -> Num:
    ran.append("slow-last")
    await gate["g"].wait()
    return Num(n=ctx.input.n * 10)


two = Workflow(id="two", input=Num, output=Num).then(first).then(slow_last).commit()


async def test_a_run_canceled_elsewhere_while_its_last_step_runs_stops_quietly(engine, db_url, caplog) -> None:
    """Another process cancels the run while its last step runs (the local task is not cancelled)."""
    gate["g"] = asyncio.Event()
    ran.clear()
    e = engine(two, lease_seconds=60)
    handle = await e.start("two", {"n": 1})
    await eventually(lambda: "slow-last" in ran, timeout=5)

    other = Database(db_url)
    await other.open()
    try:
        await RunStore(other).cancel(handle.run_id, "ops", [NewEvent(type="run.canceled", data={"by": "ops"})])
    finally:
        await other.close()
    with caplog.at_level(logging.INFO, logger="threadflow"):
        gate["g"].set()
        result = await handle.result(timeout=5)
        await eventually(lambda: handle.run_id not in e._tasks, timeout=5)

    assert result.status == "canceled"
    assert [s.path for s in (await e.details(handle.run_id)).steps] == ["first"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The end's commit (with the last step) found the run canceled: told at INFO ("lease lost ...; stopping").
    assert errors == [], [r.getMessage() for r in errors]


async def test_the_last_steps_of_nested_shapes_are_each_committed(engine) -> None:
    """Steps that end a parallel, a loop, a foreach or an inner workflow are not the run's last: all recorded."""

    @step(id="p1", input=Num, output=Num)
    async def p1(ctx: StepContext[Num]) -> Num:
        return Num(n=ctx.input.n)

    @step(id="p2", input=Num, output=Num)
    async def p2(ctx: StepContext[Num]) -> Num:
        return Num(n=ctx.input.n)

    @step(id="inc", input=Num, output=Num)
    async def inc(ctx: StepContext[Num]) -> Num:
        return Num(n=ctx.input.n + 1)

    @step(id="take", output=Num)
    async def take(ctx: StepContext[Any]) -> Num:
        return Num(n=1)

    inner = Workflow(id="inner", input=Num, output=Num).then(inc).then(p1).commit()
    wf = (Workflow(id="shapes", input=Num)
          .then(inner)
          .parallel([p1, p2])
          .then(take)
          .dountil(inc, lambda v: v.n >= 3, max_iterations=5)
          .commit())
    e = engine(wf)
    result = await (await e.start("shapes", {"n": 0})).result(timeout=5)
    assert result.status == "success", result.error
    paths = [s.path for s in (await e.details(result.run_id)).steps]
    assert paths == ["inner/inc", "inner/p1", "p1", "p2", "take", "inc#0", "inc#1"], paths

