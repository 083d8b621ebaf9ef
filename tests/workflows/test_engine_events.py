"""Watching a run: events commit with the state they describe, a late watcher replays from offset 0,
and a live watcher sees them as they happen."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from tests.helpers import collect, eventually
from workflows import RunNotFound, StepContext, Workflow, WorkflowEvent, step


class Num(BaseModel):
    n: int


@step(id="one", input=Num, output=Num)
async def one(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n + 1)


@step(id="two", input=Num, output=Num)
async def two(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n * 2)


two_steps = Workflow(id="two-steps", input=Num, output=Num).then(one).then(two).commit()

EXPECTED = [
    ("run.started", None),
    ("step.started", "one"),
    ("step.succeeded", "one"),
    ("step.started", "two"),
    ("step.succeeded", "two"),
    ("run.finished", None),
]


async def test_a_late_watcher_replays_every_event_from_offset_zero(engine):
    e = engine(two_steps)
    result = await (await e.start("two-steps", {"n": 1})).result(timeout=5)

    events = await collect(e.watch(result.run_id))

    assert [(ev.type, ev.path) for ev in events] == EXPECTED
    assert all(isinstance(ev, WorkflowEvent) and ev.run_id == result.run_id for ev in events)
    assert [ev.step_id for ev in events] == [None, "one", "one", "two", "two", None]
    assert events[-1].is_final and not any(ev.is_final for ev in events[:-1])
    assert events[2].data["output"] == {"n": 2}
    assert events[-1].data == {"status": "success", "output": {"n": 4}}
    ids = [ev.id for ev in events]
    assert ids == sorted(ids)
    # Watching again gives the same history: events are rows, not messages.
    assert await collect(e.watch(result.run_id)) == events


async def test_watch_after_an_offset_yields_only_later_events(engine):
    e = engine(two_steps)
    result = await (await e.start("two-steps", {"n": 1})).result(timeout=5)
    everything = await collect(e.watch(result.run_id))

    rest = await collect(e.watch(result.run_id, after=everything[2].id))

    assert rest == everything[3:]


async def test_watching_a_finished_run_from_its_last_event_ends_at_once(engine):
    # A watcher that reconnects with the last event id it got (an SSE ``Last-Event-ID``) after the run ended gets
    # nothing more, and its stream ends: the run will never write another event.
    e = engine(two_steps)
    handle = await e.start("two-steps", {"n": 1})
    assert (await handle.result(timeout=5)).status == "success"
    seen = await collect(handle.watch())

    rest = await asyncio.wait_for(collect(handle.watch(after=seen[-1].id)), timeout=3)

    assert seen[-1].type == "run.finished" and rest == []


async def test_a_live_watcher_sees_events_as_they_happen(engine):
    gate = asyncio.Event()

    @step(id="gated", input=Num, output=Num)
    async def gated(ctx: StepContext[Num]) -> Num:
        await gate.wait()
        return ctx.input

    wf = Workflow(id="gated-wf", input=Num).then(one).then(gated).commit()
    e = engine(wf)
    handle = await e.start("gated-wf", {"n": 1})
    seen: list[WorkflowEvent] = []
    saw_gated_start = asyncio.Event()

    async def watch() -> None:
        async for ev in handle.watch():
            seen.append(ev)
            if ev.type == "step.started" and ev.path == "gated":
                saw_gated_start.set()

    watcher = asyncio.create_task(watch())
    # The watcher sees the gated step start while the run is still running: it streams, it does not wait.
    await asyncio.wait_for(saw_gated_start.wait(), 5)
    assert await handle.status() == "running"
    assert [ev.type for ev in seen][-1] == "step.started"

    gate.set()
    await asyncio.wait_for(watcher, 5)

    assert [(ev.type, ev.path) for ev in seen] == [
        ("run.started", None),
        ("step.started", "one"),
        ("step.succeeded", "one"),
        ("step.started", "gated"),
        ("step.succeeded", "gated"),
        ("run.finished", None),
    ]


async def test_many_watchers_see_the_same_stream(engine):
    e = engine(two_steps)
    handle = await e.start("two-steps", {"n": 1})

    streams = await asyncio.gather(*(collect(e.watch(handle.run_id)) for _ in range(5)))

    assert all([(ev.type, ev.path) for ev in s] == EXPECTED for s in streams)
    assert len({tuple(ev.id for ev in s) for s in streams}) == 1


async def test_watching_a_suspended_run_continues_through_resume_until_it_finishes(engine):
    class Yes(BaseModel):
        yes: bool

    @step(id="ask", input=Num, output=Yes, resume=Yes)
    async def ask(ctx: StepContext[Num]) -> Yes:
        return await ctx.suspend({"question": "go?"})

    wf = Workflow(id="ask-wf", input=Num).then(ask).commit()
    e = engine(wf)
    handle = await e.start("ask-wf", {"n": 1})
    await handle.result(timeout=5)
    seen: list[WorkflowEvent] = []

    async def watch() -> None:
        async for ev in e.watch(handle.run_id):
            seen.append(ev)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    assert not watcher.done()  # a suspended run is not finished: the watcher keeps waiting

    await e.resume(handle.run_id, data={"yes": True}, by="U1")
    await asyncio.wait_for(watcher, 5)

    types = [ev.type for ev in seen]
    assert types == [
        "run.started", "step.started", "step.suspended", "run.suspended",
        "run.resumed", "step.started", "step.succeeded", "run.finished",
    ]
    assert seen[2].data["payload"] == {"question": "go?"}
    assert seen[4].data["by"] == "U1"


async def test_watch_ends_at_cancel_and_follow_keeps_the_stream_open(engine):
    gate = asyncio.Event()

    @step(id="stuck", input=Num, output=Num)
    async def stuck(ctx: StepContext[Num]) -> Num:
        await gate.wait()
        return ctx.input

    e = engine(Workflow(id="stuck-wf", input=Num).then(stuck).commit())
    handle = await e.start("stuck-wf", {"n": 1})
    await e.cancel(handle.run_id, by="U9")

    events = await collect(e.watch(handle.run_id))
    assert events[-1].type == "run.canceled" and events[-1].data == {"by": "U9"}

    followed: list[WorkflowEvent] = []

    async def follow() -> None:
        async for ev in e.watch(handle.run_id, follow=True):
            followed.append(ev)

    task = asyncio.create_task(follow())
    await eventually(lambda: len(followed) == len(events))
    await asyncio.sleep(0.05)
    assert not task.done() and followed == events  # past the final event, and still following
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_failed_runs_end_their_stream_with_the_failure(engine):
    @step(id="boom", input=Num, output=Num)
    async def boom(ctx: StepContext[Num]) -> Num:
        raise KeyError("missing")

    e = engine(Workflow(id="boom-wf", input=Num).then(boom).commit())
    handle = await e.start("boom-wf", {"n": 1})

    events = await collect(e.watch(handle.run_id))

    assert [ev.type for ev in events] == ["run.started", "step.started", "step.failed", "run.finished"]
    assert events[2].data["error"] == "KeyError: 'missing'"
    assert events[-1].data["status"] == "failed" and events[-1].data["error"]["path"] == "boom"


async def test_events_of_concurrent_runs_do_not_mix(engine):
    e = engine(two_steps)
    handles = await asyncio.gather(*(e.start("two-steps", {"n": i}) for i in range(10)))

    streams = await asyncio.gather(*(collect(e.watch(h.run_id)) for h in handles))

    for h, events in zip(handles, streams, strict=True):
        assert {ev.run_id for ev in events} == {h.run_id}
        assert [(ev.type, ev.path) for ev in events] == EXPECTED


async def test_watching_an_unknown_run_raises(engine):
    e = engine(two_steps)

    with pytest.raises(RunNotFound):
        await collect(e.watch("nope"))
