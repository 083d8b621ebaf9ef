"""Two versions of one workflow whose ``hold`` step waits while ``$HELD_DIR/HOLD`` exists, for commands beside workers
across a deploy: ``THREADFLOW_WORKFLOWS=tests.helpers.held_versions:V1`` (or ``:V2``, ``:BOTH``). Every step
execution appends ``RUN_ID STEP PID`` to ``$HELD_DIR/log``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from workflows import StepContext, Workflow, step


def _dir() -> Path:
    return Path(os.environ["HELD_DIR"])


def _log(name: str, run_id: str) -> None:
    with (_dir() / "log").open("a") as f:
        f.write(f"{run_id} {name} {os.getpid()}\n")


def executions(run_id: str) -> list[tuple[str, int]]:
    """(step, pid) of every execution of the run's steps, in order."""
    path = _dir() / "log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(name, int(pid)) for rid, name, pid in (line.split() for line in lines) if rid == run_id]


@step(id="first")
async def first(ctx: StepContext[Any]) -> dict[str, str]:
    _log("first", ctx.run_id)
    return {"by": ctx.engine.owner}


@step(id="hold")
async def hold(ctx: StepContext[Any]) -> dict[str, str]:
    _log("hold", ctx.run_id)
    while (_dir() / "HOLD").exists():  # noqa: ASYNC110 (the test removes the file)
        await asyncio.sleep(0.05)
    return {"by": ctx.engine.owner}


@step(id="audit")
async def audit(ctx: StepContext[Any]) -> dict[str, str]:
    _log("audit", ctx.run_id)
    return {"by": ctx.engine.owner}


V1 = [Workflow(id="job", version="1").then(first).then(hold).commit()]
V2 = [Workflow(id="job", version="2").then(first).then(audit).then(hold).commit()]
BOTH = V1 + V2
