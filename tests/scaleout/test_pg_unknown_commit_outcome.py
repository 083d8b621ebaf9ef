"""Writes whose COMMIT reached PostgreSQL but whose answer did not reach the replica (the connection dropped at
that moment: a failover, a proxy or NAT restart, ``pg_terminate_backend`` a moment too late).

The engine retries such a write (README, Reliability: "Connection resets, server restarts and failovers ... are
retried"), so each write must be safe to run again after a commit of unknown outcome, as a start, a resume and a
step's result are. These are the ones that are not: the retry finds its own committed change and takes it for
someone else's.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from storage import Database
from storage.schedule_store import ScheduleStore
from tests.conftest import FAST
from tests.helpers.pg_wire import commit_cutter
from workflows import Engine, StepContext, Workflow, step
from workflows.memory import Memory, WorkingMemory, WorkingMemoryChanged
from workflows.schedules import Scheduler, create_schedule

pytestmark = pytest.mark.timeout(60)


class Empty(BaseModel):
    pass


class Count(BaseModel):
    n: int = 0


@step(id="between", input=Empty, output=Empty)
async def between(ctx: StepContext[Empty]) -> Empty:
    return Empty()


#: Waits for event "go" twice: each "go" sent moves it one wait further.
two_gos = (Workflow(id="two-gos", input=Empty)
           .wait_for_event("go", id="first-go").then(between).wait_for_event("go", id="second-go").commit())


@step(id="tick", input=Count, output=Count)
async def tick(ctx: StepContext[Count]) -> Count:
    return Count(n=ctx.input.n + 1)


ticker = Workflow(id="ticker", input=Count, output=Count).then(tick).commit()


async def test_an_event_sent_once_is_received_once_when_its_commit_answer_is_lost(pg_url: str) -> None:
    runner = Engine.from_url(pg_url, **FAST)
    runner.register(two_gos)
    async with commit_cutter(pg_url) as (cutter, proxied):
        sender = Engine.from_url(proxied, execute=False, **FAST)  # a `serve` replica or `threadflow send-event`
        sender.register(two_gos)
        try:
            run = await runner.start("two-gos", {})
            assert (await run.result()).status == "waiting"
            await sender.open()
            cutter.arm(1)
            await sender.send_event(run.run_id, "go", {})
            assert cutter.cut == 1  # the fault really hit the event's commit
            await asyncio.sleep(1.0)  # the runner takes the event, and whatever else is there
            status = (await runner.get_run(run.run_id)).status
            received = [e.path for e in await runner.store.read_events(run.run_id) if e.type == "event.received"]
        finally:
            await sender.close()
            await runner.close()
    # One "go" was sent: the run passed its first wait and waits at its second.
    assert received == ["first-go"], f"one event sent, received at {received}; the run is {status}"
    assert status == "waiting"


async def test_a_cancel_whose_commit_answer_is_lost_is_not_reported_as_failed(pg_url: str) -> None:
    runner = Engine.from_url(pg_url, **FAST)
    runner.register(two_gos)
    async with commit_cutter(pg_url) as (cutter, proxied):
        canceler = Engine.from_url(proxied, execute=False, **FAST)  # `threadflow cancel`, or a serve replica
        canceler.register(two_gos)
        try:
            run = await runner.start("two-gos", {})
            assert (await run.result()).status == "waiting"
            await canceler.open()
            cutter.arm(1)
            try:
                result = await canceler.cancel(run.run_id, by="U1")
                outcome = f"canceled ({result.status})"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            assert cutter.cut == 1
            final = await runner.get_run(run.run_id)
        finally:
            await canceler.close()
            await runner.close()
    assert final.status == "canceled"
    # The cancel went through: its caller (the CLI, a Slack button) must be told so, not that it failed.
    assert outcome == "canceled (canceled)", outcome


async def test_a_schedule_whose_claim_answer_is_lost_still_fires_its_due_time(pg_url: str) -> None:
    async with commit_cutter(pg_url) as (cutter, proxied):
        # A replica's scheduler (this one leaves the runs it starts to the processes that execute runs).
        engine = Engine.from_url(proxied, execute=False, **FAST)
        engine.register(ticker)
        store = ScheduleStore(engine.db)
        try:
            await engine.open()
            made = time.time()
            sched = await create_schedule(engine, store, "ticker", "* * * * *", input={"n": 0}, now=made)
            clock = lambda: sched.next_at + 1.0  # noqa: E731  (a second after its due time)
            scheduler = Scheduler(engine, store, clock=clock)
            cutter.arm(1)
            fired = await scheduler.tick()
            assert cutter.cut == 1  # the fault hit the claim of the due time
            fired += await scheduler.tick()  # and the scheduler looks again
            runs = await engine.list_runs(workflow_id="ticker")
            after = await store.get(sched.id)
        finally:
            await engine.close()
    assert after is not None and after.next_at > sched.next_at  # the due time was claimed (by this replica)
    # README: "each due time fires exactly once, even with several replicas". This one fired zero times.
    assert len(runs) == 1, f"due time claimed, {len(runs)} run(s) started; fired: {fired}"


async def test_a_rerun_whose_commit_answer_is_lost_reports_the_run_it_created(pg_url: str) -> None:
    runner = Engine.from_url(pg_url, **FAST)
    runner.register(ticker)
    async with commit_cutter(pg_url) as (cutter, proxied):
        rerunner = Engine.from_url(proxied, execute=False, **FAST)  # `threadflow rerun --no-wait`, or a serve replica
        rerunner.register(ticker)
        try:
            first = await runner.start("ticker", {"n": 1})
            assert (await first.result()).status == "success"
            await rerunner.open()
            cutter.arm(1)
            try:
                handle = await rerunner.rerun(first.run_id, "tick")
                outcome = f"rerun as {handle.run_id}"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"[:300]
            assert cutter.cut == 1
            reruns = [r for r in await runner.list_runs(workflow_id="ticker") if r.id != first.run_id]
        finally:
            await rerunner.close()
            await runner.close()
    assert len(reruns) == 1  # the re-run was created (and executes)
    # ...so the command must say so, with its id, not fail (a user would re-run again: two re-runs).
    assert outcome == f"rerun as {reruns[0].id}", outcome


async def test_a_message_added_once_is_remembered_once_when_its_commit_answer_is_lost(pg_url: str) -> None:
    async with commit_cutter(pg_url) as (cutter, proxied):
        db = Database(proxied)
        await db.open()
        try:
            thread = Memory(db).thread("C1:1700000000.000100", "T1:C1")
            await thread.ensure()
            await thread.add("user", "the deploy window is Tuesday 10:00")
            cutter.arm(1)
            await thread.add("assistant", "Noted: Tuesday 10:00.")
            assert cutter.cut == 1  # the fault really hit the message's commit
            history = [m.content for m in await thread.history(10)]
        finally:
            await db.close()
    # What the agents of the thread see of it from now on: each message once.
    assert history == ["the deploy window is Tuesday 10:00", "Noted: Tuesday 10:00."]


async def test_a_working_memory_update_whose_commit_answer_is_lost_is_not_reported_as_someone_elses(
    pg_url: str,
) -> None:
    async with commit_cutter(pg_url) as (cutter, proxied):
        db = Database(proxied)
        await db.open()
        try:
            thread = Memory(db, working_memory=WorkingMemory(scope="thread")).thread("C1:1700000000.000200", "T1:C1")
            await thread.ensure()
            await thread.set_working_memory("deploy window: Tuesday")
            assert await thread.working_memory() == "deploy window: Tuesday"  # an agent's context read it
            cutter.arm(1)
            outcome = "saved"
            try:
                # The agent's update_working_memory tool: a compare-and-set on what it read.
                await thread.set_working_memory("deploy window: Tuesday 10:00, owner: Bob")
            except WorkingMemoryChanged as exc:
                outcome = f"WorkingMemoryChanged (the model is told its update was not saved); it now reads {exc.current!r}"
            assert cutter.cut == 1  # the fault really hit the update's commit
            now = await thread.working_memory()
        finally:
            await db.close()
    # Nobody else wrote: the one update was saved, and the agent must not be told it was lost to another agent.
    assert outcome == "saved"
    assert now == "deploy window: Tuesday 10:00, owner: Bob"

