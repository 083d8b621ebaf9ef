"""Approvals inside nested workflows, loaded through THREADFLOW_WORKFLOWS by the Slack approval tests.

``ship`` runs ``review`` then ``release``, two workflows that each have a step ``approve`` (paths
``review/approve`` and ``release/approve``), each decided by its own person; only the review takes a reason. ``guarded`` runs
``security-review``, whose step has no approvers of its own: the nested workflow's ``approvers=`` decide it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from workflows import StepContext, Workflow, step
from workflows.examples.approval import ApprovalInput, ApprovalRequest, Decision, Rejected

#: Who decides ``review/approve``, ``release/approve`` and ``security-review/ask`` (Slack user ids of the tests).
REVIEWER, RELEASER, SECURITY = "U0ALICE", "U0BOB", "U0BOB"


class Go(BaseModel):
    """A decision that takes no reason: its card offers no "Reject with reason"."""

    approved: bool
    by: str | None = None


def _gate(step_id: str, title: str, approvers: list[str] | None = None, resume: type[BaseModel] = Decision) -> Any:
    @step(id=step_id, input=ApprovalInput, output=ApprovalInput, suspend=ApprovalRequest, resume=resume,
          approvers=approvers)
    async def gate(ctx: StepContext[ApprovalInput]) -> ApprovalInput:
        decision: Any = await ctx.suspend(ApprovalRequest(title=title, details=ctx.input.request,
                                                               requested_by=ctx.started_by))
        if not decision.approved:
            raise Rejected(f"Rejected by {decision.by or 'someone'}.")
        return ctx.input

    return gate


review = (Workflow(id="review", input=ApprovalInput, output=ApprovalInput)
          .then(_gate("approve", "Review", [REVIEWER])).commit())
release = (Workflow(id="release", input=ApprovalInput, output=ApprovalInput)
           .then(_gate("approve", "Release", [RELEASER], resume=Go)).commit())
ship = Workflow(id="ship", input=ApprovalInput, output=ApprovalInput).then(review).then(release).commit()

security_review = (Workflow(id="security-review", input=ApprovalInput, output=ApprovalInput, approvers=[SECURITY])
                   .then(_gate("ask", "Security review")).commit())
guarded = Workflow(id="guarded", input=ApprovalInput, output=ApprovalInput).then(security_review).commit()

WORKFLOWS = [ship, guarded]
