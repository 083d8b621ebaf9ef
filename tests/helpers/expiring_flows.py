"""An approval nobody answers in time, loaded through THREADFLOW_WORKFLOWS by the Slack tests: its card must
end saying it expired, without buttons, and the run takes the reject path."""

from __future__ import annotations

from workflows import StepContext, Workflow, step
from workflows.examples.approval import ApprovalInput, ApprovalRequest, Approved, Decision, Rejected

#: Seconds the approval waits for a decision.
TTL = 1.5


@step(id="approve", input=ApprovalInput, output=Approved, suspend=ApprovalRequest, resume=Decision, suspend_ttl=TTL)
async def approve_soon(ctx: StepContext[ApprovalInput]) -> Approved:
    decision: Decision = await ctx.suspend(ApprovalRequest(title="Approval needed", details=ctx.input.request,
                                                           requested_by=ctx.started_by))
    if not decision.approved:
        raise Rejected(f"Rejected by {decision.by or 'someone'}: {decision.reason or 'no reason'}.")
    return Approved(ok=True)


expiring_approval = Workflow(id="expiring-approval", input=ApprovalInput, output=Approved).then(approve_soon).commit()
