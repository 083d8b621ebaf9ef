"""Workflow versions on SQLite and PostgreSQL: runs stay on the definition they started with.

The story of issue 18: a run of ``deploy`` v1 (prepare -> gate -> finish) waits at ``gate``; v2 inserts
``audit`` before the gate and renames it ``gate2``. A decision for the v1 run must never be consumed by v2.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field
from sqlalchemy import update

from storage.tables import runs
from tests.conftest import EngineFactory
from tests.helpers import eventually
from tests.helpers.versioned_flows import deploy_v1, deploy_v2
from workflows import (
    DefinitionError,
    Engine,
    RunFinished,
    StepContext,
    UsageError,
    VersionNotRegistered,
    Workflow,
    WorkflowNotFound,
    step,
)
from workflows.versions import legacy_fingerprint

APPROVE = {"approved": True}


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


async def suspended_v1_run(engine: EngineFactory) -> str:
    """A run of v1 waiting at ``gate``, left by a process that has since shut down."""
    old = engine(deploy_v1())
    result = await (await old.start("deploy", {})).result(timeout=15)
    assert result.status == "suspended" and [s.path for s in result.suspended] == ["gate"]
    await old.close()
    return result.run_id


async def step_paths(e: Engine, run_id: str) -> list[str]:
    return sorted(s.path for s in (await e.details(run_id)).steps)


async def test_a_run_suspended_on_v1_resumes_on_v1_while_v2_is_registered_and_new_runs_take_v2(
    engine: EngineFactory,
) -> None:
    run_id = await suspended_v1_run(engine)
    e = engine(deploy_v1(), deploy_v2())
    assert e.get_workflow("deploy").version == "2"
    assert [(v.version, v.newest) for v in e.versions("deploy")] == [("2", True), ("1", False)]

    fresh = await (await e.start("deploy", {})).result(timeout=15)
    assert fresh.status == "suspended" and [s.path for s in fresh.suspended] == ["gate2"]
    fresh_run = await e.get_run(fresh.run_id)
    assert (fresh_run.workflow_version, fresh_run.workflow_fingerprint) == ("2", deploy_v2().fingerprint)

    done = await (await e.resume(run_id, data=APPROVE)).result(timeout=15)
    assert done.status == "success"
    assert await step_paths(e, run_id) == ["finish", "gate", "prepare"]  # v1's steps; no audit, no gate2
    assert (await e.details(run_id)).run.workflow_version == "1"


async def test_with_v1_gone_resume_fails_clearly_and_the_suspension_stays_open_until_v1_is_registered_again(
    engine: EngineFactory,
) -> None:
    run_id = await suspended_v1_run(engine)
    e = engine(deploy_v2())
    with pytest.raises(VersionNotRegistered) as caught:
        await e.resume(run_id, data=APPROVE, by="ada")
    message = str(caught.value)
    v1, v2 = deploy_v1().fingerprint[:8], deploy_v2().fingerprint[:8]
    assert f"version 1 ({v1}) of workflow 'deploy'" in message
    assert f"Registered versions of 'deploy': 2 ({v2})" in message
    assert "threadflow rerun" in message and "Nothing was changed" in message

    # Nothing consumed: the suspension is open, the run suspended, and v2 never touched it.
    [susp] = await e.store.suspensions_of(run_id)
    assert (susp.path, susp.status, susp.resolved_by) == ("gate", "open", None)
    assert (await e.get_run(run_id)).status == "suspended"
    assert await step_paths(e, run_id) == ["prepare"]
    assert [r.id for r in await e.list_runs(status="stranded")] == [run_id]

    e.register(deploy_v1())
    done = await (await e.resume(run_id, data=APPROVE, by="ada")).result(timeout=15)
    assert done.status == "success"
    assert await step_paths(e, run_id) == ["finish", "gate", "prepare"]
    assert await e.list_runs(status="stranded") == []


async def test_rerun_from_moves_a_stranded_run_onto_v2(engine: EngineFactory) -> None:
    run_id = await suspended_v1_run(engine)
    e = engine(deploy_v2())
    moved = await (await e.rerun(run_id, "gate2", started_by="ops")).result(timeout=15)
    assert moved.status == "suspended" and [s.path for s in moved.suspended] == ["gate2"]

    new = await e.details(moved.run_id)
    assert (new.run.workflow_version, new.run.rerun_of) == ("2", run_id)
    prepare = next(s for s in new.steps if s.path == "prepare")
    assert prepare.output["version"] == "v1"  # kept from the old run, not run again
    assert next(s for s in new.steps if s.path == "audit").output["version"] == "v2"

    old = await e.details(run_id)
    assert old.run.status == "canceled" and old.run.error is not None and moved.run_id in old.run.error["message"]
    assert [ev.data.get("moved_to") for ev in old.events if ev.type == "run.canceled"] == [moved.run_id]
    assert await e.list_runs(status="stranded") == []

    done = await (await e.resume(moved.run_id, data=APPROVE)).result(timeout=15)
    assert done.status == "success"


async def test_a_moved_run_is_still_its_requesters_and_the_mover_is_named_on_the_old_one(engine: EngineFactory) -> None:
    """Who started a run decides its approvals when nobody else is named: moving a stranded run (an operator, from
    the CLI) must not make the operator its only approver."""
    old = engine(deploy_v1())
    waiting = await (await old.start("deploy", {}, started_by="U0ALICE1")).result(timeout=15)
    await old.close()
    e = engine(deploy_v2())
    moved = await (await e.rerun(waiting.run_id, "gate2", started_by="ops")).result(timeout=15)

    assert (await e.get_run(moved.run_id)).started_by == "U0ALICE1"
    canceled = [ev.data for ev in (await e.details(waiting.run_id)).events if ev.type == "run.canceled"]
    assert [(c["by"], c["moved_to"]) for c in canceled] == [("ops", moved.run_id)]


async def test_a_rerun_that_cannot_keep_an_old_result_on_the_new_version_says_from_where_to_rerun(
    engine: EngineFactory,
) -> None:
    class Old(BaseModel):
        count: int

    class New(BaseModel):
        items: list[str]

    @step(id="collect", output=Old)
    async def collect_old(ctx: StepContext[Any]) -> Old:
        return Old(count=3)

    @step(id="collect", output=New)
    async def collect_new(ctx: StepContext[Any]) -> New:
        return New(items=["a"])

    @step(id="wait")
    async def wait(ctx: StepContext[Any]) -> Any:
        return await ctx.suspend({})

    old = engine(Workflow(id="inventory", version="1").then(collect_old).then(wait).commit())
    run_id = (await (await old.start("inventory", {})).result(timeout=15)).run_id
    await old.close()
    e = engine(Workflow(id="inventory", version="2").then(collect_new).then(wait).commit())
    with pytest.raises(Exception, match=r"cannot keep its result of step 'collect'.*Re-run from 'collect'"):
        await e.rerun(run_id, "wait")
    assert (await e.get_run(run_id)).status == "suspended"  # nothing moved
    moved = await (await e.rerun(run_id, "collect")).result(timeout=15)
    assert moved.status == "suspended"
    assert (await e.get_run(run_id)).status == "canceled"


async def test_a_step_code_only_change_is_not_a_new_version(engine: EngineFactory) -> None:
    assert deploy_v1(code="v1").fingerprint == deploy_v1(code="v1-hotfix").fingerprint
    assert deploy_v1().fingerprint != deploy_v2().fingerprint

    old = engine(deploy_v1(code="v1"))
    run_id = (await (await old.start("deploy", {})).result(timeout=15)).run_id
    await old.close()
    e = engine(deploy_v1(code="v1-hotfix"))  # the same structure, new step code
    assert await e.list_runs(status="stranded") == []
    done = await (await e.resume(run_id, data=APPROVE)).result(timeout=15)
    assert done.status == "success"
    finish = next(s for s in (await e.details(run_id)).steps if s.path == "finish")
    assert finish.output["version"] == "v1-hotfix"  # the run picked up the new code


async def test_two_replicas_with_different_versions_each_execute_only_their_own_runs(engine: EngineFactory) -> None:
    producer_v1, producer = engine(deploy_v1(), execute=False), engine(deploy_v2(), execute=False)
    v1_runs = [(await producer_v1.start("deploy", {})).run_id for _ in range(4)]
    v2_runs = [(await producer.start("deploy", {})).run_id for _ in range(4)]

    old_replica, new_replica = engine(deploy_v1()), engine(deploy_v2())
    await asyncio.gather(old_replica.open(), new_replica.open())

    async def all_suspended() -> bool:
        return all([(await producer.get_run(r)).status == "suspended" for r in [*v1_runs, *v2_runs]])

    await until(all_suspended, what="every run reaching its gate")
    for run_id in v1_runs:
        details = await producer.details(run_id)
        assert {s.output["by"] for s in details.steps} == {old_replica.owner}
        assert [s.path for s in details.suspensions] == ["gate"]
    for run_id in v2_runs:
        details = await producer.details(run_id)
        assert {s.output["by"] for s in details.steps} == {new_replica.owner}
        assert [s.path for s in details.suspensions] == ["gate2"]

    # Resumes go to the replica that has the run's version, whoever receives them.
    await new_replica.close()
    with pytest.raises(VersionNotRegistered, match="Nothing was changed"):
        await old_replica.resume(v2_runs[0], data=APPROVE)
    assert (await producer_v1.resume(v1_runs[0], data=APPROVE)).run_id == v1_runs[0]
    await until(lambda: _status_is(producer, v1_runs[0], "success"), what="the v1 replica finishing its run")
    gate = next(s for s in (await producer.details(v1_runs[0])).steps if s.path == "gate")
    assert gate.output["by"] == old_replica.owner


async def _status_is(e: Engine, run_id: str, status: str) -> bool:
    return (await e.get_run(run_id)).status == status


async def test_a_resume_received_by_a_replica_without_the_version_names_the_replica_that_has_it(
    engine: EngineFactory,
) -> None:
    old_replica = engine(deploy_v1())
    run_id = (await (await old_replica.start("deploy", {})).result(timeout=15)).run_id
    new_replica = engine(deploy_v2())
    await until(lambda: new_replica.replica.store.served_by(deploy_v1().fingerprint), what="v1 being announced")
    with pytest.raises(VersionNotRegistered) as caught:
        await new_replica.resume(run_id, data=APPROVE)
    assert caught.value.served_by == [old_replica.owner] and old_replica.owner in str(caught.value)
    assert await new_replica.list_runs(status="stranded") == []  # a live replica has it: not stranded
    [susp] = await new_replica.store.open_suspensions(run_id)
    assert susp.path == "gate"

    await old_replica.close()  # its versions go with it
    assert [r.id for r in await new_replica.list_runs(status="stranded")] == [run_id]


async def test_a_stranded_run_is_said_once_by_one_event_even_with_two_replicas_sweeping(engine: EngineFactory) -> None:
    run_id = await suspended_v1_run(engine)
    replicas = [engine(deploy_v2(), lease_seconds=0.6), engine(deploy_v2(), lease_seconds=0.6)]
    await asyncio.gather(*(r.open() for r in replicas))

    async def stranded_events() -> list[Any]:
        return [e for e in await replicas[0].store.read_events(run_id) if e.type == "run.stranded"]

    [event] = await until(stranded_events, what="a run.stranded event")
    assert event.data["workflow_id"] == "deploy"
    assert (event.data["version"], event.data["fingerprint"]) == ("1", deploy_v1().fingerprint)
    assert event.data["registered"] == [{"version": "2", "fingerprint": deploy_v2().fingerprint}]
    assert "threadflow rerun" in event.data["message"]
    await asyncio.sleep(1.5)  # several more sweeps by both replicas
    assert len(await stranded_events()) == 1
    assert (await replicas[0].get_run(run_id)).stranded_at is not None

    # The version comes back: the flag is cleared, so a later stranding would be said again.
    back = engine(deploy_v1(), lease_seconds=0.6)
    await back.open()

    async def unflagged() -> bool:
        return (await back.get_run(run_id)).stranded_at is None

    await until(unflagged, what="the stranded flag being cleared")
    assert len(await stranded_events()) == 1


async def test_a_stranded_run_can_be_canceled(engine: EngineFactory) -> None:
    run_id = await suspended_v1_run(engine)
    e = engine(deploy_v2())
    result = await e.cancel(run_id, by="ops")
    assert result.status == "canceled"
    assert await e.list_runs(status="stranded") == []
    with pytest.raises(RunFinished):
        await e.cancel(run_id)


async def test_an_event_for_a_stranded_run_is_refused_without_being_buffered(engine: EngineFactory) -> None:
    @step(id="first")
    async def first(ctx: StepContext[Any]) -> None:
        return None

    waiting = engine(Workflow(id="pinger", version="1").then(first).wait_for_event("ping").commit())
    run_id = (await (await waiting.start("pinger", {})).result(timeout=15)).run_id
    await waiting.close()
    @step(id="second")
    async def second(ctx: StepContext[Any]) -> None:
        return None

    e = engine(Workflow(id="pinger", version="2").then(first).then(second).wait_for_event("ping").commit())
    with pytest.raises(VersionNotRegistered, match="version 1"):
        await e.send_event(run_id, "ping", {})
    assert (await e.store.load_progress(run_id)).signals == []


async def test_an_approval_of_a_stranded_run_is_not_expired_by_a_process_without_its_version(
    engine: EngineFactory,
) -> None:
    @step(id="approve")
    async def approve(ctx: StepContext[Any]) -> Any:
        return await ctx.suspend({}, ttl=0.3)

    old = engine(Workflow(id="expiring", version="1").then(approve).commit())
    run_id = (await (await old.start("expiring", {})).result(timeout=15)).run_id
    await old.close()

    @step(id="approve2")
    async def approve2(ctx: StepContext[Any]) -> Any:
        return await ctx.suspend({}, ttl=0.3)

    e = engine(Workflow(id="expiring", version="2").then(approve2).commit())
    await e.open()
    await asyncio.sleep(1.0)  # well past the TTL, several dispatcher rounds
    [susp] = await e.store.suspensions_of(run_id)
    assert susp.status == "open"
    e.register(Workflow(id="expiring", version="1").then(approve).commit())
    await until(lambda: _status_is(e, run_id, "success"), what="expiry once v1 is back")


async def test_a_canceled_run_with_an_expired_approval_leaves_the_dispatcher_idle(engine: EngineFactory) -> None:
    @step(id="approve")
    async def approve(ctx: StepContext[Any]) -> Any:
        return await ctx.suspend({}, ttl=0.2)

    e = engine(Workflow(id="short-lived").then(approve).commit())
    run_id = (await (await e.start("short-lived", {})).result(timeout=15)).run_id
    await e.cancel(run_id)
    await asyncio.sleep(0.5)  # the approval's TTL passes; nobody will ever expire it
    cpu = time.process_time()
    await asyncio.sleep(1.5)
    assert time.process_time() - cpu < 0.5, "the dispatcher kept waking for an expiry it will never act on"


async def test_a_run_from_before_versions_whose_structure_changed_settles_suspended_not_running(
    engine: EngineFactory,
) -> None:
    run_id = await suspended_v1_run(engine)

    async def forget_version(conn: Any) -> None:
        await conn.execute(update(runs).where(runs.c.id == run_id).values(workflow_fingerprint=None, workflow_version=None))

    e = engine(deploy_v2())
    await e.open()
    await e.db.write(forget_version)
    # Such a run carries no fingerprint, so v2 continues it (as before versions existed). The decision for
    # ``gate`` can no longer be reached; the run must settle at ``gate2`` as suspended, not go round forever.
    await e.resume(run_id, data=APPROVE)
    await until(lambda: _status_is(e, run_id, "suspended"), what="the run settling")
    await asyncio.sleep(0.5)
    run = await e.get_run(run_id)
    assert run.status == "suspended" and run.owner is None
    assert [s.path for s in await e.store.open_suspensions(run_id)] == ["gate2"]
    assert await e.list_runs(status="stranded") == []


def test_the_newest_version_is_the_highest_explicit_version_else_the_last_registered() -> None:
    def flow(version: str | None, step_id: str) -> Any:
        @step(id=step_id)
        async def s(ctx: StepContext[Any]) -> None:
            return None

        return Workflow(id="w", version=version).then(s).commit()

    e = Engine("sqlite+aiosqlite:///:memory:", execute=False)
    e.register(flow("10", "a"), flow("9", "b"), flow("2.1", "c"))
    assert e.get_workflow("w").version == "10"
    assert [v.version for v in e.versions("w")] == ["10", "9", "2.1"]

    e = Engine("sqlite+aiosqlite:///:memory:", execute=False)
    e.register(flow(None, "a"), flow("5", "b"), flow(None, "c"))
    assert e.get_workflow("w").root.children[0].id == "c"  # not all explicit: registration order

    with pytest.raises(DefinitionError, match="version '9' is registered twice with different steps"):
        e.register(flow("9", "x"), flow("9", "y"))
    with pytest.raises(WorkflowNotFound):
        e.get_workflow("nope")


def test_the_fingerprint_follows_structure_and_schemas_not_code_or_prose() -> None:
    class In(BaseModel):
        name: str

    class InDocumented(BaseModel):
        """Other prose."""

        name: str = Field(description="who")

    class InTyped(BaseModel):
        name: int

    def flow(model: type[BaseModel], step_id: str = "s", *, code: int = 0, version: str | None = None) -> Any:
        @step(id=step_id, input=model)
        async def s(ctx: StepContext[Any]) -> int:
            return code

        return Workflow(id="f", input=model, version=version).then(s).commit()

    base = flow(In).fingerprint
    assert flow(In, code=1).fingerprint == base
    assert flow(InDocumented).fingerprint == base
    assert flow(InTyped).fingerprint != base
    assert flow(In, "renamed").fingerprint != base
    assert flow(In, version="2").fingerprint != base
    inner_a, inner_b = flow(In), flow(In, "renamed")
    assert (Workflow(id="outer", input=In).then(inner_a).commit().fingerprint
            != Workflow(id="outer", input=In).then(inner_b).commit().fingerprint)


async def test_an_engine_closes_although_a_registration_woke_its_version_announcer_at_that_moment(
    engine: EngineFactory,
) -> None:
    # register() wakes the announcer, close() cancels it in the same turn of the loop: with asyncio.wait_for
    # (Python 3.11) the announcer swallowed the cancel and went on, and close() waited for it forever.
    e = engine(deploy_v1())
    await e.open()
    await asyncio.sleep(0.1)  # the announcer has announced and waits for the next heartbeat
    e.register(deploy_v2())
    closing = asyncio.ensure_future(e.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:
        for task in asyncio.all_tasks():  # a second cancel reaches it: leave nothing running behind the failure
            if task.get_name() == "threadflow-versions":
                task.cancel()
        await asyncio.wait({closing}, timeout=5)
    assert done, "close() waited for a version announcer that had swallowed its cancel"


# -- moving a run onto a version that reshaped its tree ---------------------------------------------------


class Decision(BaseModel):
    approved: bool


@step(id="prepare")
async def prepare(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"prepared": True}


@step(id="gate", resume=Decision)
async def gate(ctx: StepContext[Any]) -> dict[str, Any]:
    decision = await ctx.suspend({"question": "ship it?"})
    return {"approved": decision.approved}


@step(id="finish")
async def finish(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"done": True}


async def test_a_stranded_run_moves_from_its_step_now_nested_in_a_workflow(engine: EngineFactory) -> None:
    old = engine(Workflow(id="release", version="1").then(prepare).then(gate).then(finish).commit())
    waiting = await (await old.start("release", {})).result(timeout=15)
    assert [s.path for s in waiting.suspended] == ["gate"]
    await old.close()
    # Version 2 moves the approval into a nested ``review`` workflow (the step keeps its id).
    review = Workflow(id="review").then(gate).commit()
    e = engine(Workflow(id="release", version="2").then(prepare).then(review).then(finish).commit())
    assert [r.id for r in await e.list_runs(status="stranded")] == [waiting.run_id]

    # The stranded note says: move it with `threadflow rerun RUN --from STEP`; the run waits at `gate`.
    moved = await (await e.rerun(waiting.run_id, "gate", started_by="ops")).result(timeout=15)
    assert moved.status == "suspended" and [s.path for s in moved.suspended] == ["review/gate"]
    assert {s.path: s.output for s in (await e.details(moved.run_id)).steps} == {"prepare": {"prepared": True}}


@step(id="build_small")
async def build_small(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"built": "small"}


@step(id="build")
async def build(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"built": "everything"}


def always(_: Any) -> bool:
    return True


async def test_moving_a_run_onto_a_version_whose_branch_changed_says_to_rerun_from_the_branch(
    engine: EngineFactory,
) -> None:
    old = engine(Workflow(id="ship", version="1").branch([(always, build_small)]).then(gate).commit())
    waiting = await (await old.start("ship", {})).result(timeout=15)
    assert [s.path for s in waiting.suspended] == ["gate"]
    await old.close()
    # Version 2 renames the branch's step (same condition, same place). The kept choice names `build_small`:
    # taken as it is, the moved run would run no branch at all.
    e = engine(Workflow(id="ship", version="2").branch([(always, build)]).then(gate).commit())
    with pytest.raises(UsageError, match=r"cannot keep the branch it took at 'branch-1'.*'build_small'.*"
                                         r"Re-run from 'build' \(the branch's first step\)"):
        await e.rerun(waiting.run_id, "gate", started_by="ops")
    assert (await e.get_run(waiting.run_id)).status == "suspended"  # nothing moved

    moved = await (await e.rerun(waiting.run_id, "build", started_by="ops")).result(timeout=15)
    assert moved.status == "suspended" and [s.path for s in moved.suspended] == ["gate"]
    assert await step_paths(e, moved.run_id) == ["build"]  # the branch chosen again, on version 2
    assert (await e.get_run(waiting.run_id)).status == "canceled"


# -- a class rename is not a new version ------------------------------------------------------------------


class Item(BaseModel):  # before a refactor
    sku: str
    qty: int = 1


class OrderBefore(BaseModel):
    items: list[Item]


class LineItem(BaseModel):  # after it: the same fields, types and defaults under a clearer name
    sku: str
    qty: int = 1


class OrderAfter(BaseModel):
    items: list[LineItem]


def order_flow(order: type[BaseModel]) -> Any:
    @step(id="gate", input=order, output=order, resume=Decision)
    async def order_gate(ctx: StepContext[Any]) -> Any:
        await ctx.suspend({"question": "place the order?"})
        return ctx.input

    return Workflow(id="order", version="1", input=order).then(order_gate).commit()


async def test_a_run_waiting_across_a_deploy_that_only_renamed_a_nested_model_class_continues(
    engine: EngineFactory,
) -> None:
    class ItemRepriced(BaseModel):  # a nested default changed: that is a new shape
        sku: str
        qty: int = 2

    class OrderRepriced(BaseModel):
        items: list[ItemRepriced]

    assert order_flow(OrderBefore).fingerprint == order_flow(OrderAfter).fingerprint
    assert order_flow(OrderBefore).fingerprint != order_flow(OrderRepriced).fingerprint
    old = engine(order_flow(OrderBefore))
    waiting = await (await old.start("order", {"items": [{"sku": "A-1"}]})).result(timeout=15)
    assert waiting.status == "suspended"
    await old.close()

    e = engine(order_flow(OrderAfter))
    assert await e.list_runs(status="stranded") == []
    done = await (await e.resume(waiting.run_id, data=APPROVE)).result(timeout=15)
    assert done.status == "success"


async def test_a_run_recorded_when_nested_model_class_names_counted_continues_after_the_upgrade(
    engine: EngineFactory,
) -> None:
    wf = order_flow(OrderBefore)
    old = engine(wf)
    waiting = await (await old.start("order", {"items": [{"sku": "A-1"}]})).result(timeout=15)
    await old.close()

    async def as_recorded_before(conn: Any) -> None:  # what threadflow recorded before the upgrade
        await conn.execute(update(runs).where(runs.c.id == waiting.run_id)
                           .values(workflow_fingerprint=legacy_fingerprint(wf)))

    e = engine(order_flow(OrderBefore))
    await e.open()
    await e.db.write(as_recorded_before)
    assert legacy_fingerprint(wf) != wf.fingerprint  # (nested models: the class name was part of it)
    assert await e.list_runs(status="stranded") == []

    async def announced() -> bool:  # so other processes (and the CLI) see the old run's version served too
        return legacy_fingerprint(wf) in {v.fingerprint for v in await e.replica.store.live("order")}

    await eventually(announced)
    done = await (await e.resume(waiting.run_id, data=APPROVE)).result(timeout=15)
    assert done.status == "success"
