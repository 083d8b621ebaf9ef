"""A workflow whose input nests a model (an order of items), as the versioning tests load it by attribute.

Its fingerprint changed when nested models came to be named by place rather than by class name: runs recorded
before that carry ``workflows.versions.legacy_fingerprint(order)``.
``THREADFLOW_WORKFLOWS=tests.helpers.nested_model_flows:ORDER`` gives a process this workflow.
"""

from __future__ import annotations

from pydantic import BaseModel

from workflows import CommittedWorkflow, StepContext, Workflow, step


class Item(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    items: list[Item]


class Decision(BaseModel):
    approved: bool


@step(id="gate", input=Order, output=Order, resume=Decision)
async def order_gate(ctx: StepContext[Order]) -> Order:
    await ctx.suspend({"question": "place the order?"})
    return ctx.input


def order_flow() -> CommittedWorkflow:
    return Workflow(id="order", version="1", input=Order).then(order_gate).commit()


ORDER = [order_flow()]
