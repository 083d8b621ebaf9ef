"""A run folded into what the inspector shows: attempts with their errors and tracebacks, retries'
backoff, suspensions until resumed, inputs and outputs, and node statuses, from real runs of the engine."""

from __future__ import annotations

from pydantic import BaseModel

from workflows import RetryPolicy, StepContext, Workflow, step
from workflows.examples.approval import approval
from workflows.run_view import fold_run, load_run_view


class Num(BaseModel):
    n: int


async def test_retries_show_each_attempt_with_its_traceback_and_backoff(engine) -> None:
    @step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=3, backoff=0.01, jitter=False))
    async def flaky(ctx: StepContext[Num]) -> Num:
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt} failed")
        return Num(n=ctx.input.n + 1)

    e = engine(Workflow(id="flaky-view", input=Num, output=Num).then(flaky).commit())
    result = await (await e.start("flaky-view", {"n": 1})).result(timeout=5)
    view = await load_run_view(e, result.run_id)
    [s] = view.steps
    assert s.status == "success" and s.input == {"n": 1} and s.output == {"n": 2}
    assert [(a.number, a.outcome) for a in s.attempts] == [(1, "retried"), (2, "retried"), (3, "succeeded")]
    assert s.attempts[0].error == "ConnectionError: try 1 failed"
    assert "raise ConnectionError" in (s.attempts[0].traceback or "")
    assert [sp.kind for sp in s.spans] == ["attempt", "backoff", "attempt", "backoff", "attempt"]
    assert all(sp.end is not None and sp.end >= sp.start for sp in s.spans)
    assert view.node_status["flaky"].status == "success"


async def test_a_failed_step_keeps_its_error_and_traceback(engine) -> None:
    @step(id="boom", input=Num, output=Num)
    async def boom(ctx: StepContext[Num]) -> Num:
        raise ValueError("the disk is full")

    e = engine(Workflow(id="boom-view", input=Num).then(boom).commit())
    result = await (await e.start("boom-view", {"n": 1})).result(timeout=5)
    view = await load_run_view(e, result.run_id)
    [s] = view.steps
    assert s.status == "failed" and s.error == "ValueError: the disk is full"
    assert 'raise ValueError("the disk is full")' in (s.traceback or "")
    assert view.node_status["boom"].status == "failed"


async def test_a_suspension_lasts_until_it_is_resumed(engine) -> None:
    e = engine(approval)
    handle = await e.start("approval", {"request": "ship"}, started_by="U1")
    await handle.result(timeout=5)
    waiting = await load_run_view(e, handle.run_id)
    [s] = waiting.steps
    assert s.status == "suspended" and [o.path for o in waiting.open_suspensions] == ["approve"]
    assert s.spans[-1].kind == "suspended" and s.spans[-1].end is None
    assert waiting.node_status["approve"].status == "suspended"

    await e.resume(handle.run_id, data={"approved": True}, by="U1")
    assert (await handle.result(timeout=5)).status == "success"
    done = await load_run_view(e, handle.run_id)
    [s] = done.steps
    suspended = next(sp for sp in s.spans if sp.kind == "suspended")
    assert s.status == "success" and suspended.end is not None and "resumed by U1" in suspended.label
    assert s.suspension is not None and s.suspension.resolved_by == "U1" and not done.open_suspensions


async def test_loop_iterations_share_their_node(engine) -> None:
    @step(id="inc", input=Num, output=Num)
    async def inc(ctx: StepContext[Num]) -> Num:
        return Num(n=ctx.input.n + 1)

    e = engine(Workflow(id="loop-view", input=Num, output=Num).dountil(inc, lambda v: v.n >= 3).commit())
    result = await (await e.start("loop-view", {"n": 0})).result(timeout=5)
    view = await load_run_view(e, result.run_id)
    assert [s.path for s in view.steps] == ["inc#0", "inc#1", "inc#2"]
    assert view.node_status["inc"].instances == 3 and view.node_status["inc"].status == "success"
    # the fold is pure: folding the same records again gives the same view
    details = await e.details(result.run_id)
    again = fold_run(details.run, details.events, now=view.steps[0].started_at)
    assert [s.path for s in again.steps] == [s.path for s in view.steps]


async def test_the_list_a_foreach_picked_is_not_shown_as_a_step(engine) -> None:
    @step(id="ping")
    async def ping(ctx: StepContext[None]) -> dict:
        return {"host": ctx.input}

    e = engine(Workflow(id="ping-all").foreach(ping, items=lambda _: ["a", "b"]).commit())
    result = await (await e.start("ping-all")).result(timeout=5)
    view = await load_run_view(e, result.run_id)
    assert sorted(s.path for s in view.steps) == ["ping[0]", "ping[1]"]
