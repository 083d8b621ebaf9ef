"""Workflows that stop and wake up before a long step, loaded through THREADFLOW_WORKFLOWS=tests.helpers.nap_flows.

``nap-then-work`` sleeps 1.5 s; ``wait-then-work`` waits for the event ``go``. Each then runs a step of 4 s (an
agent at work), long enough for a test to read what Slack shows while the woken run is running.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from workflows import StepContext, Workflow, step


class Empty(BaseModel):
    pass


class Go(BaseModel):
    ok: bool = True


@step(id="prepare", input=Empty, output=Empty)
async def prepare(ctx: StepContext[Empty]) -> Empty:
    return Empty()


@step(id="work", input=Empty, output=Empty)
async def work(ctx: StepContext[Empty]) -> Empty:
    await asyncio.sleep(4.0)
    return Empty()


@step(id="work-on-event", input=Go, output=Empty)
async def work_on_event(ctx: StepContext[Go]) -> Empty:
    await asyncio.sleep(4.0)
    return Empty()


nap_then_work = Workflow(id="nap-then-work", input=Empty, output=Empty).then(prepare).sleep(1.5).then(work).commit()
wait_then_work = (
    Workflow(id="wait-then-work", input=Empty, output=Empty).then(prepare).wait_for_event("go", Go)
    .then(work_on_event).commit()
)
