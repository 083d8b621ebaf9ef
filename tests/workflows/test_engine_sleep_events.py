"""Durable timers and awaited events: the wake time and the wait are rows, so both survive a restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy
from pydantic import BaseModel
from sqlalchemy.engine import Engine as SAEngine

from tests.helpers import eventually, status_of
from workflows import InvalidInput, NotWaitingForEvent, StepContext, UsageError, Workflow, step


class Num(BaseModel):
    n: int


class Approval(BaseModel):
    approved: bool
    by: str


def counted(step_id: str, calls: Counter, ran_at: dict[str, float] | None = None):
    @step(id=step_id, input=Num, output=Num)
    async def body(ctx: StepContext[Num]) -> Num:
        calls[step_id] += 1
        if ran_at is not None:
            ran_at[step_id] = time.time()
        return Num(n=ctx.input.n + 1)

    return body


# -- sleep --------------------------------------------------------------------------------------------


async def test_a_short_sleep_passes_its_input_through(engine):
    calls = Counter()
    ran_at: dict[str, float] = {}
    wf = (
        Workflow(id="nap", input=Num, output=Num)
        .then(counted("before", calls, ran_at)).sleep(0.2).then(counted("after", calls, ran_at))
        .commit()
    )
    e = engine(wf)

    result = await (await e.start("nap", {"n": 1})).result(timeout=5)

    assert result.output == {"n": 3}
    assert ran_at["after"] - ran_at["before"] >= 0.2
    [sleep] = [s for s in (await e.details(result.run_id)).steps if s.kind == "sleep"]
    assert sleep.path == "sleep-1"
    assert sleep.output["until"] == pytest.approx(ran_at["before"] + 0.2, abs=0.1)


async def test_a_long_sleep_survives_a_restart_and_wakes_on_time(engine):
    calls = Counter()
    ran_at: dict[str, float] = {}
    wf = (
        Workflow(id="overnight", input=Num, output=Num)
        .then(counted("before", calls, ran_at)).sleep(1.2, id="night").then(counted("after", calls, ran_at))
        .commit()
    )
    first = engine(wf)
    handle = await first.start("overnight", {"n": 1})
    await eventually(lambda: _status_is(first, handle.run_id, "waiting"))
    [waiting] = [ev for ev in (await first.details(handle.run_id)).events if ev.type == "run.waiting"]
    until = waiting.data["until"]
    assert until == pytest.approx(ran_at["before"] + 1.2, abs=0.2)
    await first.close()  # the process goes away while the run sleeps

    second = engine(wf)
    await second.open()
    result = await second.handle(handle.run_id).result(timeout=10)

    assert result.status == "success" and result.output == {"n": 3}
    assert until <= ran_at["after"] <= until + 0.5
    assert calls == Counter({"before": 1, "after": 1})


async def _status_is(e, run_id, status):
    return await status_of(e, run_id) == status


async def test_a_sleep_that_ends_while_every_slot_is_taken_goes_on_once_one_frees_without_spinning(engine):
    # capacity=1: a run's 1.2 s sleep ends while another run's step holds the only slot until ~3 s. The dispatcher
    # waits for the slot (the run that gives it back wakes it), or a poll interval, rather than read the timers
    # again and again with a zero timeout (about 900 reads in 2.5 s, a core of CPU), and the sleeper goes on at once.
    ran_at: dict[str, float] = {}

    @step(id="busy", input=Num, output=Num)
    async def busy(ctx: StepContext[Num]) -> Num:
        await asyncio.sleep(2.5)
        ran_at["busy"] = time.time()
        return ctx.input

    long_step = Workflow(id="long-step", input=Num, output=Num).then(busy).commit()
    sleeper = Workflow(id="sleeper", input=Num, output=Num).sleep(1.2).then(counted("after", Counter(), ran_at)).commit()
    e = engine(long_step, sleeper, capacity=1, poll_interval=1.0)
    sleeping = await e.start("sleeper", {"n": 1})
    await eventually(lambda: _status_is(e, sleeping.run_id, "waiting"))
    timer_reads = 0  # the dispatcher's reads of when to wake next (RunStore.next_wakeup)

    def count(_conn, _cursor, statement, *_args) -> None:
        nonlocal timer_reads
        timer_reads += "min(runs.lease_expires_at)" in statement.lower()

    sqlalchemy.event.listen(SAEngine, "before_cursor_execute", count)
    try:
        working = await e.start("long-step", {"n": 2})
        await asyncio.sleep(2.2)  # the sleep ends at ~1.2 s; the slot stays taken until ~2.5 s
        timer_reads_while_full = timer_reads
    finally:
        sqlalchemy.event.remove(SAEngine, "before_cursor_execute", count)

    assert (await working.result(timeout=10)).status == "success"
    assert (await sleeping.result(timeout=10)).output == {"n": 2}
    # About once a poll interval (a second here), plus when a timer is due and a slot is free.
    assert timer_reads_while_full < 10, f"the timers were read {timer_reads_while_full} times in 2.2 s"
    assert ran_at["after"] - ran_at["busy"] < 0.5, "the sleeper waited for the poll interval, not for the slot"


async def test_sleep_until_a_datetime_or_a_function_of_the_input(engine):
    calls = Counter()
    ran_at: dict[str, float] = {}
    soon = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.3)  # naive: taken as UTC
    fixed = Workflow(id="until-fixed", input=Num).sleep_until(soon).then(counted("a", calls, ran_at)).commit()
    computed = (
        Workflow(id="until-computed", input=Num)
        .sleep_until(lambda x: datetime.now(UTC) + timedelta(seconds=x.n / 10))
        .then(counted("b", calls, ran_at))
        .commit()
    )
    e = engine(fixed, computed)

    started = time.time()
    a, b = await asyncio.gather(
        (await e.start("until-fixed", {"n": 0})).result(timeout=5),
        (await e.start("until-computed", {"n": 2})).result(timeout=5),
    )

    assert a.output == {"n": 1} and b.output == {"n": 3}
    assert ran_at["a"] >= soon.replace(tzinfo=UTC).timestamp()
    assert ran_at["b"] - started >= 0.2


async def test_sleep_until_a_past_time_does_not_wait(engine):
    calls = Counter()
    past = datetime(2000, 1, 1, tzinfo=UTC)
    wf = Workflow(id="past", input=Num, output=Num).sleep_until(past).then(counted("go", calls)).commit()
    e = engine(wf)

    started = time.monotonic()
    result = await (await e.start("past", {"n": 1})).result(timeout=5)

    assert result.output == {"n": 2}
    assert time.monotonic() - started < 1.0


async def test_sleep_until_a_function_that_returns_no_datetime_fails_the_run(engine):
    wf = Workflow(id="bad-until", input=Num).sleep_until(lambda x: "tomorrow", id="wait-a-bit").commit()  # type: ignore[arg-type,return-value]
    e = engine(wf)

    result = await (await e.start("bad-until", {"n": 1})).result(timeout=5)

    assert result.status == "failed"
    assert "sleep_until 'wait-a-bit'" in result.error and "datetime" in result.error


# -- wait_for_event ----------------------------------------------------------------------------------


def approval_flow(calls: Counter, gate: asyncio.Event | None = None):
    @step(id="prepare", input=Num, output=Num)
    async def prepare(ctx: StepContext[Num]) -> Num:
        calls["prepare"] += 1
        if gate is not None:
            await gate.wait()
        return ctx.input

    @step(id="ship", input=Approval, output=Approval)
    async def ship(ctx: StepContext[Approval]) -> Approval:
        calls["ship"] += 1
        return ctx.input

    return Workflow(id="ship-it", input=Num, output=Approval).then(prepare).wait_for_event("approved", Approval).then(ship).commit()


async def test_a_run_waits_for_an_event_and_continues_with_its_data(engine):
    calls = Counter()
    e = engine(approval_flow(calls))
    handle = await e.start("ship-it", {"n": 1})

    waiting = await handle.result(timeout=5)
    assert waiting.status == "waiting"
    assert [(s.path, s.kind, s.event) for s in waiting.suspended] == [("wait-approved", "event", "approved")]

    outcome = await e.send_event(handle.run_id, "approved", {"approved": True, "by": "U1"})
    assert outcome == "delivered"
    result = await handle.result(timeout=5)

    assert result.status == "success"
    assert result.output == {"approved": True, "by": "U1"}
    assert calls == Counter({"prepare": 1, "ship": 1})
    details = await e.details(handle.run_id)
    [received] = [ev for ev in details.events if ev.type == "event.received"]
    assert received.path == "wait-approved" and received.data["event"] == "approved"
    assert {s.path: s.output for s in details.steps}["wait-approved"] == {"approved": True, "by": "U1"}


async def test_invalid_event_data_names_the_field_and_the_run_keeps_waiting(engine):
    calls = Counter()
    e = engine(approval_flow(calls))
    handle = await e.start("ship-it", {"n": 1})
    await handle.result(timeout=5)

    with pytest.raises(InvalidInput) as err:
        await e.send_event(handle.run_id, "approved", {"approved": "perhaps"})

    assert "event 'approved'" in str(err.value) and "'approved'" in str(err.value) and "'by'" in str(err.value)
    assert await status_of(e, handle.run_id) == "waiting"
    assert calls["ship"] == 0


async def test_an_event_sent_before_the_run_waits_is_buffered_and_consumed_once(engine):
    calls = Counter()
    gate = asyncio.Event()
    e = engine(approval_flow(calls, gate))
    handle = await e.start("ship-it", {"n": 1})
    await eventually(lambda: calls["prepare"] == 1)

    assert await e.send_event(handle.run_id, "approved", {"approved": True, "by": "early"}) == "buffered"
    gate.set()
    result = await handle.result(timeout=5)

    assert result.status == "success" and result.output == {"approved": True, "by": "early"}
    assert calls == Counter({"prepare": 1, "ship": 1})


async def test_an_event_a_stopped_process_took_for_the_wait_is_still_the_waits(engine):
    # The run is resumed with an event buffered for its next wait; the process that continues it takes the event
    # for the wait (that commit is its own) and stops before the wait's result is committed (a shutdown, a kill, a
    # lost lease). Whoever walks the run again finds the event taken for this very wait, and goes on with it.
    @step(id="review")
    async def review(ctx: StepContext[None]) -> None:
        await ctx.suspend({"why": "a look first"})

    wf = Workflow(id="review-then-ship", output=Approval).then(review).wait_for_event("approved", Approval).commit()
    e = engine(wf)
    handle = await e.start("review-then-ship")
    assert (await handle.result(timeout=5)).status == "suspended"
    assert await e.send_event(handle.run_id, "approved", {"approved": True, "by": "early"}) == "buffered"
    _, progress = await e.store.run_and_progress(handle.run_id)
    [signal] = progress.signals
    assert await e.store.consume_signal(handle.run_id, signal.id, "wait-approved")  # what the stopped process did

    await e.resume(handle.run_id)
    result = await e.wait_for(handle.run_id, timeout=5)

    assert result.status == "success" and result.output == {"approved": True, "by": "early"}


async def test_a_wait_for_an_event_survives_a_restart(engine):
    calls = Counter()
    first = engine(approval_flow(calls))
    handle = await first.start("ship-it", {"n": 1})
    assert (await handle.result(timeout=5)).status == "waiting"
    await first.close()

    second = engine(approval_flow(calls))
    assert await second.send_event(handle.run_id, "approved", {"approved": False, "by": "U2"}) == "delivered"
    result = await second.handle(handle.run_id).result(timeout=5)

    assert result.output == {"approved": False, "by": "U2"}
    assert calls == Counter({"prepare": 1, "ship": 1})


async def test_events_nobody_waits_for_are_refused(engine):
    calls = Counter()
    e = engine(approval_flow(calls))
    handle = await e.start("ship-it", {"n": 1})
    await handle.result(timeout=5)

    with pytest.raises(UsageError, match="never waits for event 'rejected'"):
        await e.send_event(handle.run_id, "rejected", {})

    await e.send_event(handle.run_id, "approved", {"approved": True, "by": "U1"})
    await eventually(lambda: _status_is(e, handle.run_id, "success"))
    with pytest.raises(NotWaitingForEvent, match="success"):
        await e.send_event(handle.run_id, "approved", {"approved": True, "by": "U1"})


async def test_two_waits_in_a_row_take_one_event_each(engine):
    class Note(BaseModel):
        text: str

    wf = (
        Workflow(id="two-waits", input=Num)
        .wait_for_event("note", Note, id="first")
        .wait_for_event("note", Note, id="second")
        .commit()
    )
    e = engine(wf)
    handle = await e.start("two-waits", {"n": 1})
    assert [s.path for s in (await handle.result(timeout=5)).suspended] == ["first"]

    await e.send_event(handle.run_id, "note", {"text": "one"})
    await eventually(lambda: _waits_at(e, handle.run_id, "second"))
    await e.send_event(handle.run_id, "note", {"text": "two"})
    result = await handle.result(timeout=5)

    assert result.status == "success" and result.output == {"text": "two"}
    outputs = {s.path: s.output for s in (await e.details(handle.run_id)).steps}
    assert outputs == {"first": {"text": "one"}, "second": {"text": "two"}}


async def _waits_at(e, run_id, path):
    result = await e.handle(run_id).result(timeout=5)
    return [s.path for s in result.suspended] == [path]


async def test_parallel_sleep_and_event_both_have_to_finish(engine):
    class Go(BaseModel):
        go: bool

    timer = Workflow(id="timer", input=Num, output=Num).sleep(0.3).commit()
    listener = Workflow(id="listener", input=Num, output=Go).wait_for_event("go", Go).commit()
    wf = Workflow(id="both", input=Num).parallel([timer, listener]).commit()
    e = engine(wf)
    handle = await e.start("both", {"n": 5})
    waiting = await handle.result(timeout=5)
    assert [s.path for s in waiting.suspended] == ["listener/wait-go"]

    await e.send_event(handle.run_id, "go", {"go": True})
    result = await handle.result(timeout=5)

    assert result.status == "success"
    assert result.output == {"timer": {"n": 5}, "listener": {"go": True}}


class Ping(BaseModel):
    n: int


async def test_two_events_sent_at_once_from_two_processes_are_both_received(engine):
    # A run waits for "ping" twice; two replicas deliver one each at the same moment (two webhooks behind a load
    # balancer). One resolves the open wait, the other is buffered for the next: none is lost. (On PostgreSQL the
    # second's update used to find the wait resolved by the first, change nothing, and still answer "delivered".)
    two_pings = Workflow(id="two-pings").wait_for_event("ping", Ping, id="w1").wait_for_event("ping", Ping, id="w2")
    runner = engine(two_pings.commit())
    a, b = engine(two_pings.commit(), execute=False), engine(two_pings.commit(), execute=False)
    for n in range(10):
        run_id = (await runner.start("two-pings", {})).run_id
        assert (await runner.handle(run_id).result(timeout=5)).status == "waiting"
        outcomes = await asyncio.gather(a.send_event(run_id, "ping", {"n": n}), b.send_event(run_id, "ping", {"n": -n}))
        assert sorted(outcomes) in (["buffered", "delivered"], ["delivered", "delivered"])
        assert (await runner.handle(run_id).result(timeout=5)).status == "success", (n, outcomes)


class Sizing(BaseModel):
    size: int


class Signoff(BaseModel):
    who: str


async def test_an_event_is_validated_against_the_wait_the_run_is_at(engine):
    # Two waits for the same event name with their own schemas (one each: "two waits in a row take one event each").
    # send_event validates the data against the first wait node with that name anywhere in the tree, so the data
    # the second wait expects is refused while the run waits there.
    wf = (Workflow(id="two-waits", input=Num)
          .wait_for_event("reply", Sizing, id="sizing")
          .wait_for_event("reply", Signoff, id="signoff")
          .commit())
    e = engine(wf)
    handle = await e.start("two-waits", {"n": 1})
    assert (await handle.result(timeout=5)).status == "waiting"
    await e.send_event(handle.run_id, "reply", {"size": 3})
    await eventually(lambda: _waits_at(e, handle.run_id, "signoff"))

    await e.send_event(handle.run_id, "reply", {"who": "U1"})
    result = await e.handle(handle.run_id).result(timeout=5)

    assert result.status == "success"
    assert result.output == {"who": "U1"}


async def _waits_at(e, run_id, path):
    run = await e.get_run(run_id)
    return run.status == "waiting" and any(s.path == path and s.status == "open" for s in await e.suspensions(run_id))
