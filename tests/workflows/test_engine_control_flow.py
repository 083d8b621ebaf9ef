"""Every control-flow construct of the builder, run end to end: then, parallel, branch, loops, foreach,
map and nested workflows, with the paths their step instances are recorded under."""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class Num(BaseModel):
    n: int


class Text(BaseModel):
    text: str


class Numbers(BaseModel):
    values: list[int]


class Hosts(BaseModel):
    hosts: list[str]


class Pair(BaseModel):
    double: Num
    square: Num


@step(id="double", input=Num, output=Num)
async def double(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n * 2)


@step(id="square", input=Num, output=Num)
async def square(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n ** 2)


@step(id="inc", input=Num, output=Num)
async def inc(ctx: StepContext[Num]) -> Num:
    return Num(n=ctx.input.n + 1)


@step(id="describe", input=Num, output=Text)
async def describe(ctx: StepContext[Num]) -> Text:
    return Text(text=f"n={ctx.input.n}")


async def run(e, workflow_id, data):
    return await (await e.start(workflow_id, data)).result(timeout=10)


async def paths(e, run_id):
    return sorted(s.path for s in (await e.details(run_id)).steps)


# -- then ---------------------------------------------------------------------------------------------


async def test_then_chains_steps_in_order(engine):
    wf = Workflow(id="chain", input=Num, output=Text).then(double).then(inc).then(describe).commit()
    e = engine(wf)

    result = await run(e, "chain", {"n": 5})

    assert result.output == {"text": "n=11"}
    assert await paths(e, result.run_id) == ["describe", "double", "inc"]


# -- parallel -----------------------------------------------------------------------------------------


async def test_parallel_runs_steps_concurrently_and_keys_their_outputs_by_step_id(engine):
    started = {"left": asyncio.Event(), "right": asyncio.Event()}

    def meeting_step(me: str, other: str):
        @step(id=me, input=Num, output=Num)
        async def body(ctx: StepContext[Num]) -> Num:
            started[me].set()
            # Only returns if the other branch started too: the branches really overlap.
            await asyncio.wait_for(started[other].wait(), 5)
            return Num(n=ctx.input.n + (1 if me == "left" else 2))

        return body

    wf = (
        Workflow(id="together", input=Num)
        .parallel([meeting_step("left", "right"), meeting_step("right", "left")])
        .commit()
    )
    e = engine(wf)

    result = await run(e, "together", {"n": 10})

    assert result.status == "success"
    assert result.output == {"left": {"n": 11}, "right": {"n": 12}}
    assert await paths(e, result.run_id) == ["left", "right"]


async def test_the_step_after_parallel_receives_the_keyed_outputs(engine):
    @step(id="sum", input=Pair, output=Num)
    async def add(ctx: StepContext[Pair]) -> Num:
        return Num(n=ctx.input.double.n + ctx.input.square.n)

    wf = Workflow(id="fan-in", input=Num, output=Num).parallel([double, square]).then(add).commit()
    e = engine(wf)

    result = await run(e, "fan-in", {"n": 3})

    assert result.output == {"n": 6 + 9}


async def test_a_failing_parallel_branch_fails_the_run_but_keeps_the_other_branchs_result(engine):
    @step(id="broken", input=Num, output=Num)
    async def broken(ctx: StepContext[Num]) -> Num:
        raise RuntimeError("no luck")

    wf = Workflow(id="half-broken", input=Num).parallel([double, broken]).commit()
    e = engine(wf)

    result = await run(e, "half-broken", {"n": 3})

    assert result.status == "failed"
    assert result.error_type == "RuntimeError" and result.error_path == "broken"
    assert await paths(e, result.run_id) == ["double"]


# -- branch -------------------------------------------------------------------------------------------


async def test_branch_runs_every_step_whose_condition_holds(engine):
    calls = Counter()

    def tracked(s):
        @step(id=s.id, input=Num, output=Num)
        async def body(ctx: StepContext[Num]) -> Num:
            calls[s.id] += 1
            return await s.fn(ctx)

        return body

    async def is_even(x: Num) -> bool:  # conditions may be async, and see the typed model
        assert isinstance(x, Num)
        return x.n % 2 == 0

    wf = (
        Workflow(id="choose", input=Num)
        .branch([(lambda x: x.n > 100, tracked(double)), (is_even, tracked(square)), (lambda x: True, tracked(inc))])
        .commit()
    )
    e = engine(wf)

    result = await run(e, "choose", {"n": 4})

    assert result.status == "success"
    assert result.output == {"square": {"n": 16}, "inc": {"n": 5}}
    assert calls == Counter({"square": 1, "inc": 1})
    assert await paths(e, result.run_id) == ["inc", "square"]


async def test_branch_with_no_true_condition_outputs_nothing_and_runs_nothing(engine):
    wf = Workflow(id="none-true", input=Num).branch([(lambda x: x.n < 0, double), (lambda x: False, square)]).commit()
    e = engine(wf)

    result = await run(e, "none-true", {"n": 4})

    assert result.status == "success"
    assert result.output == {}
    assert await paths(e, result.run_id) == []


async def test_the_step_after_a_branch_gets_the_chosen_outputs(engine):
    class Chosen(BaseModel):
        double: Num | None = None
        square: Num | None = None

    @step(id="pick", input=Chosen, output=Text)
    async def pick(ctx: StepContext[Chosen]) -> Text:
        chosen = ctx.input.double or ctx.input.square
        return Text(text=f"{'double' if ctx.input.double else 'square'}:{chosen.n}")

    wf = (
        Workflow(id="branch-then", input=Num, output=Text)
        .branch([(lambda x: x.n >= 10, double), (lambda x: x.n < 10, square)])
        .then(pick)
        .commit()
    )
    e = engine(wf)

    assert (await run(e, "branch-then", {"n": 12})).output == {"text": "double:24"}
    assert (await run(e, "branch-then", {"n": 3})).output == {"text": "square:9"}


# -- loops --------------------------------------------------------------------------------------------


async def test_dowhile_repeats_while_the_condition_holds_and_records_each_iteration(engine):
    wf = Workflow(id="count-up", input=Num, output=Num).dowhile(inc, lambda x: x.n < 3).commit()
    e = engine(wf)

    result = await run(e, "count-up", {"n": 0})

    assert result.output == {"n": 3}
    details = await e.details(result.run_id)
    assert [(s.path, s.output) for s in details.steps] == [("inc#0", {"n": 1}), ("inc#1", {"n": 2}), ("inc#2", {"n": 3})]
    assert {s.step_id for s in details.steps} == {"inc"}


async def test_dowhile_runs_the_body_at_least_once(engine):
    wf = Workflow(id="once", input=Num, output=Num).dowhile(inc, lambda x: False).commit()
    e = engine(wf)

    result = await run(e, "once", {"n": 41})

    assert result.output == {"n": 42}
    assert await paths(e, result.run_id) == ["inc#0"]


async def test_dountil_repeats_until_the_async_condition_holds(engine):
    async def big_enough(x: Num) -> bool:
        return x.n >= 16

    wf = Workflow(id="grow", input=Num, output=Num).dountil(double, big_enough).then(inc).commit()
    e = engine(wf)

    result = await run(e, "grow", {"n": 1})

    assert result.output == {"n": 17}
    assert await paths(e, result.run_id) == ["double#0", "double#1", "double#2", "double#3", "inc"]


async def test_a_loop_past_its_iteration_cap_fails_the_run(engine):
    wf = Workflow(id="forever", input=Num).dowhile(inc, lambda x: True, max_iterations=4).commit()
    e = engine(wf)

    result = await run(e, "forever", {"n": 0})

    assert result.status == "failed"
    assert result.error_type == "LoopLimitExceeded"
    assert "'inc'" in result.error and "4 times" in result.error and "max_iterations" in result.error
    assert await paths(e, result.run_id) == ["inc#0", "inc#1", "inc#2", "inc#3"]


# -- foreach ------------------------------------------------------------------------------------------


async def test_foreach_runs_the_step_per_item_and_keeps_their_order(engine):
    wf = (
        Workflow(id="each", input=Numbers)
        .map(lambda x: [{"n": v} for v in x.values])
        .foreach(square)
        .commit()
    )
    e = engine(wf)

    result = await run(e, "each", {"values": [3, 1, 2]})

    assert result.output == [{"n": 9}, {"n": 1}, {"n": 4}]
    details = await e.details(result.run_id)
    assert {s.path: s.output for s in details.steps} == {
        "square[0]": {"n": 9}, "square[1]": {"n": 1}, "square[2]": {"n": 4},
    }


async def test_foreach_takes_the_one_list_field_of_a_model_or_an_items_function(engine):
    class Items(BaseModel):
        items: list[Num]

    @step(id="make-items", input=Num, output=Items)
    async def make_items(ctx: StepContext[Num]) -> Items:
        return Items(items=[Num(n=i) for i in range(ctx.input.n)])

    implicit = Workflow(id="implicit-list", input=Num).then(make_items).foreach(inc).commit()
    explicit = (
        Workflow(id="explicit-list", input=Numbers)
        .foreach(double, items=lambda x: [{"n": v} for v in x.values])
        .commit()
    )
    e = engine(implicit, explicit)

    assert (await run(e, "implicit-list", {"n": 3})).output == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert (await run(e, "explicit-list", {"values": [5, 6]})).output == [{"n": 10}, {"n": 12}]


async def test_foreach_of_an_empty_list_outputs_an_empty_list(engine):
    wf = Workflow(id="nothing-to-do", input=Numbers).foreach(inc, items=lambda x: x.values).commit()
    e = engine(wf)

    result = await run(e, "nothing-to-do", {"values": []})

    assert result.status == "success" and result.output == []


async def test_foreach_never_runs_more_items_at_once_than_its_concurrency(engine):
    running = 0
    peak = 0

    @step(id="slow", input=Num, output=Num)
    async def slow(ctx: StepContext[Num]) -> Num:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return ctx.input

    wf = Workflow(id="throttled", input=Numbers).foreach(slow, concurrency=3, items=lambda x: [{"n": v} for v in x.values]).commit()
    e = engine(wf)

    result = await run(e, "throttled", {"values": list(range(10))})

    assert result.output == [{"n": v} for v in range(10)]
    assert peak == 3


async def test_a_sequential_foreach_starts_no_item_after_one_failed(engine):
    # Host after host: once host b failed, so has the run; hosts c, d and e are not deployed.
    deployed: list[str] = []

    @step(id="deploy")
    async def deploy(ctx: StepContext[None]) -> dict:
        deployed.append(ctx.input)
        if ctx.input == "b":
            raise RuntimeError("b is down")
        return {"host": ctx.input}

    wf = Workflow(id="rollout", input=Hosts).foreach(deploy, concurrency=1).commit()
    e = engine(wf)

    result = await run(e, "rollout", {"hosts": ["a", "b", "c", "d", "e"]})

    assert result.status == "failed" and result.error_path == "deploy[1]"
    assert deployed == ["a", "b"]


async def test_items_a_run_cannot_record_fail_it_naming_the_foreach(engine):
    # The list ``items=`` picks is recorded (a resume deploys the items approved), so it must be JSON data.
    wf = Workflow(id="sockets").foreach(inc, items=lambda _: [object()]).commit()
    e = engine(wf)

    result = await run(e, "sockets", None)

    assert result.status == "failed" and result.error_type == "InvalidInput"
    assert "items of foreach 'inc'" in result.error and "JSON data" in result.error


async def test_foreach_over_something_that_is_not_a_list_fails_with_a_hint(engine):
    wf = Workflow(id="not-a-list", input=Num).foreach(inc).commit()
    e = engine(wf)

    result = await run(e, "not-a-list", {"n": 1})

    assert result.status == "failed"
    assert result.error_type == "InvalidInput"
    assert "foreach 'inc'" in result.error and "list" in result.error


# -- map ----------------------------------------------------------------------------------------------


async def test_map_reshapes_data_between_steps(engine):
    wf = (
        Workflow(id="reshape", input=Text, output=Num)
        .map(lambda t: {"n": len(t.text)}, output=Num)
        .then(double)
        .commit()
    )
    e = engine(wf)

    assert (await run(e, "reshape", {"text": "four"})).output == {"n": 8}


async def test_map_may_be_async_and_read_earlier_outputs_and_the_workflow_input(engine):
    async def combine(value, ctx):
        return {"n": value.n + ctx.step_output("double")["n"] + ctx.workflow_input["n"]}

    wf = Workflow(id="combine", input=Num, output=Num).then(double).then(inc).map(combine, output=Num).commit()
    e = engine(wf)

    # double: 10, inc: 11, map: 11 + 10 + 5
    assert (await run(e, "combine", {"n": 5})).output == {"n": 26}


async def test_map_output_that_does_not_fit_its_model_fails_the_run(engine):
    wf = Workflow(id="bad-map-out", input=Num).map(lambda x: {"n": "many"}, output=Num, id="to-num").commit()
    e = engine(wf)

    result = await run(e, "bad-map-out", {"n": 1})

    assert result.status == "failed"
    assert result.error_type == "OutputInvalid" and "'to-num'" in result.error


# -- nested workflows ---------------------------------------------------------------------------------


inner = Workflow(id="inner", input=Num, output=Num).then(double).then(inc).commit()


async def test_a_committed_workflow_runs_as_a_step_under_its_own_path(engine):
    outer = Workflow(id="outer", input=Num, output=Text).then(inner).then(describe).commit()
    e = engine(outer)

    result = await run(e, "outer", {"n": 4})

    assert result.output == {"text": "n=9"}
    assert await paths(e, result.run_id) == ["describe", "inner/double", "inner/inc"]


async def test_nested_workflows_inside_foreach_and_loops_get_indexed_paths(engine):
    each = Workflow(id="each-inner", input=Numbers).foreach(inner, items=lambda x: [{"n": v} for v in x.values]).commit()
    looped = Workflow(id="loop-inner", input=Num, output=Num).dountil(inner, lambda x: x.n > 10).commit()
    e = engine(each, looped)

    a = await run(e, "each-inner", {"values": [1, 2]})
    b = await run(e, "loop-inner", {"n": 1})

    assert a.output == [{"n": 3}, {"n": 5}]
    assert await paths(e, a.run_id) == ["inner[0]/double", "inner[0]/inc", "inner[1]/double", "inner[1]/inc"]
    assert b.output == {"n": 15}  # 1 -> 3 -> 7 -> 15
    assert await paths(e, b.run_id) == [
        "inner#0/double", "inner#0/inc", "inner#1/double", "inner#1/inc", "inner#2/double", "inner#2/inc",
    ]


async def test_step_output_inside_a_loop_reads_the_last_iteration_before_it(engine) -> None:
    """"Refine with the last critique": a loop's body reads what its previous iteration's step gave (its own
    iteration has none yet), not nothing."""
    class Draft(BaseModel):
        n: int

    critiques: list[object] = []

    @step(id="draft", input=Draft, output=Draft)
    async def draft(ctx: StepContext[Draft]) -> Draft:
        critiques.append(ctx.step_output("critique"))
        return Draft(n=ctx.input.n + 1)

    @step(id="critique", input=Draft, output=Draft)
    async def critique(ctx: StepContext[Draft]) -> Draft:
        return Draft(n=ctx.input.n * 10)

    body = Workflow(id="refine", input=Draft, output=Draft).then(draft).then(critique).commit()
    e = engine(Workflow(id="refining", input=Draft, output=Draft).dountil(body, lambda d: d.n > 100).commit())
    result = await (await e.start("refining", {"n": 1})).result(timeout=10)

    assert (result.status, result.output) == ("success", {"n": 210})
    assert critiques == [None, {"n": 20}]


async def test_step_output_inside_a_foreach_item_reads_that_items_step(engine):
    # Each item looks its host up, waits for a person's approval, then deploys the host it looked up. Approving
    # item 0 deploys item 0's host, not the host of the item whose lookup finished last.
    deployed: list[str] = []

    @step(id="lookup")
    async def lookup(ctx: StepContext[None]) -> dict:
        return {"host": ctx.input}

    @step(id="approve", resume=Decision)
    async def approve(ctx: StepContext[None]) -> dict:
        decision = await ctx.suspend({"host": ctx.input["host"]})
        return {"approved": decision.approved}

    @step(id="deploy")
    async def deploy(ctx: StepContext[None]) -> dict:
        host = ctx.step_output("lookup")["host"]
        deployed.append(host)
        return {"deployed": host}

    item = Workflow(id="one-host").then(lookup).then(approve).then(deploy).commit()
    wf = Workflow(id="rollout", input=Hosts).foreach(item, concurrency=1).commit()
    e = engine(wf)
    handle = await e.start("rollout", {"hosts": ["a", "b", "c"]})
    first = await handle.result(timeout=5)
    assert sorted(s.path for s in first.suspended) == [
        "one-host[0]/approve", "one-host[1]/approve", "one-host[2]/approve",
    ]

    await e.resume(handle.run_id, step="one-host[0]/approve", data={"approved": True})
    after = await e.handle(handle.run_id).result(timeout=5)

    assert after.status == "suspended"
    assert deployed == ["a"]


async def test_a_map_inside_a_foreach_item_reads_that_items_steps_then_the_ones_around_it(engine):
    @step(id="plan")
    async def plan(ctx: StepContext[None]) -> dict:
        return {"version": "v2", "hosts": ctx.input["hosts"]}

    @step(id="lookup")
    async def lookup(ctx: StepContext[None]) -> dict:
        return {"host": ctx.input}

    arrived = 0
    every_lookup_done = asyncio.Event()

    async def target(value, ctx):
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            every_lookup_done.set()
        await every_lookup_done.wait()  # each item reads with the other items' lookups recorded too
        return {"host": ctx.step_output("lookup")["host"], "version": ctx.step_output("plan")["version"]}

    item = Workflow(id="one-host").then(lookup).map(target, id="target").commit()
    wf = Workflow(id="planned", input=Hosts).then(plan).foreach(item, concurrency=3).commit()
    e = engine(wf)

    result = await run(e, "planned", {"hosts": ["a", "b", "c"]})

    assert result.output == [{"host": h, "version": "v2"} for h in ["a", "b", "c"]]


async def test_nested_workflow_input_is_validated_with_its_own_model(engine):
    outer = Workflow(id="outer-bad", input=Text).map(lambda t: {"n": t.text}).then(inner).commit()
    e = engine(outer)

    result = await run(e, "outer-bad", {"text": "not a number"})

    assert result.status == "failed"
    assert result.error_type == "InvalidInput"
    assert "workflow 'inner'" in result.error and "'n'" in result.error


async def test_parallel_of_a_step_and_a_nested_workflow(engine):
    wf = Workflow(id="mixed", input=Num).parallel([square, inner]).commit()
    e = engine(wf)

    result = await run(e, "mixed", {"n": 3})

    assert result.output == {"square": {"n": 9}, "inner": {"n": 7}}
    assert await paths(e, result.run_id) == ["inner/double", "inner/inc", "square"]


class Decision(BaseModel):
    approved: bool


async def test_a_branch_taken_before_a_suspension_is_the_branch_the_resume_continues(engine):
    # "conditions may be async": a condition may ask something outside (a flag, an API). The branch chosen is not
    # recorded; every walk (resume, wake-up, recovery) evaluates the conditions again. Here the person approves the
    # step of the chosen branch; meanwhile the flag changed, and the resumed run drops the approved step and runs the
    # other branch instead.
    flag = {"big": True}
    calls = Counter()

    async def is_big(x) -> bool:
        return flag["big"]

    async def is_small(x) -> bool:
        return not flag["big"]

    @step(id="big", input=Num, output=Num, resume=Decision)
    async def big(ctx: StepContext[Num]) -> Num:
        calls["big"] += 1
        decision = await ctx.suspend({"q": "big change, ok?"})
        return Num(n=ctx.input.n * (10 if decision.approved else 0))

    @step(id="small", input=Num, output=Num)
    async def small(ctx: StepContext[Num]) -> Num:
        calls["small"] += 1
        return Num(n=ctx.input.n + 1)

    wf = Workflow(id="sized", input=Num).branch([(is_big, big), (is_small, small)]).commit()
    e = engine(wf)
    first = await (await e.start("sized", {"n": 3})).result(timeout=5)
    assert [s.path for s in first.suspended] == ["big"]

    flag["big"] = False
    result = await (await e.resume(first.run_id, step="big", data={"approved": True}, by="U1")).result(timeout=5)

    assert result.status == "success"
    assert result.output == {"big": {"n": 30}}
    assert calls["small"] == 0


async def test_an_approval_in_a_foreach_applies_to_the_item_that_was_approved(engine):
    # ``items=`` may ask the outside world (a host inventory), like a branch's conditions. A person approves
    # deploying host "a"; meanwhile the inventory gained a host. The resumed run deploys "a", the item approved.
    inventory = ["a", "b"]
    deployed: list[str] = []

    @step(id="deploy", resume=Decision)
    async def deploy(ctx: StepContext[None]) -> dict:
        decision = await ctx.suspend({"host": ctx.input})
        if decision.approved:
            deployed.append(ctx.input)
        return {"host": ctx.input, "deployed": decision.approved}

    wf = Workflow(id="rollout").foreach(deploy, items=lambda _: list(inventory)).commit()
    e = engine(wf)
    handle = await e.start("rollout")
    first = await handle.result(timeout=5)
    assert {s.path: s.payload for s in first.suspended} == {"deploy[0]": {"host": "a"}, "deploy[1]": {"host": "b"}}

    inventory.insert(0, "new")
    await e.resume(handle.run_id, step="deploy[0]", data={"approved": True})
    await e.handle(handle.run_id).result(timeout=5)

    assert deployed == ["a"]
    assert await paths(e, handle.run_id) == ["deploy[0]"]  # the recorded list is no step of the run
