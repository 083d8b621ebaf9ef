"""Data between steps, events and resumes when the pydantic models have aliases: the engine records a model's data
by field name and reads it back by name or alias, as a caller may send it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from workflows import StepContext, Workflow, step


class PullRequest(BaseModel):
    """A camelCase API payload (GitHub, Slack): the field is ``pr_number`` in Python, ``prNumber`` on the wire."""

    pr_number: int = Field(alias="prNumber")


class Merged(BaseModel):
    merged: int


@step(id="merge", input=PullRequest, output=Merged)
async def merge(ctx: StepContext[PullRequest]) -> Merged:
    return Merged(merged=ctx.input.pr_number)


async def test_a_workflow_input_model_with_an_alias_reaches_its_first_step(engine):
    wf = Workflow(id="merge-pr", input=PullRequest, output=Merged).then(merge).commit()
    e = engine(wf)

    result = await (await e.start("merge-pr", {"prNumber": 42})).result(timeout=5)

    assert result.status == "success", result.error
    assert result.output == {"merged": 42}


async def test_a_step_output_model_with_an_alias_feeds_the_next_step_of_the_same_model(engine):
    @step(id="find", output=PullRequest)
    async def find(ctx: StepContext[None]) -> PullRequest:
        return PullRequest(prNumber=7)

    wf = Workflow(id="find-merge", output=Merged).then(find).then(merge).commit()
    e = engine(wf)

    result = await (await e.start("find-merge")).result(timeout=5)

    assert result.status == "success", result.error
    assert result.output == {"merged": 7}


async def test_event_data_for_a_schema_with_an_alias_is_received(engine):
    wf = Workflow(id="pr-opened").wait_for_event("pr", PullRequest, id="wait").commit()
    e = engine(wf)
    handle = await e.start("pr-opened")
    assert (await handle.result(timeout=5)).status == "waiting"

    assert await e.send_event(handle.run_id, "pr", {"prNumber": 9}) == "delivered"
    result = await e.handle(handle.run_id).result(timeout=5)

    assert result.status == "success", result.error
    assert result.output == {"pr_number": 9}


async def test_resume_data_for_a_model_with_an_alias_reaches_the_step(engine):
    class Approval(BaseModel):
        approved_by: str = Field(alias="approvedBy")

    @step(id="approve", resume=Approval)
    async def approve(ctx: StepContext[None]) -> dict:
        decision = await ctx.suspend({"q": "merge?"})
        return {"by": decision.approved_by}

    e = engine(Workflow(id="approve-pr").then(approve).commit())
    handle = await e.start("approve-pr")
    assert (await handle.result(timeout=5)).status == "suspended"

    await e.resume(handle.run_id, step="approve", data={"approvedBy": "U1"})
    result = await e.handle(handle.run_id).result(timeout=5)

    assert result.status == "success", result.error
    assert result.output == {"by": "U1"}
