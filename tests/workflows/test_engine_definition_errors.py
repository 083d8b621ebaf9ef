"""Mistakes in building a workflow are caught when it is defined or committed, with a message that says
what to change; mistakes in naming things at run time are usage errors that change nothing."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from workflows import (
    DefinitionError,
    NotSuspended,
    RetryPolicy,
    StepContext,
    UsageError,
    Workflow,
    WorkflowNotFound,
    step,
)


class Num(BaseModel):
    n: int


class Word(BaseModel):
    word: str


class NumAsText(BaseModel):
    n: str


class Optional_(BaseModel):
    note: str = ""


@step(id="num", input=Num, output=Num)
async def num(ctx: StepContext[Num]) -> Num:
    return ctx.input


@step(id="word", input=Word, output=Word)
async def word(ctx: StepContext[Word]) -> Word:
    return ctx.input


@step(id="as-text", input=NumAsText, output=NumAsText)
async def as_text(ctx: StepContext[NumAsText]) -> NumAsText:
    return ctx.input


@step(id="to-word", input=Num, output=Word)
async def to_word(ctx: StepContext[Num]) -> Word:
    return Word(word=str(ctx.input.n))


@step(id="relaxed", input=Optional_, output=Optional_)
async def relaxed(ctx: StepContext[Optional_]) -> Optional_:
    return ctx.input


# -- duplicate ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: Workflow(id="w", input=Num).then(num).then(num), id="then-twice"),
        pytest.param(lambda: Workflow(id="w", input=Num).parallel([num, num]), id="in-parallel"),
        pytest.param(lambda: Workflow(id="w", input=Num).then(num).foreach(num, items=lambda x: []), id="foreach"),
        pytest.param(lambda: Workflow(id="w", input=Num).then(num).dowhile(num, lambda x: False), id="loop"),
        pytest.param(lambda: Workflow(id="w", input=Num).then(num).sleep(1, id="num"), id="sleep-id"),
        pytest.param(lambda: Workflow(id="w", input=Num).then(num).map(lambda x: x, id="num"), id="map-id"),
        pytest.param(
            lambda: Workflow(id="w", input=Num).then(num).then(Workflow(id="num", input=Num).then(to_word).commit()),
            id="nested-workflow-id",
        ),
    ],
)
def test_duplicate_ids_are_refused_at_commit_naming_the_id(build):
    with pytest.raises(DefinitionError, match="uses the id 'num' twice") as err:
        build().commit()

    assert "give one of the steps another id" in str(err.value)


def test_the_same_step_may_appear_in_different_nested_workflows_under_their_own_paths():
    a = Workflow(id="a", input=Num, output=Num).then(num).commit()
    b = Workflow(id="b", input=Num, output=Num).then(num).commit()

    wf = Workflow(id="both", input=Num).then(a).then(b).commit()

    assert [s.id for s in wf.steps()] == ["num", "num"]


# -- schemas between consecutive nodes ---------------------------------------------------------------


def test_a_step_that_needs_a_field_the_previous_step_does_not_give_is_refused():
    with pytest.raises(DefinitionError) as err:
        Workflow(id="w", input=Num).then(num).then(word).commit()

    message = str(err.value)
    assert "step 'word' needs field 'word'" in message
    assert "step 'num' does not provide" in message and "Num has: n" in message
    assert ".map(" in message


def test_a_field_of_a_different_type_is_refused():
    with pytest.raises(DefinitionError, match="field 'n' is int in step 'num' but step 'as-text' expects str"):
        Workflow(id="w", input=Num).then(num).then(as_text).commit()


def test_the_first_step_is_checked_against_the_workflow_input():
    with pytest.raises(DefinitionError, match="step 'word' needs field 'word', which the input of workflow 'w'"):
        Workflow(id="w", input=Num).then(word).commit()


def test_the_last_node_is_checked_against_the_workflow_output():
    with pytest.raises(DefinitionError, match="the output of workflow 'w' needs field 'word'"):
        Workflow(id="w", input=Num, output=Word).then(num).commit()


def test_every_parallel_and_branch_child_is_checked_against_the_input():
    with pytest.raises(DefinitionError, match="step 'word' needs field 'word'"):
        Workflow(id="w", input=Num).parallel([num, word]).commit()
    with pytest.raises(DefinitionError, match="step 'word' needs field 'word'"):
        Workflow(id="w", input=Num).branch([(lambda x: True, num), (lambda x: False, word)]).commit()


def test_a_loop_body_must_accept_its_own_output():
    with pytest.raises(DefinitionError, match="the next iteration of 'to-word'"):
        Workflow(id="w", input=Num).dowhile(to_word, lambda x: False).commit()


def test_a_nested_workflow_is_checked_like_a_step():
    inner = Workflow(id="inner", input=Word, output=Word).then(word).commit()

    with pytest.raises(DefinitionError, match="step 'inner' needs field 'word'"):
        Workflow(id="w", input=Num).then(inner).commit()


def test_sleep_passes_the_schema_through_and_an_event_gives_its_own():
    Workflow(id="ok", input=Num).then(num).sleep(1).then(to_word).commit()

    with pytest.raises(DefinitionError, match="step 'num' needs field 'n', which step 'wait-go'"):
        Workflow(id="w", input=Num).wait_for_event("go", Word).then(num).commit()


def test_a_map_or_optional_fields_make_mismatched_steps_fit():
    Workflow(id="mapped", input=Num).then(num).map(lambda x: {"word": str(x.n)}, output=Word).then(word).commit()
    Workflow(id="optional", input=Num).then(num).then(relaxed).commit()
    Workflow(id="untyped", input=Num).then(num).map(lambda x: x).then(word).commit()


# -- malformed definitions ----------------------------------------------------------------------------


def test_an_empty_workflow_cannot_be_committed():
    with pytest.raises(DefinitionError, match=r"has no steps; add one with \.then\(step\)"):
        Workflow(id="empty").commit()


def test_a_committed_builder_cannot_be_changed():
    builder = Workflow(id="w", input=Num).then(num)
    builder.commit()

    with pytest.raises(DefinitionError, match="already committed"):
        builder.then(to_word)


@pytest.mark.parametrize("bad", ["", " padded", "a/b", "loop#1", "item[0]"])
def test_ids_that_would_break_paths_are_refused(bad):
    with pytest.raises(DefinitionError, match="is not allowed"):
        Workflow(id=bad)

    async def fn(ctx):
        return None

    with pytest.raises(DefinitionError, match="is not allowed"):
        step(id=bad)(fn)


def test_only_steps_and_committed_workflows_can_be_added():
    with pytest.raises(DefinitionError, match="expected a step"):
        Workflow(id="w").then("num")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match=r"nested workflow 'draft' must be committed first"):
        Workflow(id="w").then(Workflow(id="draft").then(num))  # type: ignore[arg-type]


def test_a_step_function_must_return_its_output_and_models_and_timeouts_must_be_valid():
    def generator(ctx):
        yield None

    with pytest.raises(DefinitionError, match="must return its output, not yield it"):
        step(id="gen")(generator)
    with pytest.raises(DefinitionError, match="must be a function"):
        step(id="nothing")("not a function")  # type: ignore[arg-type]

    async def fn(ctx):
        return None

    with pytest.raises(DefinitionError, match="timeout must be a positive number of seconds"):
        step(id="never", timeout=0)(fn)
    with pytest.raises(DefinitionError, match="step_timeout must be a positive number of seconds"):
        Workflow(id="w", step_timeout=-1)
    with pytest.raises(DefinitionError, match="is 201 characters long; use at most 200"):
        step(id="x" * 201)(fn)
    # A plain function is a step too (it runs in a thread).
    assert step(id="sync")(lambda ctx: None).is_async is False

    with pytest.raises(DefinitionError, match="`output` must be a pydantic BaseModel class"):
        step(id="typed", output=dict)(fn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Workflow(id="w").parallel([]), "needs at least one step"),
        (lambda: Workflow(id="w").branch([]), "needs at least one"),
        (lambda: Workflow(id="w").branch([(num,)]), r"takes \(condition, step\) pairs"),
        (lambda: Workflow(id="w").branch([("not callable", num)]), r"takes \(condition, step\) pairs"),
        (lambda: Workflow(id="w").dowhile(num, lambda x: True, max_iterations=0), "max_iterations must be at least 1"),
        (lambda: Workflow(id="w").foreach(num, concurrency=0), "concurrency must be at least 1"),
        (lambda: Workflow(id="w").sleep(-1), "must not be negative"),
        (lambda: RetryPolicy(attempts=0), "attempts must be at least 1"),
        (lambda: RetryPolicy(backoff=-1), "must not be negative"),
    ],
)
def test_bad_builder_arguments_are_refused_when_given(build, message):
    with pytest.raises(DefinitionError, match=message):
        build()


# -- unknown names at run time ------------------------------------------------------------------------


@step(id="ask", input=Num, output=Num, resume=Num)
async def ask(ctx: StepContext[Num]) -> Num:
    return await ctx.suspend({})


async def test_unknown_workflow_step_and_event_names_are_usage_errors(engine):
    wf = Workflow(id="asks", input=Num).then(num).then(ask).commit()
    e = engine(wf)

    with pytest.raises(WorkflowNotFound, match="Known workflows: asks"):
        await e.start("nope", {"n": 1})

    result = await (await e.start("asks", {"n": 1})).result(timeout=5)
    assert result.status == "suspended"

    with pytest.raises(NotSuspended, match="no suspended step 'nope'.*ask"):
        await e.resume(result.run_id, step="nope", data={"n": 2})
    with pytest.raises(UsageError, match="never waits for event 'go'"):
        await e.send_event(result.run_id, "go", {})
    with pytest.raises(UsageError, match="no step 'nope' to re-run from"):
        await e.rerun(result.run_id, from_step="nope")

    assert (await e.get_run(result.run_id)).status == "suspended"
