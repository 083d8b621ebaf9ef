"""Two versions of ``ship`` as a team deploys them, for the Slack version tests (loaded by attribute through
``THREADFLOW_WORKFLOWS=tests.helpers.deploy_flows:V1`` / ``:V2`` / ``:BOTH``).

Version 1: ``gate`` (an approval whose resume model takes a ``reason``) -> ``summary`` (an agent-like step whose
output is posted in the run's thread). Version 2 renames ``summary`` to ``report`` and its gate takes no reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class WithReason(BaseModel):
    approved: bool
    reason: str | None = None


class NoReason(BaseModel):
    approved: bool


class Text(BaseModel):
    text: str


def _gate(resume: type[BaseModel]) -> Any:
    @step(id="gate", resume=resume)
    async def gate(ctx: StepContext[Any]) -> dict[str, Any]:
        decision = await ctx.suspend({"question": "ship it?"})
        return {"approved": decision.approved}

    return gate


@step(id="summary", output=Text, metadata={"agent": "writer", "post_output": True})
async def summary(ctx: StepContext[Any]) -> Text:
    return Text(text="VERSION-ONE-SUMMARY shipped fine")


@step(id="report", output=Text, metadata={"agent": "writer", "post_output": True})
async def report(ctx: StepContext[Any]) -> Text:
    return Text(text="VERSION-TWO-REPORT shipped fine")


def ship_v1() -> Any:
    return Workflow(id="ship", version="1").then(_gate(WithReason)).then(summary).commit()


def ship_v2() -> Any:
    return Workflow(id="ship", version="2").then(_gate(NoReason)).then(report).commit()


V1 = [ship_v1()]
V2 = [ship_v2()]
BOTH = [ship_v1(), ship_v2()]


# ``later``: version 1 sleeps, then asks for approval (its gate takes a reason); version 2 asks at once and its
# gate takes none. A version-1 run asleep across the deploy reaches its gate under the new code.
def later_v1() -> Any:
    return Workflow(id="later", version="1").sleep(1.5, id="nap").then(_gate(WithReason)).commit()


def later_v2() -> Any:
    return Workflow(id="later", version="2").then(_gate(NoReason)).commit()


LATER_V1 = [later_v1()]
LATER_BOTH = [later_v1(), later_v2()]


# ``guarded``: Bob (``U0BOB``) approves; version 2 adds a check before the approval.
@step(id="approve", resume=NoReason, approvers=["U0BOB"])
async def approve(ctx: StepContext[Any]) -> dict[str, Any]:
    decision = await ctx.suspend({"question": "release?"})
    return {"approved": decision.approved}


@step(id="check")
async def check(ctx: StepContext[Any]) -> dict[str, Any]:
    return {"checked": True}


def guarded_v1() -> Any:
    return Workflow(id="guarded", version="1").then(approve).commit()


def guarded_v2() -> Any:
    return Workflow(id="guarded", version="2").then(check).then(approve).commit()


GUARDED_V1 = [guarded_v1()]
GUARDED_V2 = [guarded_v2()]
