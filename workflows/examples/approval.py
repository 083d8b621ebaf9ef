"""``approval``: a step that waits for a person; approve returns ``{"ok": true}``, reject fails cleanly."""

from __future__ import annotations

from pydantic import BaseModel, Field

from workflows import StepContext, Workflow, step
from workflows.errors import RunFailure


class ApprovalInput(BaseModel):
    request: str = Field(default="Please approve this request.", description="What needs approving.")


class ApprovalRequest(BaseModel):
    """The suspend payload: what the approver is shown."""

    title: str
    details: str
    requested_by: str | None = None


class Decision(BaseModel):
    """The resume data: Slack buttons send ``{"approved": true|false, "by": USER_ID}``."""

    approved: bool
    by: str | None = None
    reason: str | None = None


class Approved(BaseModel):
    ok: bool


class Rejected(RunFailure):
    """The approver said no (or the approval expired)."""


@step(id="approve", input=ApprovalInput, output=Approved, suspend=ApprovalRequest, resume=Decision)
async def approve(ctx: StepContext[ApprovalInput]) -> Approved:
    """Ask a person to approve, then go on or stop."""
    decision: Decision = await ctx.suspend(
        ApprovalRequest(title="Approval needed", details=ctx.input.request, requested_by=ctx.started_by)
    )
    if not decision.approved:
        who = decision.by or "someone"
        why = f": {decision.reason}" if decision.reason else ""
        raise Rejected(f"Rejected by {who}{why}.")
    return Approved(ok=True)


approval = Workflow(
    id="approval", input=ApprovalInput, output=Approved, description="Waits for a person to approve or reject.",
    title="Ask for approval",
).then(approve).commit()
