"""Workflows the Slack-facing reliability tests register on the running bot's engine (next to the built-ins)."""

from __future__ import annotations

from pydantic import BaseModel

from workflows import Agent, CommittedWorkflow, RetryPolicy, StepContext, Workflow, agent_step, step
from workflows.examples.approval import ApprovalInput, ApprovalRequest, Approved, Decision
from workflows.models import OpenAIChatModel

BOB = "U0BOB"


@step(id="sign-off", input=ApprovalInput, output=Approved, suspend=ApprovalRequest, resume=Decision)
async def sign_off(ctx: StepContext[ApprovalInput]) -> Approved:
    """Like ``approval``'s step, under another step path."""
    decision: Decision = await ctx.suspend(ApprovalRequest(title="Sign-off needed", details=ctx.input.request))
    return Approved(ok=decision.approved)


@step(id="bob-decides", input=ApprovalInput, output=Approved, suspend=ApprovalRequest, resume=Decision,
      approvers=[BOB])
async def bob_decides(ctx: StepContext[ApprovalInput]) -> Approved:
    decision: Decision = await ctx.suspend(ApprovalRequest(title="Bob decides", details=ctx.input.request))
    return Approved(ok=decision.approved)


#: Another run's step: a suspension at a path the ``approval`` workflow does not have.
sign_off_flow = Workflow(id="sign-off-flow", input=ApprovalInput, output=Approved).then(sign_off).commit()
#: Step-level approvers: only Bob may decide, whoever started the run.
bob_flow = Workflow(id="bob-flow", input=ApprovalInput, output=Approved).then(bob_decides).commit()


class Topic(BaseModel):
    topic: str


class Notes(BaseModel):
    topic: str
    notes: str


class Summary(BaseModel):
    summary: str


@step(id="gather", input=Topic, output=Notes)
async def gather(ctx: StepContext[Topic]) -> Notes:
    return Notes(topic=ctx.input.topic, notes=f"notes about {ctx.input.topic}")


#: Fast retries: the fault tests count every request the fake server gets, they need not wait for backoff.
MODEL_RETRY = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01)
MODEL_TIMEOUT = 0.5


def llm_flow(base_url: str, api_key: str) -> tuple[CommittedWorkflow, OpenAIChatModel]:
    """``gather`` (plain) -> ``write`` (an agent on the OpenAI-compatible server at ``base_url``)."""
    model = OpenAIChatModel("gpt-4o-mini", api_key=api_key, base_url=base_url, timeout=MODEL_TIMEOUT,
                            retry=MODEL_RETRY)
    writer = Agent("writer", "Summarise the notes in one sentence.", model=model)
    write = agent_step(writer, id="write", input=Notes, output=Summary, prompt="Summarise: {notes}")
    return Workflow(id="llm-flow", input=Topic, output=Summary).then(gather).then(write).commit(), model
