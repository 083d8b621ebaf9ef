"""Suspend and resume: a step waits for a person; resuming it is a compare-and-set that exactly one caller wins."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from pydantic import BaseModel

from tests.helpers import eventually, status_of
from workflows import (
    AlreadyResumed,
    InvalidInput,
    NotSuspended,
    RunHandle,
    StepContext,
    Workflow,
    step,
)


class Num(BaseModel):
    n: int


class Request(BaseModel):
    title: str


class Decision(BaseModel):
    approved: bool
    by: str | None = None


class Verdict(BaseModel):
    n: int
    approved: bool
    by: str | None = None


def approval_step(step_id: str, calls: Counter, **options):
    """A step that asks for a Decision; ``calls`` counts how often its body ran."""

    @step(id=step_id, input=Num, output=Verdict, suspend=Request, resume=Decision, **options)
    async def approve(ctx: StepContext[Num]) -> Verdict:
        calls[step_id] += 1
        decision: Decision = await ctx.suspend(Request(title=f"{step_id}: approve {ctx.input.n}?"))
        assert isinstance(decision, Decision)
        assert ctx.is_resumed and ctx.resume_data == decision
        return Verdict(n=ctx.input.n, approved=decision.approved, by=decision.by)

    return approve


def counted(step_id: str, calls: Counter):
    @step(id=step_id, input=Num, output=Num)
    async def body(ctx: StepContext[Num]) -> Num:
        calls[step_id] += 1
        return Num(n=ctx.input.n + 1)

    return body


async def test_a_suspended_run_reports_what_it_waits_for_and_resumes_with_the_data(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(counted("prepare", calls)).then(approval_step("approve", calls)).commit()
    e = engine(wf)

    handle = await e.start("approval", {"n": 1})
    result = await handle.result(timeout=5)

    assert result.status == "suspended"
    assert [(s.path, s.step_id, s.kind, s.payload) for s in result.suspended] == [
        ("approve", "approve", "suspend", {"title": "approve: approve 2?"})
    ]
    assert result.output is None

    resumed = await e.resume(handle.run_id, step="approve", data={"approved": True, "by": "U1"}, by="U1")
    assert isinstance(resumed, RunHandle) and resumed.run_id == handle.run_id
    final = await resumed.result(timeout=5)

    assert final.status == "success"
    assert final.output == {"n": 2, "approved": True, "by": "U1"}
    assert final.suspended == []
    # The step before the suspension ran once; the suspending step runs again from the top on resume.
    assert calls == Counter({"prepare": 1, "approve": 2})


async def test_who_when_and_what_of_a_resume_are_recorded(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).commit()
    e = engine(wf)
    run_id = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id

    before = time.time()
    await (await e.resume(run_id, data={"approved": False}, by="U42")).result(timeout=5)
    after = time.time()

    details = await e.details(run_id)
    [susp] = details.suspensions
    assert susp.status == "resolved"
    assert susp.resolved_by == "U42"
    assert before <= susp.resolved_at <= after
    # The resume model has a `by` field the data left out: it is filled with who resumed.
    assert susp.resume_data == {"approved": False, "by": "U42"}
    assert susp.payload == {"title": "approve: approve 1?"}
    [resumed_event] = [ev for ev in details.events if ev.type == "run.resumed"]
    assert resumed_event.path == "approve"
    assert resumed_event.data == {"step_id": "approve", "by": "U42", "data": {"approved": False, "by": "U42"}}
    types = [ev.type for ev in details.events]
    assert types.index("step.suspended") < types.index("run.suspended") < types.index("run.resumed")
    assert types[-1] == "run.finished"


async def test_invalid_resume_data_names_the_field_and_leaves_the_run_suspended(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).commit()
    e = engine(wf)
    run_id = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id

    with pytest.raises(InvalidInput) as err:
        await e.resume(run_id, data={"approved": "maybe"}, by="U1")

    assert "resume data for step 'approve'" in str(err.value) and "'approved'" in str(err.value)
    assert await status_of(e, run_id) == "suspended"
    [susp] = (await e.details(run_id)).suspensions
    assert susp.status == "open" and susp.resolved_by is None
    assert calls["approve"] == 1

    # A corrected resume still works.
    final = await (await e.resume(run_id, data={"approved": True}, by="U1")).result(timeout=5)
    assert final.status == "success" and final.output["approved"] is True


class Note(BaseModel):
    approved: bool
    score: float | None = None
    ticket: int | None = None


@pytest.mark.parametrize(("data", "problem"), [
    ({"approved": True, "score": float("nan")}, "data.score is nan"),
    ({"approved": True, "ticket": 2**64}, "data.ticket is an integer beyond 64 bits"),
], ids=["nan", "integer-beyond-64-bits"])
async def test_resume_data_the_database_could_not_give_back_is_refused_and_consumes_nothing(engine, data, problem):
    # NaN would be read back as null, an integer beyond 64 bits as a float: the step would get other data than sent.
    @step(id="approve", resume=Note)
    async def approve(ctx: StepContext[None]) -> Note:
        return await ctx.suspend({"why": "a look first"})

    e = engine(Workflow(id="noted").then(approve).commit())
    run_id = (await (await e.start("noted")).result(timeout=5)).run_id

    with pytest.raises(InvalidInput) as err:
        await e.resume(run_id, data=data, by="U1")

    assert "resume data for step 'approve'" in str(err.value) and problem in str(err.value)
    assert await status_of(e, run_id) == "suspended"
    assert [s.status for s in (await e.details(run_id)).suspensions] == ["open"]


@pytest.mark.parametrize("by", ["U1\x00", "a\nb", "\x1f", "tab\there"])
async def test_a_resume_by_a_name_with_a_control_character_is_refused_and_consumes_nothing(engine, by):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).commit()
    e = engine(wf)
    run_id = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id

    with pytest.raises(InvalidInput, match="contains a control character"):
        await e.resume(run_id, data={"approved": True}, by=by)
    with pytest.raises(InvalidInput, match="thread_id"):
        await e.start("approval", {"n": 2}, thread_id=f"T{by}")

    assert await status_of(e, run_id) == "suspended"
    final = await (await e.resume(run_id, data={"approved": True}, by="U1 \u00e9\x7f")).result(timeout=5)
    assert final.status == "success" and final.output["by"] == "U1 \u00e9\x7f"  # (DEL and beyond are plain text)


async def test_resuming_twice_names_who_resumed_first(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).commit()
    e = engine(wf)
    run_id = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id
    await (await e.resume(run_id, data={"approved": True}, by="alice")).result(timeout=5)

    with pytest.raises(NotSuspended, match="success"):
        await e.resume(run_id, data={"approved": False}, by="bob")
    assert (await e.get_run(run_id)).output["approved"] is True


async def test_resume_of_a_resolved_step_of_a_still_live_run_raises_already_resumed(engine):
    calls = Counter()
    wf = (
        Workflow(id="two-approvals", input=Num)
        .parallel([approval_step("legal", calls), approval_step("finance", calls)])
        .commit()
    )
    e = engine(wf)
    run_id = (await (await e.start("two-approvals", {"n": 1})).result(timeout=5)).run_id
    await (await e.resume(run_id, step="legal", data={"approved": True}, by="alice")).result(timeout=5)

    with pytest.raises(AlreadyResumed) as err:
        await e.resume(run_id, step="legal", data={"approved": False}, by="bob")

    assert err.value.by == "alice" and err.value.path == "legal"
    assert "already resumed by alice" in str(err.value)


async def test_a_run_that_is_not_suspended_cannot_be_resumed(engine):
    started = asyncio.Event()
    release = asyncio.Event()

    @step(id="busy", input=Num, output=Num)
    async def busy(ctx: StepContext[Num]) -> Num:
        started.set()
        await release.wait()
        return ctx.input

    wf = Workflow(id="busy-wf", input=Num).then(busy).commit()
    e = engine(wf)
    handle = await e.start("busy-wf", {"n": 1})
    await asyncio.wait_for(started.wait(), 5)

    with pytest.raises(NotSuspended, match="nothing to resume"):
        await e.resume(handle.run_id, data={})

    release.set()
    assert (await handle.result(timeout=5)).status == "success"
    with pytest.raises(NotSuspended, match="success"):
        await e.resume(handle.run_id, data={})


async def test_suspensions_inside_parallel_are_resumed_one_at_a_time(engine):
    calls = Counter()
    wf = (
        Workflow(id="two-approvals", input=Num)
        .then(counted("prepare", calls))
        .parallel([approval_step("legal", calls), approval_step("finance", calls)])
        .commit()
    )
    e = engine(wf)
    run_id = (await e.start("two-approvals", {"n": 1})).run_id

    first = await e.handle(run_id).result(timeout=5)
    assert first.status == "suspended"
    assert sorted(s.path for s in first.suspended) == ["finance", "legal"]

    with pytest.raises(NotSuspended, match="several steps"):
        await e.resume(run_id, data={"approved": True})

    second = await (await e.resume(run_id, step="finance", data={"approved": False, "by": "cfo"}, by="cfo")).result(timeout=5)
    assert second.status == "suspended"
    assert [s.path for s in second.suspended] == ["legal"]

    final = await (await e.resume(run_id, step="legal", data={"approved": True, "by": "gc"}, by="gc")).result(timeout=5)
    assert final.status == "success"
    assert final.output == {
        "legal": {"n": 2, "approved": True, "by": "gc"},
        "finance": {"n": 2, "approved": False, "by": "cfo"},
    }
    # finance's recorded result was reused when legal was resumed; prepare never ran again.
    assert calls == Counter({"prepare": 1, "legal": 2, "finance": 2})


async def test_a_resume_that_arrives_while_other_branches_still_run_is_not_lost(engine):
    calls = Counter()
    release = asyncio.Event()

    @step(id="slow", input=Num, output=Num)
    async def slow(ctx: StepContext[Num]) -> Num:
        await release.wait()
        return ctx.input

    wf = Workflow(id="resume-early", input=Num).parallel([approval_step("approve", calls), slow]).commit()
    e = engine(wf)
    handle = await e.start("resume-early", {"n": 7})
    await eventually(lambda: calls["approve"] == 1)
    await eventually(lambda: _has_open_suspension(e, handle.run_id))

    await e.resume(handle.run_id, data={"approved": True}, by="U1")
    assert await status_of(e, handle.run_id) == "running"
    release.set()

    final = await handle.result(timeout=5)
    assert final.status == "success"
    assert final.output == {"approve": {"n": 7, "approved": True, "by": "U1"}, "slow": {"n": 7}}


async def _has_open_suspension(e, run_id):
    return any(s.status == "open" for s in (await e.details(run_id)).suspensions)


async def test_foreach_items_suspend_independently_each_under_its_own_path(engine):
    calls = Counter()
    wf = (
        Workflow(id="approve-each", input=Num)
        .foreach(approval_step("approve", calls), items=lambda x: [{"n": i} for i in range(x.n)])
        .commit()
    )
    e = engine(wf)
    run_id = (await e.start("approve-each", {"n": 3})).run_id

    first = await e.handle(run_id).result(timeout=5)
    assert sorted(s.path for s in first.suspended) == ["approve[0]", "approve[1]", "approve[2]"]
    assert {s.path: s.payload["title"] for s in first.suspended}["approve[2]"] == "approve: approve 2?"

    with pytest.raises(NotSuspended, match="several paths"):
        await e.resume(run_id, step="approve", data={"approved": True})

    r = await (await e.resume(run_id, step="approve[1]", data={"approved": True}, by="a")).result(timeout=5)
    assert sorted(s.path for s in r.suspended) == ["approve[0]", "approve[2]"]
    r = await (await e.resume(run_id, step="approve[2]", data={"approved": False}, by="b")).result(timeout=5)
    assert [s.path for s in r.suspended] == ["approve[0]"]
    r = await (await e.resume(run_id, step="approve", data={"approved": True}, by="c")).result(timeout=5)

    assert r.status == "success"
    assert [o["approved"] for o in r.output] == [True, True, False]
    assert {s.path: s.resolved_by for s in (await e.details(run_id)).suspensions} == {
        "approve[0]": "c", "approve[1]": "a", "approve[2]": "b",
    }


async def test_a_suspension_inside_a_nested_workflow_has_the_nested_path(engine):
    calls = Counter()
    inner = Workflow(id="review", input=Num, output=Verdict).then(approval_step("approve", calls)).commit()
    outer = Workflow(id="outer", input=Num).then(counted("prepare", calls)).then(inner).commit()
    e = engine(outer)
    run_id = (await e.start("outer", {"n": 1})).run_id

    first = await e.handle(run_id).result(timeout=5)
    assert [(s.path, s.step_id) for s in first.suspended] == [("review/approve", "approve")]

    final = await (await e.resume(run_id, step="review/approve", data={"approved": True}, by="U1")).result(timeout=5)

    assert final.status == "success"
    assert final.output == {"n": 2, "approved": True, "by": "U1"}
    assert calls == Counter({"prepare": 1, "approve": 2})


async def test_fifty_concurrent_resumes_one_wins_the_rest_learn_who(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).commit()
    # Two engines on one database: the compare-and-set must hold across connections, not just in-process.
    e1, e2 = engine(wf), engine(wf)
    run_id = (await (await e1.start("approval", {"n": 1})).result(timeout=5)).run_id
    await e2.open()

    outcomes = await asyncio.gather(
        *((e1 if i % 2 else e2).resume(run_id, data={"approved": True, "by": f"U{i}"}, by=f"U{i}") for i in range(50)),
        return_exceptions=True,
    )

    winners = [i for i, o in enumerate(outcomes) if isinstance(o, RunHandle)]
    losers = [o for o in outcomes if not isinstance(o, RunHandle)]
    assert len(winners) == 1, outcomes
    winner = f"U{winners[0]}"
    assert len(losers) == 49
    assert all(isinstance(o, AlreadyResumed) for o in losers), losers
    assert {o.by for o in losers} == {winner}
    assert all(f"already resumed by {winner}" in str(o) for o in losers)

    final = await e1.handle(run_id).result(timeout=5)
    assert final.status == "success"
    assert final.output["by"] == winner
    assert calls["approve"] == 2
    details = await e1.details(run_id)
    assert [ev.data["by"] for ev in details.events if ev.type == "run.resumed"] == [winner]


async def test_an_expired_suspension_is_resolved_by_system_as_a_rejection(engine):
    calls = Counter()
    wf = Workflow(id="expiring", input=Num).then(approval_step("approve", calls, suspend_ttl=0.3)).commit()
    e = engine(wf)
    before = time.time()
    handle = await e.start("expiring", {"n": 1})
    first = await handle.result(timeout=5)
    assert first.status == "suspended"
    # Created between `before` and now, it expires 0.3 s after it was created.
    assert before + 0.3 <= first.suspended[0].expires_at <= time.time() + 0.3

    final = await eventually(lambda: _finished(e, handle.run_id), timeout=5)

    assert final.status == "success"
    assert final.output == {"n": 1, "approved": False, "by": "system"}
    [susp] = (await e.details(handle.run_id)).suspensions
    assert susp.resolved_by == "system"
    with pytest.raises(NotSuspended):
        await e.resume(handle.run_id, data={"approved": True}, by="late")


async def _finished(e, run_id):
    run = await e.get_run(run_id)
    return await e.result_of(run) if run.is_terminal else None


async def test_a_suspend_payload_that_does_not_fit_its_model_fails_the_run(engine):
    @step(id="ask", input=Num, output=Num, suspend=Request, resume=Decision)
    async def ask(ctx: StepContext[Num]) -> Num:
        await ctx.suspend({"titel": "typo"})
        return ctx.input

    wf = Workflow(id="bad-payload", input=Num).then(ask).commit()
    e = engine(wf)

    result = await (await e.start("bad-payload", {"n": 1})).result(timeout=5)

    assert result.status == "failed"
    assert result.error_type == "InvalidInput"
    assert "suspend payload of step 'ask'" in result.error and "'title'" in result.error


async def test_a_suspended_run_survives_a_restart(engine):
    calls = Counter()
    wf = Workflow(id="approval", input=Num).then(counted("prepare", calls)).then(approval_step("approve", calls)).commit()
    first = engine(wf)
    run_id = (await (await first.start("approval", {"n": 1})).result(timeout=5)).run_id
    await first.close()

    second = engine(wf)
    final = await (await second.resume(run_id, data={"approved": True}, by="U1")).result(timeout=5)

    assert final.status == "success" and final.output["approved"] is True
    assert calls == Counter({"prepare": 1, "approve": 2})


async def test_steps_without_a_resume_model_get_the_data_as_given(engine):
    @step(id="free-form", input=Num, output=Num)
    async def free_form(ctx: StepContext[Num]) -> Num:
        data = await ctx.suspend({"question": "how many?"})
        return Num(n=data["count"])

    wf = Workflow(id="free", input=Num, output=Num).then(free_form).commit()
    e = engine(wf)
    first = await (await e.start("free", {"n": 1})).result(timeout=5)
    assert first.suspended[0].payload == {"question": "how many?"}

    final = await (await e.resume(first.run_id, data={"count": 9})).result(timeout=5)

    assert final.output == {"n": 9}


async def test_a_suspension_inside_a_loop_opens_again_in_each_iteration_under_its_own_path(engine):
    @step(id="ask", input=Num, output=Num, resume=Num)
    async def ask(ctx: StepContext[Num]) -> Num:
        more: Num = await ctx.suspend({"so_far": ctx.input.n})
        return Num(n=ctx.input.n + more.n)

    wf = Workflow(id="ask-until", input=Num, output=Num).dountil(ask, lambda x: x.n >= 10).commit()
    e = engine(wf)

    r = await (await e.start("ask-until", {"n": 0})).result(timeout=5)
    assert [(s.path, s.payload) for s in r.suspended] == [("ask#0", {"so_far": 0})]
    r = await (await e.resume(r.run_id, data={"n": 4})).result(timeout=5)
    assert [(s.path, s.payload) for s in r.suspended] == [("ask#1", {"so_far": 4})]
    r = await (await e.resume(r.run_id, step="ask", data={"n": 7})).result(timeout=5)

    assert r.status == "success" and r.output == {"n": 11}


async def test_suspensions_in_nested_workflows_inside_foreach_are_resumed_in_any_order(engine):
    calls = Counter()
    review = Workflow(id="review", input=Num, output=Verdict).then(approval_step("approve", calls)).commit()
    wf = (
        Workflow(id="reviews", input=Num)
        .foreach(review, concurrency=2, items=lambda x: [{"n": i} for i in range(x.n)])
        .commit()
    )
    e = engine(wf)

    r = await (await e.start("reviews", {"n": 3})).result(timeout=5)
    assert sorted(s.path for s in r.suspended) == ["review[0]/approve", "review[1]/approve", "review[2]/approve"]
    for path in ["review[2]/approve", "review[0]/approve", "review[1]/approve"]:
        r = await (await e.resume(r.run_id, step=path, data={"approved": True}, by=path)).result(timeout=5)

    assert r.status == "success"
    assert [o["by"] for o in r.output] == ["review[0]/approve", "review[1]/approve", "review[2]/approve"]
    assert calls["approve"] == 6  # each item: once to suspend, once resumed


def gated(step_id: str, gate: asyncio.Event, calls: Counter):
    """A step that waits for ``gate`` (so its run stays running while the test looks at it)."""

    @step(id=step_id, input=Verdict, output=Verdict)
    async def body(ctx: StepContext[Verdict]) -> Verdict:
        calls[step_id] += 1
        await gate.wait()
        return ctx.input

    return body


async def test_the_resumer_claims_the_run_in_the_same_commit_and_runs_it_at_once(engine):
    calls, gate = Counter(), asyncio.Event()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).then(gated("after", gate, calls)).commit()
    e = engine(wf, poll_interval=30.0)  # the dispatcher would not look again for 30 s
    run_id = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id

    await e.resume(run_id, data={"approved": True}, by="U1")
    # Already claimed by this process when resume() returns: never "pending" waiting for a dispatcher.
    run = await e.get_run(run_id)
    assert (run.status, run.owner) == ("running", e.owner)
    await eventually(lambda: calls["after"] == 1, timeout=5)
    gate.set()
    assert (await e.wait_for(run_id, timeout=5)).status == "success"
    assert calls == Counter({"approve": 2, "after": 1})


async def test_a_resume_with_no_room_to_execute_leaves_the_run_to_the_dispatcher(engine):
    calls, gate = Counter(), asyncio.Event()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).then(gated("after", gate, calls)).commit()
    e = engine(wf, capacity=1)
    first = (await (await e.start("approval", {"n": 1})).result(timeout=5)).run_id
    second = (await (await e.start("approval", {"n": 2})).result(timeout=5)).run_id

    await e.resume(first, data={"approved": True}, by="U1")
    await eventually(lambda: calls["after"] == 1, timeout=5)  # the only slot is busy with the first run
    await e.resume(second, data={"approved": True}, by="U1")
    assert await status_of(e, second) == "pending"  # not claimed beyond capacity
    gate.set()
    assert (await e.wait_for(first, timeout=5)).status == "success"
    assert (await e.wait_for(second, timeout=5)).status == "success"  # picked up once the slot freed
    assert calls["after"] == 2


async def test_an_open_approval_beside_a_long_sleep_is_suspended_listed_and_resumable(engine):
    """The sleep branch halts the run until its timer; the approval branch waits for a person meanwhile. The run
    is ``suspended`` (a person must act), listed by ``runs --status suspended`` and a waiting caller returns, while
    the timer still wakes it; before, it was ``waiting`` for the whole sleep."""
    calls = Counter()
    nap = Workflow(id="nap", input=Num, output=Num).sleep(2.0).commit()
    e = engine(Workflow(id="gate-and-nap", input=Num).parallel([approval_step("approve", calls), nap]).commit())
    handle = await e.start("gate-and-nap", {"n": 1})

    result = await handle.result(timeout=1.5)  # settles at once, long before the sleep ends

    assert result.status == "suspended" and [s.path for s in result.suspended] == ["approve"]
    assert [r.id for r in await e.list_runs(status="suspended")] == [handle.run_id]
    # The timer wakes the suspended run: it is walked again, the sleep's end is recorded, and it is suspended
    # again with no timer left, still listed for a person (the open approval is not asked again).
    await eventually(lambda: _settled_without_timer(e, handle.run_id), timeout=15)
    assert [s.path for s in (await e.details(handle.run_id)).steps] == ["nap/sleep-1"]
    assert [r.id for r in await e.list_runs(status="suspended")] == [handle.run_id]
    assert calls["approve"] == 1
    done = await (await e.resume(handle.run_id, data={"approved": True}, by="alice")).result(timeout=5)
    assert done.status == "success" and done.output == {"approve": {"n": 1, "approved": True, "by": "alice"},
                                                        "nap": {"n": 1}}
    assert calls["approve"] == 2


async def _settled_without_timer(e, run_id: str) -> bool:
    run = await e.get_run(run_id)
    return run.status == "suspended" and run.ready_at is None


async def test_a_resume_before_the_sleep_ends_waits_for_the_timer(engine):
    calls = Counter()
    # A sleep of 2 s: longer than IN_PROCESS_SLEEP (1 s) by more than its commit takes on a busy machine, so the run
    # halts (suspended beside its timer) rather than sleeping in process. (With 1.2 s, a commit slower than 0.2 s on
    # PostgreSQL under CI's load left 1 s or less: the run slept in process and was still running.)
    nap = Workflow(id="nap", input=Num, output=Num).sleep(2.0).commit()
    e = engine(Workflow(id="gate-and-nap", input=Num).parallel([approval_step("approve", calls), nap]).commit())
    started = time.monotonic()  # (before the sleep starts: however slow the machine, the sleep ends 2 s after)
    handle = await e.start("gate-and-nap", {"n": 2})
    assert (await handle.result(timeout=5.0)).status == "suspended"

    await e.resume(handle.run_id, data={"approved": False}, by="bob")
    done = await handle.result(timeout=10)

    assert done.status == "success" and done.output["approve"]["approved"] is False
    assert time.monotonic() - started >= 1.9  # the sleep was not cut short by the resume


async def test_a_backlog_beyond_capacity_drains_as_slots_free_up_not_at_each_poll(engine):
    # 30 runs queued by a process that does not execute them (a CLI, a bot with execute=False), then a worker
    # with room for 3 and a poll interval of ten minutes: it claims 3, and each time runs settle it must claim
    # the next ones at once. Then all 30 are resumed at once: 3 are claimed by their resumes, 27 become
    # pending and go the same way. A dispatcher that waited for its poll between claims would need hours.
    calls: Counter = Counter()
    wf = Workflow(id="queued", input=Num).then(approval_step("ok", calls)).commit()
    client = engine(wf, execute=False)
    handles = [await client.start("queued", {"n": i}) for i in range(30)]
    assert {(await client.get_run(h.run_id)).status for h in handles} == {"pending"}

    worker = engine(wf, capacity=3, poll_interval=600.0)
    await worker.open()
    for h in handles:
        assert (await client.wait_for(h.run_id, timeout=20)).status == "suspended"

    await asyncio.gather(*(worker.resume(h.run_id, data={"approved": True}, by="ann") for h in handles))
    results = [await client.wait_for(h.run_id, timeout=20) for h in handles]
    assert [(r.status, r.output) for r in results] == [
        ("success", {"n": i, "approved": True, "by": "ann"}) for i in range(30)
    ]
    assert calls["ok"] == 60  # each body ran twice: once to suspend, once resumed; none ran a third time


async def test_a_burst_of_resumes_fills_the_free_slots_and_leaves_the_rest_to_the_dispatcher(engine):
    # Resumes with room read the run with what it has done and start it from that read (no second read); the
    # others read only what they decide on. Either way every run goes on from its recorded steps, once each.
    calls, gate = Counter(), asyncio.Event()

    @step(id="first", input=Num, output=Num)
    async def first(ctx: StepContext[Num]) -> Num:
        calls["first"] += 1
        return ctx.input

    wf = (Workflow(id="approval", input=Num).then(first).then(approval_step("approve", calls))
          .then(gated("after", gate, calls)).commit())
    e = engine(wf, capacity=3, poll_interval=0.2)
    ids = [(await (await e.start("approval", {"n": n})).result(timeout=5)).run_id for n in range(8)]

    await asyncio.gather(*(e.resume(run_id, data={"approved": True}, by="U1") for run_id in ids))

    runs = [await e.get_run(run_id) for run_id in ids]
    assert sorted(r.status for r in runs) == ["pending"] * 5 + ["running"] * 3  # three claimed by their resumes
    await eventually(lambda: calls["after"] == 3, timeout=5)
    gate.set()
    results = [await e.wait_for(run_id, timeout=10) for run_id in ids]
    assert [r.status for r in results] == ["success"] * 8
    assert [r.output["n"] for r in results] == list(range(8))
    assert calls == Counter({"first": 8, "approve": 16, "after": 8})


async def test_a_resume_under_way_when_the_engine_closes_leaves_the_run_to_other_processes(engine):
    calls: Counter = Counter()
    wf = Workflow(id="approval", input=Num).then(approval_step("approve", calls)).then(counted("after", calls)).commit()
    e = engine(wf)
    other = engine(wf, execute=False)
    handle = await e.start("approval", {"n": 1})
    assert (await handle.result(timeout=5)).status == "suspended"

    # The resume holds a slot and reads the run; close() begins before its commit and hands back the runs.
    resume = asyncio.create_task(e.resume(handle.run_id, data={"approved": True}, by="U1"))
    await asyncio.sleep(0)
    await e.close()
    await asyncio.gather(resume, return_exceptions=True)

    run = await other.get_run(handle.run_id)
    # Not held by the closed engine (that would wait for its lease to run out, and count as a death): ready for
    # any process, or not resumed at all.
    assert not (run.status == "running" and run.owner == e.owner), (run.status, run.owner)
    assert not e._tasks and calls["after"] == 0


class Confirm(BaseModel):
    confirm: str


async def test_resume_validates_with_the_resume_model_of_the_step_at_the_resumed_path(engine):
    # Step ids must be unique within a workflow, but commit() accepts two nested workflows that each have a step
    # "approve" (paths review/approve and release/approve). A resume of release/approve is validated against
    # review's "approve" step (find_step returns the first step with that id).
    @step(id="approve", input=Num, output=Num, resume=Decision)
    async def review_approve(ctx: StepContext[Num]) -> Num:
        decision = await ctx.suspend({"q": "review ok?"})
        return Num(n=ctx.input.n + (1 if decision.approved else 0))

    @step(id="approve", input=Num, output=Num, resume=Confirm)
    async def release_approve(ctx: StepContext[Num]) -> Num:
        answer = await ctx.suspend({"q": "type the version to release"})
        return Num(n=ctx.input.n + len(answer.confirm))

    review = Workflow(id="review", input=Num, output=Num).then(review_approve).commit()
    release = Workflow(id="release", input=Num, output=Num).then(release_approve).commit()
    outer = Workflow(id="ship", input=Num, output=Num).then(review).then(release).commit()
    e = engine(outer)
    handle = await e.start("ship", {"n": 1})
    first = await handle.result(timeout=5)
    assert first.suspended and [s.path for s in first.suspended] == ["review/approve"]
    await e.resume(handle.run_id, step="review/approve", data={"approved": True})
    second = await eventually(lambda: _suspended_at(e, handle.run_id, "release/approve"))
    assert second

    await e.resume(handle.run_id, step="release/approve", data={"confirm": "v1.2"})
    result = await e.handle(handle.run_id).result(timeout=5)

    assert result.status == "success", result.error
    assert result.output == {"n": 6}


async def _suspended_at(e, run_id, path):
    run = await e.get_run(run_id)
    if run.status != "suspended":
        return False
    return any(s.path == path and s.status == "open" for s in await e.suspensions(run_id))


async def test_a_step_that_swallows_the_halt_of_suspend_fails_instead_of_succeeding_with_its_approval_open(engine):
    @step(id="approve", input=Num, output=Num, suspend=Request, resume=Decision)
    async def approve(ctx: StepContext[Num]) -> Num:
        try:
            await ctx.suspend(Request(title="ship it?"))
        except:  # noqa: E722 (the point: a bare except around the call catches the Halt suspend() raises)
            pass
        return ctx.input

    e = engine(Workflow(id="swallows", input=Num, output=Num).then(approve).commit())
    result = await (await e.start("swallows", {"n": 1})).result(timeout=5)

    assert (result.status, result.error_path) == ("failed", "approve"), result
    assert "caught the Halt that suspend() raises" in (result.error or "")
    assert "step.succeeded" not in [ev.type for ev in (await e.details(result.run_id)).events]
