"""Re-run from a step: a new run reuses the results recorded before that step and executes the rest."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import BaseModel

from workflows import InvalidInput, StepContext, UsageError, Workflow, step


class Num(BaseModel):
    n: int


def counted(step_id: str, calls: Counter, fn=lambda n: n + 1):
    @step(id=step_id, input=Num, output=Num)
    async def body(ctx: StepContext[Num]) -> Num:
        calls[step_id] += 1
        return Num(n=fn(ctx.input.n))

    return body


def pipeline(calls: Counter):
    return (
        Workflow(id="pipeline", input=Num, output=Num)
        .then(counted("fetch", calls, lambda n: n + 1))
        .then(counted("transform", calls, lambda n: n * 10))
        .then(counted("publish", calls, lambda n: n + 5))
        .commit()
    )


async def test_rerun_reuses_results_before_the_step_and_executes_from_it(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 1})).result(timeout=5)
    assert original.output == {"n": 25}

    handle = await e.rerun(original.run_id, from_step="transform", started_by="U1")
    rerun = await handle.result(timeout=5)

    assert handle.run_id != original.run_id
    assert rerun.status == "success" and rerun.output == {"n": 25}
    assert calls == Counter({"fetch": 1, "transform": 2, "publish": 2})
    run = await e.get_run(handle.run_id)
    assert (run.rerun_of, run.rerun_from, run.started_by) == (original.run_id, "transform", "U1")
    assert run.input == {"n": 1}
    assert sorted(s.path for s in (await e.details(handle.run_id)).steps) == ["fetch", "publish", "transform"]
    # Only the re-executed steps produce events in the new run.
    started = [ev.path for ev in (await e.details(handle.run_id)).events if ev.type == "step.started"]
    assert started == ["transform", "publish"]


async def test_rerun_with_new_input_for_the_step(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 1})).result(timeout=5)

    rerun = await (await e.rerun(original.run_id, from_step="transform", input={"n": 7})).result(timeout=5)

    assert rerun.output == {"n": 75}
    assert calls == Counter({"fetch": 1, "transform": 2, "publish": 2})
    # The original run is untouched.
    assert (await e.get_run(original.run_id)).output == {"n": 25}


async def test_rerun_with_invalid_input_names_the_field_and_starts_nothing(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 1})).result(timeout=5)

    with pytest.raises(InvalidInput) as err:
        await e.rerun(original.run_id, from_step="transform", input={"n": "seven"})

    assert "input of step 'transform'" in str(err.value) and "'n'" in str(err.value)
    assert [r.id for r in await e.list_runs()] == [original.run_id]


async def test_rerun_from_the_last_step_reuses_everything_before_it(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 2})).result(timeout=5)

    rerun = await (await e.rerun(original.run_id, from_step="publish")).result(timeout=5)

    assert rerun.output == original.output == {"n": 35}
    assert calls == Counter({"fetch": 1, "transform": 1, "publish": 2})


async def test_rerun_from_the_first_step_executes_everything(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 2})).result(timeout=5)

    rerun = await (await e.rerun(original.run_id, from_step="fetch", input={"n": 0})).result(timeout=5)

    assert rerun.output == {"n": 15}
    assert calls == Counter({"fetch": 2, "transform": 2, "publish": 2})


async def test_rerun_of_a_failed_run_after_fixing_the_cause(engine):
    calls = Counter()
    broken = {"yes": True}

    @step(id="flaky", input=Num, output=Num)
    async def flaky(ctx: StepContext[Num]) -> Num:
        calls["flaky"] += 1
        if broken["yes"]:
            raise RuntimeError("upstream is down")
        return Num(n=ctx.input.n * 3)

    wf = Workflow(id="fixable", input=Num, output=Num).then(counted("prepare", calls)).then(flaky).commit()
    e = engine(wf)
    failed = await (await e.start("fixable", {"n": 1})).result(timeout=5)
    assert failed.status == "failed" and failed.error_path == "flaky"

    broken["yes"] = False
    rerun = await (await e.rerun(failed.run_id, from_step="flaky")).result(timeout=5)

    assert rerun.status == "success" and rerun.output == {"n": 6}
    assert calls == Counter({"prepare": 1, "flaky": 2})
    assert (await e.get_run(failed.run_id)).status == "failed"


async def test_rerun_after_a_parallel_reuses_every_branch(engine):
    calls = Counter()

    class Both(BaseModel):
        left: Num
        right: Num

    @step(id="join", input=Both, output=Num)
    async def join(ctx: StepContext[Both]) -> Num:
        calls["join"] += 1
        return Num(n=ctx.input.left.n + ctx.input.right.n)

    wf = (
        Workflow(id="fan", input=Num, output=Num)
        .parallel([counted("left", calls, lambda n: n + 1), counted("right", calls, lambda n: n + 2)])
        .then(join)
        .commit()
    )
    e = engine(wf)
    original = await (await e.start("fan", {"n": 1})).result(timeout=5)

    rerun = await (await e.rerun(original.run_id, from_step="join")).result(timeout=5)

    assert rerun.output == original.output == {"n": 5}
    assert calls == Counter({"left": 1, "right": 1, "join": 2})


async def test_rerun_from_a_loop_step_replays_the_whole_loop(engine):
    calls = Counter()
    wf = (
        Workflow(id="looping", input=Num, output=Num)
        .then(counted("seed", calls))
        .dowhile(counted("grow", calls, lambda n: n * 2), lambda x: x.n < 20)
        .commit()
    )
    e = engine(wf)
    original = await (await e.start("looping", {"n": 1})).result(timeout=5)
    assert original.output == {"n": 32}  # seed: 2; grow: 4, 8, 16, 32

    rerun = await (await e.rerun(original.run_id, from_step="grow", input={"n": 5})).result(timeout=5)

    assert rerun.output == {"n": 20}  # 5 -> 10 -> 20
    assert calls == Counter({"seed": 1, "grow": 4 + 2})
    assert (await e.get_run(rerun.run_id)).rerun_from == "grow#0"


async def test_rerun_from_a_step_it_never_ran_is_refused(engine):
    calls = Counter()
    e = engine(pipeline(calls))
    original = await (await e.start("pipeline", {"n": 1})).result(timeout=5)

    with pytest.raises(UsageError, match="no step 'nope' to re-run from. Steps it ran: fetch, publish, transform"):
        await e.rerun(original.run_id, from_step="nope")


async def test_rerun_after_a_branch_keeps_the_branch_the_original_run_took(engine):
    # The conditions may ask the outside world; it changed since the original run. The re-run reuses the branch's
    # decision like every result before the re-run point: it runs neither the other branch (a step the original run
    # never ran) nor gives the step re-run other input than the original run gave it.
    calls = Counter()
    world = {"big": True}

    class Picked(BaseModel):
        big: Num | None = None
        small: Num | None = None

    @step(id="report", input=Picked, output=Num)
    async def report(ctx: StepContext[Picked]) -> Num:
        calls["report"] += 1
        chosen = ctx.input.big or ctx.input.small
        return Num(n=chosen.n)

    wf = (
        Workflow(id="routed", input=Num, output=Num)
        .then(counted("prepare", calls))
        .branch([
            (lambda x: world["big"], counted("big", calls, lambda n: n * 100)),
            (lambda x: not world["big"], counted("small", calls, lambda n: n - 1)),
        ])
        .then(report)
        .commit()
    )
    e = engine(wf)
    original = await (await e.start("routed", {"n": 1})).result(timeout=5)
    assert original.output == {"n": 200}

    world["big"] = False
    rerun = await (await e.rerun(original.run_id, from_step="report")).result(timeout=5)

    assert rerun.status == "success" and rerun.output == {"n": 200}
    assert calls == Counter({"prepare": 1, "big": 1, "report": 2})


async def test_rerun_after_a_foreach_keeps_the_items_the_original_run_picked(engine):
    calls = Counter()
    inventory = [1, 2]

    class Sum(BaseModel):
        total: int

    @step(id="total", output=Sum)
    async def total(ctx: StepContext[list]) -> Sum:
        calls["total"] += 1
        return Sum(total=sum(item["n"] for item in ctx.input))

    wf = (
        Workflow(id="inventory")
        .foreach(counted("deploy", calls), items=lambda _: [{"n": n} for n in inventory])
        .then(total)
        .commit()
    )
    e = engine(wf)
    original = await (await e.start("inventory")).result(timeout=5)
    assert original.output == {"total": 5}

    inventory.append(3)  # the inventory changed since
    rerun = await (await e.rerun(original.run_id, from_step="total")).result(timeout=5)

    assert rerun.status == "success" and rerun.output == {"total": 5}
    assert calls == Counter({"deploy": 2, "total": 2})
