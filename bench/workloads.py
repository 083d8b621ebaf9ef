"""The threadflow workflows the benchmarks run (importable by worker subprocesses too)."""

from __future__ import annotations

import time
from typing import Any

from workflows import CommittedWorkflow, StepContext, Workflow, step

STEPS = 10

#: run_id -> time.perf_counter() when the step after the suspension started (same process only).
RESUMED_AT: dict[str, float] = {}


def _noop_step(i: int) -> Any:
    @step(id=f"s{i}")
    async def noop(ctx: StepContext[Any]) -> None:
        return None

    return noop


def noop_workflow(steps: int = STEPS, workflow_id: str = "bench-noop") -> CommittedWorkflow:
    """``steps`` steps that do nothing: what is measured is the engine's durable bookkeeping."""
    wf = Workflow(id=workflow_id, description=f"{steps} no-op steps")
    for i in range(steps):
        wf = wf.then(_noop_step(i))
    return wf.commit()


@step(id="wait")
async def _wait(ctx: StepContext[Any]) -> Any:
    data = await ctx.suspend({"why": "benchmark"})
    return data


@step(id="after")
async def _after(ctx: StepContext[Any]) -> None:
    RESUMED_AT.setdefault(ctx.run_id, time.perf_counter())
    return None


def suspend_workflow(workflow_id: str = "bench-suspend") -> CommittedWorkflow:
    """Suspend in the first step; the second step records when it started."""
    return Workflow(id=workflow_id).then(_wait).then(_after).commit()


NOOP = noop_workflow()
SUSPEND = suspend_workflow()
WORKFLOWS = [NOOP, SUSPEND]
