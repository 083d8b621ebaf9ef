"""A step whose code swallows asyncio's CancelledError (a polling loop with a bare ``except:``, a library retry
decorator catching BaseException) is common step code. Such a step cannot be stopped by a cancel: it is *abandoned*,
as a plain ``def`` step's thread that runs past its timeout is (left to run on, its result dropped), so nothing waits
for it. A timed-out step still fails with StepTimeout, a canceled run frees its slot and its waiters, ``close()``
returns and hands the run back, and whatever the step does once it ends is not recorded.

Each step here ignores cancellation until the test lets it go (``release``), so the test ends either way.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from tests.conftest import EngineFactory
from workflows import StepContext, Workflow, step


class Num(BaseModel):
    n: int


async def poll_until(release: asyncio.Event) -> None:
    """A status-polling loop of the kind steps are made of, with a bare ``except:`` around its request."""
    while not release.is_set():
        try:
            await asyncio.sleep(0.05)  # stand-in for ``await client.get(status_url)``
        except:  # noqa: E722 (the point: user code does this)
            pass


def polling_flow(release: asyncio.Event, started: asyncio.Event, **options: float) -> Workflow:
    @step(id="poll", input=Num, output=Num, **options)
    async def poll(ctx: StepContext[Num]) -> Num:
        started.set()
        await poll_until(release)
        return Num(n=ctx.input.n + 1)

    return Workflow(id="polls", input=Num, output=Num).then(poll)


@step(id="quick", input=Num, output=Num)
async def quick(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n + 1)


async def test_a_step_that_swallows_cancellation_still_fails_with_step_timeout(engine: EngineFactory) -> None:
    release, started = asyncio.Event(), asyncio.Event()
    e = engine(polling_flow(release, started, timeout=0.5).commit())
    handle = await e.start("polls", {"n": 1})
    try:
        result = await handle.result(timeout=5)  # ten times the step's timeout

        assert (result.status, result.error_type, result.error_path) == ("failed", "StepTimeout", "poll")
    finally:
        release.set()
    await asyncio.sleep(0.2)  # the abandoned step ends now: its result is dropped
    assert (await e.get_run(handle.run_id)).status == "failed"
    assert "step.succeeded" not in [ev.type for ev in (await e.details(handle.run_id)).events]


async def test_canceling_a_run_whose_step_swallows_cancellation_frees_its_slot_and_its_waiters(
    engine: EngineFactory,
) -> None:
    release, started = asyncio.Event(), asyncio.Event()
    e = engine(polling_flow(release, started).commit(), Workflow(id="quick", input=Num, output=Num).then(quick).commit(),
               capacity=1)
    handle = await e.start("polls", {"n": 1})
    try:
        await asyncio.wait_for(started.wait(), 5)
        waiter = asyncio.ensure_future(handle.result(timeout=5))
        assert (await e.cancel(handle.run_id, by="U1")).status == "canceled"

        # The engine's only slot is free again for the next run, and whoever waited for the canceled run is told.
        after = await e.start("quick", {"n": 1})
        assert (await after.result(timeout=5)).status == "success"
        assert (await waiter).status == "canceled"
    finally:
        release.set()
    await asyncio.sleep(0.2)  # the abandoned step ends now: what it returns is not recorded
    assert (await e.get_run(handle.run_id)).status == "canceled"
    assert "step.succeeded" not in [ev.type for ev in (await e.details(handle.run_id)).events]


async def test_close_returns_while_a_step_swallows_cancellation_and_hands_the_run_back(engine: EngineFactory) -> None:
    release, started = asyncio.Event(), asyncio.Event()
    e = engine(polling_flow(release, started).commit())
    handle = await e.start("polls", {"n": 1})
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    try:
        await asyncio.wait_for(e.close(), 8)  # a worker's graceful stop on SIGTERM

        assert time.monotonic() - began < 5
    finally:
        release.set()
    await asyncio.sleep(0.2)  # the abandoned step ends now: what it returns is not recorded
    # The run was handed back, for any process to continue (this one reads it without executing anything).
    reader = engine(execute=False)
    run = await reader.get_run(handle.run_id)
    assert (run.status, run.owner) == ("pending", None)
    assert "step.succeeded" not in [ev.type for ev in (await reader.details(handle.run_id)).events]


class Question(BaseModel):
    q: str


async def test_a_timed_step_that_lets_its_cancel_go_and_then_asks_a_person_suspends_the_run(
    engine: EngineFactory,
) -> None:
    """It swallowed the timeout's cancel but ended within the grace by asking a person: the run waits for them, as
    when the step ran inline, not failed with StepTimeout beside an approval left open."""
    @step(id="ask", input=Num, output=Num, suspend=Question, timeout=0.3)
    async def ask(ctx: StepContext[Num]) -> Num:
        try:
            await asyncio.sleep(5)  # a slow lookup
        except:  # noqa: E722
            pass
        await ctx.suspend(Question(q="go on?"))
        return ctx.input

    e = engine(Workflow(id="asks", input=Num, output=Num).then(ask).commit())
    result = await (await e.start("asks", {"n": 1})).result(timeout=10)

    assert (result.status, [s.path for s in result.suspended]) == ("suspended", ["ask"]), result


async def test_an_abandoned_attempt_cannot_ask_a_person_after_its_run_went_on(engine: EngineFactory) -> None:
    """Past the grace the attempt is abandoned and the run fails with StepTimeout; if it later asks a person, no
    approval opens for a run that already failed."""
    release = asyncio.Event()

    @step(id="ask", input=Num, output=Num, suspend=Question, timeout=0.3)
    async def ask(ctx: StepContext[Num]) -> Num:
        await poll_until(release)
        await ctx.suspend(Question(q="go on?"))
        return ctx.input

    e = engine(Workflow(id="asks-late", input=Num, output=Num).then(ask).commit())
    result = await (await e.start("asks-late", {"n": 1})).result(timeout=10)
    assert (result.status, result.error_type) == ("failed", "StepTimeout"), result
    release.set()
    await asyncio.sleep(0.3)

    details = await e.details(result.run_id)
    assert [s for s in details.suspensions if s.status == "open"] == []
    assert "step.suspended" not in [ev.type for ev in details.events]
