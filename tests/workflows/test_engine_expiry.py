"""Approvals with a time to live: when nobody decides in time, the run takes the reject path."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from tests.helpers import eventually
from workflows import NotWaitingForEvent, StepContext, Workflow, step
from workflows.errors import RunFailure


class Ask(BaseModel):
    what: str = "deploy"


class Decision(BaseModel):
    approved: bool
    by: str | None = None
    reason: str | None = None


class Done(BaseModel):
    ok: bool


@step(id="approve", input=Ask, output=Done, resume=Decision, suspend_ttl=0.3)
async def approve(ctx: StepContext[Ask]) -> Done:
    decision: Decision = await ctx.suspend({"title": f"Approve {ctx.input.what}?"})
    if not decision.approved:
        raise RunFailure(f"Rejected by {decision.by}: {decision.reason}")
    return Done(ok=True)


expiring = Workflow(id="expiring", input=Ask, output=Done).then(approve).commit()


@step(id="approve-later", input=Ask, output=Done, resume=Decision)
async def approve_later(ctx: StepContext[Ask]) -> Done:
    decision: Decision = await ctx.suspend({})
    return Done(ok=decision.approved)


workflow_ttl = Workflow(id="workflow-ttl", input=Ask, output=Done, suspend_ttl=0.3).then(approve_later).commit()


async def settled_beyond_suspension(e, run_id: str, timeout: float = 10.0):
    """Wait until the run is no longer suspended (the dispatcher expires approvals on its own clock)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await e.wait_for(run_id, timeout=timeout)
        if result.status != "suspended" or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.02)


async def test_an_unanswered_approval_expires_into_the_reject_path(engine) -> None:
    e = engine(expiring)
    run = await e.start("expiring", {})
    waiting = await run.result()
    assert waiting.status == "suspended"
    assert waiting.suspended[0].expires_at is not None

    result = await settled_beyond_suspension(e, run.run_id)
    assert result.status == "failed"
    assert "Rejected by system: expired" in (result.error or "")
    details = await e.details(run.run_id)
    [susp] = details.suspensions
    assert susp.resolved_by == "system" and susp.resume_data["approved"] is False
    resumed = [ev for ev in details.events if ev.type == "run.resumed"]
    assert resumed and resumed[0].data["expired"] is True


async def test_the_workflow_level_ttl_applies_to_its_steps(engine) -> None:
    e = engine(workflow_ttl)
    run = await e.start("workflow-ttl", {})
    assert (await run.result()).status == "suspended"
    result = await settled_beyond_suspension(e, run.run_id)
    assert result.status == "success" and result.output == {"ok": False}


async def test_a_decision_before_expiry_wins(engine) -> None:
    e = engine(expiring)
    run = await e.start("expiring", {})
    assert (await run.result()).status == "suspended"
    handle = await e.resume(run.run_id, data={"approved": True}, by="U1")
    assert (await handle.result()).status == "success"


class Ping(BaseModel):
    pong: str


impatient = Workflow(id="impatient", input=Ask).wait_for_event("ping", Ping, timeout=0.3).commit()


async def test_an_awaited_event_that_never_comes_fails_the_run_after_its_timeout(engine) -> None:
    e = engine(impatient)
    run = await e.start("impatient", {})
    waiting = await run.result()
    assert waiting.status == "waiting" and waiting.suspended[0].event == "ping"
    deadline = asyncio.get_running_loop().time() + 10
    while (result := await e.wait_for(run.run_id)).status == "waiting" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert result.status == "failed"
    assert result.error_type == "EventTimeout" and result.error_path == "wait-ping"
    assert "did not arrive within 0.3 seconds" in (result.error or "")


async def test_an_event_in_time_beats_the_timeout(engine) -> None:
    e = engine(impatient)
    run = await e.start("impatient", {})
    assert (await run.result()).status == "waiting"
    await e.send_event(run.run_id, "ping", {"pong": "here"})
    result = await e.wait_for(run.run_id, timeout=10)
    assert result.status == "success" and result.output == {"pong": "here"}


async def finished(e, run_id: str, timeout: float = 10.0):
    """The run's result once it has ended (a wait that timed out fails it when the dispatcher next walks it)."""
    await eventually(lambda: _ended(e, run_id), timeout=timeout)
    return await e.wait_for(run_id)


async def _ended(e, run_id: str) -> bool:
    return (await e.get_run(run_id)).is_terminal


async def _deadline_of(e, run_id: str) -> float:
    [wait] = [s for s in await e.suspensions(run_id) if s.kind == "event"]
    assert wait.expires_at is not None
    return wait.expires_at


async def test_an_event_sent_after_the_wait_timed_out_is_refused_while_the_worker_is_down(engine) -> None:
    # The wait times out when the run is walked; with its worker down, nobody walks it at the deadline, and its wait
    # stays open. An event sent then used to be delivered, and the run went on as if it had come in time.
    worker = engine(impatient)
    run = await worker.start("impatient", {})
    assert (await run.result()).status == "waiting"
    deadline = await _deadline_of(worker, run.run_id)
    await worker.close()
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.2)

    sender = engine(impatient, execute=False)
    with pytest.raises(NotWaitingForEvent, match="the wait timed out"):
        await sender.send_event(run.run_id, "ping", {"pong": "late"})

    result = await finished(engine(impatient), run.run_id)
    assert result.status == "failed" and result.error_type == "EventTimeout" and result.error_path == "wait-ping"


async def test_an_event_that_lands_after_the_deadline_does_not_count(engine) -> None:
    # send_event found the wait open a moment before its deadline; its write lands just after (what it writes is
    # below): the event resolved the wait too late, and the run still times out.
    worker = engine(impatient)
    run = await worker.start("impatient", {})
    assert (await run.result()).status == "waiting"
    deadline = await _deadline_of(worker, run.run_id)
    await worker.close()
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.05)

    sender = engine(impatient, execute=False)
    assert await sender.store.send_signal(run.run_id, "ping", {"pong": "late"}, []) == "delivered"

    result = await finished(engine(impatient), run.run_id)
    assert result.status == "failed" and result.error_type == "EventTimeout"


@step(id="long-step", input=Ask, output=Ask)
async def long_step(ctx: StepContext[Ask]) -> Ask:
    await asyncio.sleep(1.5)  # an agent at work beside the wait
    return ctx.input


wait_beside_work = Workflow(id="wait-beside-work", input=Ask).parallel([
    Workflow(id="listen", input=Ask).wait_for_event("ping", Ping, timeout=0.5).commit(), long_step,
]).commit()


async def test_an_event_sent_after_the_timeout_is_refused_while_a_parallel_branch_works(engine) -> None:
    # The run is executing its other branch at the deadline: nothing walks the wait until that branch ends.
    e = engine(wait_beside_work)
    run = await e.start("wait-beside-work", {})
    await eventually(lambda: _deadline_passed(e, run.run_id))

    with pytest.raises(NotWaitingForEvent, match="the wait timed out"):
        await e.send_event(run.run_id, "ping", {"pong": "late"})

    result = await finished(e, run.run_id)
    assert result.status == "failed" and result.error_type == "EventTimeout" and result.error_path == "listen/wait-ping"


async def _deadline_passed(e, run_id: str) -> bool:
    waits = [s for s in await e.suspensions(run_id) if s.kind == "event"]
    return bool(waits) and waits[0].expires_at is not None and time.time() > waits[0].expires_at + 0.1


async def test_an_event_in_time_counts_though_the_run_takes_it_after_the_deadline(engine) -> None:
    e = engine(wait_beside_work)
    run = await e.start("wait-beside-work", {})
    await eventually(lambda: e.suspensions(run.run_id))  # the wait is open (0.5 s to go)
    assert await e.send_event(run.run_id, "ping", {"pong": "here"}) == "delivered"  # the other branch still works

    result = await finished(e, run.run_id)
    assert result.status == "success" and result.output == {"listen": {"pong": "here"}, "long-step": {"what": "deploy"}}


class Num(BaseModel):
    n: int


async def test_a_nested_workflows_suspend_ttl_expires_its_approvals(engine):
    # README: "Give a step suspend_ttl=3600 (or the workflow suspend_ttl=) and an unanswered approval expires into
    # the reject path." The nested workflow's step_timeout and retry apply to its steps; its suspend_ttl does not
    # (open_suspension reads only the run's top workflow's).
    @step(id="ask", input=Num, output=Num, resume=Decision)
    async def ask(ctx: StepContext[Num]) -> Num:
        decision = await ctx.suspend({"q": "ok?"})
        return Num(n=1 if decision.approved else 0)

    inner = Workflow(id="gate", input=Num, output=Num, suspend_ttl=0.3).then(ask).commit()
    alone = engine(inner)
    outer = Workflow(id="outer", input=Num, output=Num).then(inner).commit()
    nested = engine(outer)

    direct = await (await alone.start("gate", {"n": 5})).result(timeout=5)
    [own] = await alone.suspensions(direct.run_id)
    assert own.expires_at is not None  # the workflow's own suspend_ttl, run on its own

    first = await (await nested.start("outer", {"n": 5})).result(timeout=5)
    [susp] = await nested.suspensions(first.run_id)
    assert susp.path == "gate/ask"
    assert susp.expires_at is not None, "the nested workflow's suspend_ttl was ignored: the approval never expires"
    assert await eventually(lambda: _finished(nested, first.run_id)) == {"n": 0}  # expired: the reject path


async def _finished(e, run_id):
    run = await e.get_run(run_id)
    return run.status == "success" and run.output
