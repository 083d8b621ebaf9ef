"""Two versions of one workflow, as a team deploys them: the versioning tests load them by attribute.

``deploy`` version 1 is ``prepare -> gate -> finish``; version 2 inserts ``audit`` before the gate and
renames the gate ``gate2`` (the story of issue 18). Every step records which process executed it.
``THREADFLOW_WORKFLOWS=tests.helpers.versioned_flows:V1`` (or ``:V2``, ``:BOTH``) picks what a process has.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from workflows import CommittedWorkflow, StepContext, Workflow, step


class Decision(BaseModel):
    approved: bool
    by: str | None = None


class Done(BaseModel):
    by: str
    version: str


def _marker(step_id: str, version: str) -> Any:
    @step(id=step_id, output=Done)
    async def mark(ctx: StepContext[Any]) -> Done:
        return Done(by=ctx.engine.owner, version=version)

    return mark


def _gate(step_id: str) -> Any:
    @step(id=step_id, resume=Decision)
    async def gate(ctx: StepContext[Any]) -> dict[str, Any]:
        decision = await ctx.suspend({"question": "ship it?"})
        return {"approved": decision.approved, "by": ctx.engine.owner}

    return gate


def deploy_v1(code: str = "v1") -> CommittedWorkflow:
    """Version 1; ``code`` changes only what the steps do (not the workflow's structure)."""
    return (Workflow(id="deploy", version="1")
            .then(_marker("prepare", code)).then(_gate("gate")).then(_marker("finish", code)).commit())


def deploy_v2() -> CommittedWorkflow:
    return (Workflow(id="deploy", version="2")
            .then(_marker("prepare", "v2")).then(_marker("audit", "v2")).then(_gate("gate2"))
            .then(_marker("finish", "v2")).commit())


@step(id="forever")
async def _forever(ctx: StepContext[Any]) -> None:
    await asyncio.sleep(3600)  # a run that does not settle while anyone waits for it


slow = Workflow(id="slow-after-approval").then(_gate("gate")).then(_forever).commit()

V1 = [deploy_v1(), slow]
V2 = [deploy_v2(), slow]
BOTH = [deploy_v1(), deploy_v2(), slow]
