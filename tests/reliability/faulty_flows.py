"""Workflows for the fault-injection suite: healthy ones that log every step execution, and steps that misbehave.

Importable by a ``threadflow worker`` (``THREADFLOW_WORKFLOWS=tests.reliability.faulty_flows``) and by tests in
process. Every step execution appends ``RUN_ID PATH PID`` to ``$THREADFLOW_TEST_FAULT_DIR/executions.log`` (one
short O_APPEND write: atomic, and it survives the process dying right after), so a test counts how often each
step ran across all processes. While ``$THREADFLOW_TEST_FAULT_DIR/hold`` exists the ``hold`` step waits.

    healthy      a(+1) -> b(+2) -> c(+5): input n gives n + 8
    held         a(+1) -> hold(+100) -> c(+5): input n gives n + 106, once the hold file is gone
    exits        a -> exit (sys.exit(3))                      raises         KeyboardInterrupt
    dies         a -> die (os._exit(9))                       dies-once      max_recoveries=1
    blocks       a -> block (time.sleep in an async def: the event loop is blocked) -> c
    hangs        a -> hang (never returns; timeout 0.3 s) -> c
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from workflows import StepContext, Workflow, step

LOG = "executions.log"
HOLD = "hold"
#: How long the ``block`` step holds the event loop (seconds).
BLOCK_SECONDS = float(os.environ.get("THREADFLOW_TEST_BLOCK_SECONDS", "4"))


class Num(BaseModel):
    n: int


def directory() -> Path:
    return Path(os.environ["THREADFLOW_TEST_FAULT_DIR"])


def record(ctx: StepContext[Num], what: str | None = None) -> None:
    fd = os.open(directory() / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.run_id} {what or ctx.path} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def executions(where: Path) -> Counter[tuple[str, str]]:
    """How often each (run, step path) ran, over every process that logged to ``where``."""
    log = where / LOG
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return Counter((run, path) for run, path, _pid in lines)


def adds(step_id: str, delta: int, pause: float = 0.02) -> object:
    @step(id=step_id, input=Num, output=Num)
    async def body(ctx: StepContext[Num]) -> Num:
        record(ctx)
        await asyncio.sleep(pause)  # long enough that many runs are in flight at once
        return Num(n=ctx.input.n + delta)

    return body


a, b, c = adds("a", 1), adds("b", 2), adds("c", 5)


@step(id="hold", input=Num, output=Num)
async def hold(ctx: StepContext[Num]) -> Num:
    record(ctx)
    while (directory() / HOLD).exists():  # noqa: ASYNC110 (the test removes the file)
        await asyncio.sleep(0.01)
    return Num(n=ctx.input.n + 100)


@step(id="exit", input=Num, output=Num)
async def exits(ctx: StepContext[Num]) -> Num:
    record(ctx)
    sys.exit(3)


@step(id="interrupt", input=Num, output=Num)
async def interrupts(ctx: StepContext[Num]) -> Num:
    record(ctx)
    raise KeyboardInterrupt


@step(id="die", input=Num, output=Num)
async def dies(ctx: StepContext[Num]) -> Num:
    record(ctx)
    await asyncio.sleep(0.2)  # the healthy runs beside it are mid-step when the process goes
    os._exit(9)


@step(id="block", input=Num, output=Num)
async def blocks(ctx: StepContext[Num]) -> Num:
    record(ctx)
    time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 (the point: CPU-bound or blocking code in an async def)
    return Num(n=ctx.input.n + 10)


@step(id="hang", input=Num, output=Num, timeout=0.3)
async def hangs(ctx: StepContext[Num]) -> Num:
    record(ctx)
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


healthy = Workflow(id="healthy", input=Num, output=Num).then(a).then(b).then(c).commit()
held = Workflow(id="held", input=Num, output=Num).then(a).then(hold).then(c).commit()
exit_flow = Workflow(id="exits", input=Num, output=Num).then(a).then(exits).commit()
interrupt_flow = Workflow(id="raises", input=Num, output=Num).then(a).then(interrupts).commit()
die_flow = Workflow(id="dies", input=Num, output=Num).then(a).then(dies).commit()
die_once_flow = Workflow(id="dies-once", input=Num, output=Num, max_recoveries=1).then(a).then(dies).commit()
block_flow = Workflow(id="blocks", input=Num, output=Num).then(a).then(blocks).then(c).commit()
hang_flow = Workflow(id="hangs", input=Num, output=Num).then(a).then(hangs).then(c).commit()

WORKFLOWS = [healthy, held, exit_flow, interrupt_flow, die_flow, die_once_flow, block_flow, hang_flow]
