"""Retries (with attempts visible in events) and cancellation (final: nothing overwrites it)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from pydantic import BaseModel

from tests.helpers import eventually, status_of
from workflows import (
    NotSuspended,
    NotWaitingForEvent,
    RetryPolicy,
    RunFinished,
    StepContext,
    Workflow,
    step,
)


class Num(BaseModel):
    n: int


class Ok(BaseModel):
    ok: bool


FAST_RETRY = {"backoff": 0.01, "jitter": False}


# -- retries ------------------------------------------------------------------------------------------


async def test_a_flaky_step_is_retried_and_its_attempts_are_visible(engine):
    attempts: list[int] = []

    @step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=3, **FAST_RETRY))
    async def flaky(ctx: StepContext[Num]) -> Num:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt} failed")
        return Num(n=ctx.input.n + 1)

    wf = Workflow(id="flaky-wf", input=Num, output=Num).then(flaky).commit()
    e = engine(wf)

    result = await (await e.start("flaky-wf", {"n": 1})).result(timeout=5)

    assert result.status == "success" and result.output == {"n": 2}
    assert attempts == [1, 2, 3]
    details = await e.details(result.run_id)
    assert [s.attempts for s in details.steps] == [3]
    retrying = [ev for ev in details.events if ev.type == "step.retrying"]
    assert [(ev.path, ev.data["attempt"], ev.data["error"]) for ev in retrying] == [
        ("flaky", 1, "ConnectionError: try 1 failed"),
        ("flaky", 2, "ConnectionError: try 2 failed"),
    ]
    assert [ev.data["delay"] for ev in retrying] == [0.01, 0.02]  # exponential backoff
    assert [ev.data["attempt"] for ev in details.events if ev.type == "step.started"] == [1, 2, 3]
    [succeeded] = [ev for ev in details.events if ev.type == "step.succeeded"]
    assert succeeded.data["attempts"] == 3


async def test_a_step_that_keeps_failing_fails_the_run_after_its_last_attempt(engine):
    calls = Counter()

    @step(id="down", input=Num, output=Num, retry=RetryPolicy(attempts=2, **FAST_RETRY))
    async def down(ctx: StepContext[Num]) -> Num:
        calls["down"] += 1
        raise ConnectionError("service unavailable")

    wf = Workflow(id="down-wf", input=Num).then(down).commit()
    e = engine(wf)

    result = await (await e.start("down-wf", {"n": 1})).result(timeout=5)

    assert result.status == "failed"
    assert calls["down"] == 2
    assert result.error_type == "ConnectionError" and result.error_path == "down"
    assert "failed after 2 attempt" in result.error and "service unavailable" in result.error
    details = await e.details(result.run_id)
    assert details.run.error["attempts"] == 2
    [failed] = [ev for ev in details.events if ev.type == "step.failed"]
    assert failed.path == "down" and failed.data["attempts"] == 2
    assert len([ev for ev in details.events if ev.type == "step.retrying"]) == 1


async def test_only_the_listed_exceptions_are_retried(engine):
    calls = Counter()

    @step(id="picky", input=Num, output=Num, retry=RetryPolicy(attempts=5, retry_on=(ConnectionError,), **FAST_RETRY))
    async def picky(ctx: StepContext[Num]) -> Num:
        calls["picky"] += 1
        raise ValueError("a bug, not an outage")

    wf = Workflow(id="picky-wf", input=Num).then(picky).commit()
    e = engine(wf)

    result = await (await e.start("picky-wf", {"n": 1})).result(timeout=5)

    assert result.status == "failed" and result.error_type == "ValueError"
    assert calls["picky"] == 1


async def test_the_workflow_retry_policy_applies_to_steps_without_their_own(engine):
    calls = Counter()

    @step(id="shaky", input=Num, output=Num)
    async def shaky(ctx: StepContext[Num]) -> Num:
        calls["shaky"] += 1
        if ctx.attempt < 4:
            raise TimeoutError("slow upstream")
        return ctx.input

    @step(id="strict", input=Num, output=Num, retry=RetryPolicy(attempts=1))
    async def strict(ctx: StepContext[Num]) -> Num:
        calls["strict"] += 1
        raise TimeoutError("no second chances")

    wf = Workflow(id="policy", input=Num, retry=RetryPolicy(attempts=4, **FAST_RETRY)).then(shaky).then(strict).commit()
    e = engine(wf)

    result = await (await e.start("policy", {"n": 1})).result(timeout=5)

    assert calls == Counter({"shaky": 4, "strict": 1})
    assert result.status == "failed" and result.error_path == "strict"


async def test_output_that_does_not_fit_is_not_retried(engine):
    calls = Counter()

    @step(id="wrong-shape", input=Num, output=Num, retry=RetryPolicy(attempts=3, **FAST_RETRY))
    async def wrong_shape(ctx: StepContext[Num]) -> dict:
        calls["wrong-shape"] += 1
        return {"m": 1}

    wf = Workflow(id="no-retry-for-bugs", input=Num).then(wrong_shape).commit()
    e = engine(wf)

    result = await (await e.start("no-retry-for-bugs", {"n": 1})).result(timeout=5)

    assert result.status == "failed" and result.error_type == "OutputInvalid"
    assert calls["wrong-shape"] == 1


# -- cancel -------------------------------------------------------------------------------------------


def blocking_workflow(calls: Counter, started: asyncio.Event, interrupted: asyncio.Event, release: asyncio.Event):
    @step(id="block", input=Num, output=Num)
    async def block(ctx: StepContext[Num]) -> Num:
        calls["block"] += 1
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            interrupted.set()
            raise
        return ctx.input

    @step(id="after", input=Num, output=Num)
    async def after(ctx: StepContext[Num]) -> Num:
        calls["after"] += 1
        return ctx.input

    return Workflow(id="blocking", input=Num).then(block).then(after).commit()


async def test_cancelling_a_running_run_stops_its_step_and_is_final(engine):
    calls = Counter()
    started, interrupted, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    e = engine(blocking_workflow(calls, started, interrupted, release))
    handle = await e.start("blocking", {"n": 1})
    await asyncio.wait_for(started.wait(), 5)

    result = await e.cancel(handle.run_id, by="U1")

    assert result.status == "canceled"
    assert result.error == "Canceled by U1."
    await asyncio.wait_for(interrupted.wait(), 5)
    assert (await handle.result(timeout=5)).status == "canceled"
    with pytest.raises(NotSuspended, match="canceled"):
        await e.resume(handle.run_id, data={})
    with pytest.raises(RunFinished, match="already canceled"):
        await e.cancel(handle.run_id, by="U2")
    assert await e.recover() == []
    assert await status_of(e, handle.run_id) == "canceled"
    assert calls == Counter({"block": 1})
    details = await e.details(handle.run_id)
    assert details.steps == []
    assert details.events[-1].type == "run.canceled" and details.events[-1].data == {"by": "U1"}


async def test_cancel_from_another_engine_stops_the_holder_and_its_late_result_is_discarded(engine):
    calls = Counter()
    started, interrupted, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    wf = blocking_workflow(calls, started, interrupted, release)
    holder = engine(wf, lease_seconds=0.3)
    other = engine(wf, lease_seconds=0.3)
    handle = await holder.start("blocking", {"n": 1})
    await asyncio.wait_for(started.wait(), 5)

    await other.cancel(handle.run_id, by="admin")
    release.set()  # the step finishes after the cancel: its result must not be recorded

    await eventually(lambda: handle.run_id not in holder._tasks)
    assert await status_of(holder, handle.run_id) == "canceled"
    assert (await holder.details(handle.run_id)).steps == []
    assert calls["after"] == 0


async def test_cancelling_a_suspended_run_closes_its_suspension_for_good(engine):
    @step(id="ask", input=Num, output=Ok, resume=Ok)
    async def ask(ctx: StepContext[Num]) -> Ok:
        return await ctx.suspend({"q": "ok?"})

    wf = Workflow(id="asking", input=Num).then(ask).commit()
    e = engine(wf)
    run_id = (await (await e.start("asking", {"n": 1})).result(timeout=5)).run_id

    result = await e.cancel(run_id, by="U1")

    assert result.status == "canceled"
    with pytest.raises(NotSuspended):
        await e.resume(run_id, step="ask", data={"ok": True}, by="U2")
    assert await status_of(e, run_id) == "canceled"
    assert (await e.handle(run_id).result(timeout=5)).status == "canceled"
    # Even the storage-level compare-and-set refuses it: a canceled run's suspensions are closed.
    with pytest.raises(Exception, match="compare-and-set"):
        await e.store.resolve_suspension(run_id, "ask", {"ok": True}, "sneaky", [])


async def test_cancelling_a_waiting_run_means_it_never_wakes_or_takes_events(engine):
    class Go(BaseModel):
        go: bool

    sleeper = Workflow(id="sleeper", input=Num).sleep(30).commit()
    listener = Workflow(id="listener", input=Num).wait_for_event("go", Go).commit()
    e = engine(sleeper, listener)
    sleeping = await e.start("sleeper", {"n": 1})
    listening = await e.start("listener", {"n": 1})
    await eventually(lambda: _status_is(e, sleeping.run_id, "waiting"))
    assert (await listening.result(timeout=5)).status == "waiting"

    assert (await e.cancel(sleeping.run_id)).status == "canceled"
    assert (await e.cancel(listening.run_id)).status == "canceled"

    with pytest.raises(NotWaitingForEvent, match="canceled"):
        await e.send_event(listening.run_id, "go", {"go": True})
    assert await e.recover() == []
    assert await status_of(e, sleeping.run_id) == "canceled"
    assert await status_of(e, listening.run_id) == "canceled"


async def _status_is(e, run_id, status):
    return await status_of(e, run_id) == status


async def test_a_finished_run_cannot_be_canceled(engine):
    @step(id="quick", input=Num, output=Num)
    async def quick(ctx: StepContext[Num]) -> Num:
        return ctx.input

    e = engine(Workflow(id="quick-wf", input=Num).then(quick).commit())
    run_id = (await (await e.start("quick-wf", {"n": 1})).result(timeout=5)).run_id

    with pytest.raises(RunFinished, match="already success"):
        await e.cancel(run_id, by="U1")
    assert await status_of(e, run_id) == "success"


async def test_nothing_is_recorded_about_a_run_after_it_was_canceled(engine):
    # A holder that has not noticed the cancel yet is in the middle of an attempt; what it says then
    # (step.started, step.retrying) must not land after the run's final event. Its failed attempt's record is
    # refused (the run is no longer its own), so it tries no more than once after the cancel.
    attempts = Counter()
    first_failure = asyncio.Event()

    @step(id="retrying", input=Num, output=Num, retry=RetryPolicy(attempts=1000, backoff=0.02, jitter=False, multiplier=1))
    async def retrying(ctx: StepContext[Num]) -> Num:
        attempts["retrying"] += 1
        first_failure.set()
        raise ConnectionError("still down")

    wf = Workflow(id="retry-forever", input=Num).then(retrying).commit()
    holder = engine(wf, lease_seconds=1.5)
    other = engine(wf, lease_seconds=1.5)
    handle = await holder.start("retry-forever", {"n": 1})
    await asyncio.wait_for(first_failure.wait(), 5)

    await other.cancel(handle.run_id, by="admin")
    at_cancel = attempts["retrying"]
    await eventually(lambda: handle.run_id not in holder._tasks)  # the heartbeat noticed and stopped it
    await asyncio.sleep(0.05)  # let any queued event writes land

    assert attempts["retrying"] <= at_cancel + 1  # the attempt under way (or due) at the cancel, no more
    events = (await other.details(handle.run_id)).events
    assert events[-1].type == "run.canceled", [e.type for e in events[-5:]]


# -- retries durable across a restart, nested workflows, a cancel seen by one branch ------------------


async def test_a_step_retried_across_a_restart_gets_no_more_attempts_than_its_policy(engine):
    # RetryPolicy: "``attempts`` tries in all". A process stopped (a deploy: SIGTERM, the run handed back) while a
    # failing step waits out its backoff: the next process starts the step over at attempt 1.
    attempts: list[int] = []
    failed_once = asyncio.Event()

    @step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=3, backoff=2.0, jitter=False))
    async def flaky(ctx: StepContext[Num]) -> Num:
        attempts.append(ctx.attempt)
        failed_once.set()
        raise ConnectionError(f"try {ctx.attempt} failed")

    wf = Workflow(id="flaky-wf", input=Num, output=Num).then(flaky).commit()
    first = engine(wf)
    handle = await first.start("flaky-wf", {"n": 1})
    await asyncio.wait_for(failed_once.wait(), 5)
    await first.close()  # graceful: the run is handed back during the 2 s backoff

    second = engine(wf, lease_seconds=2.0)
    await second.recover()
    result = await second.handle(handle.run_id).result(timeout=15)

    assert result.status == "failed"
    assert len(attempts) == 3, f"the step ran {len(attempts)} times, attempts seen by it: {attempts}"
    assert attempts == [1, 2, 3]


async def test_a_backoff_under_way_at_a_restart_is_still_waited_out(engine):
    # The backoff was an asyncio.sleep in the process: a restart during it ran the step again at once.
    times: list[float] = []
    failed_once = asyncio.Event()

    @step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=2, backoff=3.0, jitter=False))
    async def flaky(ctx: StepContext[Num]) -> Num:
        times.append(time.time())
        failed_once.set()
        if len(times) == 1:
            raise ConnectionError("the service is down for a moment")
        return ctx.input

    wf = Workflow(id="flaky-wf", input=Num, output=Num).then(flaky).commit()
    first = engine(wf)
    handle = await first.start("flaky-wf", {"n": 1})
    await asyncio.wait_for(failed_once.wait(), 5)
    await first.close()  # handed back during the 3 s backoff

    second = engine(wf)
    await second.recover()
    result = await second.handle(handle.run_id).result(timeout=15)

    assert result.status == "success"
    assert times[1] - times[0] >= 2.9, f"retried {times[1] - times[0]:.2f} s after the failure, not after its 3 s backoff"


async def test_a_run_waiting_out_a_long_retry_backoff_gives_its_slot_back(engine):
    # A backoff of over a second is waited out as a long .sleep() is: the run waits, woken when the next attempt is
    # due. It used to hold its slot, doing nothing, for the whole backoff (up to max_backoff, 30 s): with every slot
    # held by runs failing in an outage, nothing else started, resumed or woke.
    times: list[float] = []

    @step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=2, backoff=2.0, jitter=False))
    async def flaky(ctx: StepContext[Num]) -> Num:
        times.append(time.time())
        if len(times) == 1:
            raise ConnectionError("the API is down for a moment")
        return ctx.input

    @step(id="quick", input=Num, output=Num)
    async def quick(ctx: StepContext[Num]) -> Num:
        return ctx.input

    e = engine(Workflow(id="flaky-wf", input=Num, output=Num).then(flaky).commit(),
               Workflow(id="quick-wf", input=Num, output=Num).then(quick).commit(), capacity=1)
    flaky_run = await e.start("flaky-wf", {"n": 1})
    await eventually(lambda: times)  # the first attempt failed: its 2 s backoff is under way

    started = time.time()
    result = await (await e.start("quick-wf", {"n": 2})).result(timeout=10)
    took = time.time() - started
    assert result.status == "success" and took < 1.0, f"a one-step run waited {took:.1f} s for the slot of a backoff"

    assert (await flaky_run.result(timeout=10)).output == {"n": 1}
    assert len(times) == 2 and times[1] - times[0] >= 1.9, f"retried {times[1] - times[0]:.2f} s after the failure"
    retrying = [ev for ev in (await e.details(flaky_run.run_id)).events if ev.type == "step.retrying"]
    assert [(ev.data["attempt"], ev.data["delay"]) for ev in retrying] == [(1, 2.0)]


async def test_the_run_workflows_retry_policy_applies_to_the_steps_of_a_nested_workflow(engine):
    # A step's timeout falls back to its workflow's step_timeout, then to the run's top workflow's; its retry policy
    # falls back only to its own (nested) workflow's: Workflow(id="deploy", retry=...) does not retry the steps of
    # a sub-workflow it runs, while Workflow(id="deploy", step_timeout=...) does time them out.
    attempts: list[int] = []

    @step(id="shaky", input=Num, output=Num)
    async def shaky(ctx: StepContext[Num]) -> Num:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("flaky network")
        return ctx.input

    inner = Workflow(id="provision", input=Num, output=Num).then(shaky).commit()
    outer = (Workflow(id="deploy", input=Num, output=Num, retry=RetryPolicy(attempts=3, backoff=0.01, jitter=False))
             .then(inner).commit())
    e = engine(outer)

    result = await (await e.start("deploy", {"n": 1})).result(timeout=5)

    assert result.status == "success", result.error
    assert attempts == [1, 2, 3]


async def test_a_foreach_canceled_from_another_engine_starts_no_item_after_its_holder_saw_the_cancel(engine):
    # The holder learns of the cancel at its next commit (LeaseLost). In a sequence that ends the walk; in a
    # foreach every remaining item still starts (its step code runs, side effects included), each failing only
    # at its own commit, until the lease keeper's next renewal (a third of a 30 s lease by default).
    started: list[str] = []
    first = asyncio.Event()

    @step(id="item", input=Num, output=Num)
    async def item(ctx: StepContext[Num]) -> Num:
        started.append(ctx.path)
        first.set()
        await asyncio.sleep(0.05)
        return ctx.input

    wf = (Workflow(id="each", input=Num)
          .foreach(item, items=lambda x: [{"n": i} for i in range(x.n)], concurrency=1)
          .commit())
    holder = engine(wf, lease_seconds=30.0)
    other = engine(wf, lease_seconds=30.0)
    handle = await holder.start("each", {"n": 12})
    await asyncio.wait_for(first.wait(), 5)

    await other.cancel(handle.run_id, by="admin")
    await asyncio.sleep(1.0)  # ample time for the item in flight to finish and find its commit refused

    assert await status_of(other, handle.run_id) == "canceled"
    # item[0] was in flight at the cancel; at most one more may have been between its start and its commit.
    assert len(started) <= 2, f"items started after the holder's commit was refused: {started}"
