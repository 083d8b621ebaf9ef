"""A worker process for the reliability tests: workflows whose steps log every execution, and a CLI to start,
resume or mass-start runs in a process of its own, so a test can SIGKILL it at an exact moment.

    python -m tests.reliability.worker start  DB_URL DIR WORKFLOW       prints the run id, then its result
    python -m tests.reliability.worker resume DB_URL DIR RUN_ID BY      prints "resumed", then the result
    python -m tests.reliability.worker many   DB_URL DIR COUNT START_AT starts COUNT "chain" runs at START_AT
                                                                        (a wall-clock time), prints a summary

Each step execution appends ``RUN_ID PATH PID`` to ``DIR/executions.log`` (one short O_APPEND write, atomic
and durable across SIGKILL and across processes). While ``DIR/hold-gate`` exists the ``gate`` step waits after
its decision, and while ``DIR/hold`` exists the ``hold`` step waits: the test decides when a step is in flight.
``THREADFLOW_CRASH_AT`` (read by the engine) makes the process exit with 137 at a named fault point.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from workflows import CommittedWorkflow, Engine, StepContext, Workflow, step

LOG = "executions.log"
HOLD = "hold"
HOLD_GATE = "hold-gate"
#: Sleeps longer than the executor's in-process limit (1 s) halt the run ("waiting"); shorter ones are slept
#: while the process holds the run.
LONG_NAP, SHORT_NAP = 1.5, 0.8


class Num(BaseModel):
    n: int


class Decision(BaseModel):
    approved: bool
    by: str | None = None


def executions(directory: Path) -> Counter[str]:
    """How often each step path ran, over every process that used ``directory`` (one run per directory)."""
    return Counter(path for _run, path, _pid in _lines(directory))


def executions_by_run(directory: Path) -> Counter[tuple[str, str]]:
    return Counter((run, path) for run, path, _pid in _lines(directory))


def _lines(directory: Path) -> list[list[str]]:
    log = directory / LOG
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def build_workflows(directory: Path) -> list[CommittedWorkflow]:
    def record(ctx: StepContext[Num], what: str | None = None) -> None:
        fd = os.open(directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.run_id} {what or ctx.path} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    async def hold_while(name: str) -> None:
        while (directory / name).exists():  # noqa: ASYNC110 (the test removes the file)
            await asyncio.sleep(0.01)

    def plain(step_id: str, delta: int) -> object:
        @step(id=step_id, input=Num, output=Num)
        async def body(ctx: StepContext[Num]) -> Num:
            record(ctx)
            return Num(n=ctx.input.n + delta)

        return body

    @step(id="gate", input=Num, output=Num, resume=Decision)
    async def gate(ctx: StepContext[Num]) -> Num:
        record(ctx, "gate:asked")
        decision = await ctx.suspend({})
        record(ctx, "gate:decided")
        await hold_while(HOLD_GATE)
        return Num(n=ctx.input.n * (10 if decision.approved else 0))

    @step(id="hold", input=Num, output=Num)
    async def hold(ctx: StepContext[Num]) -> Num:
        record(ctx)
        await hold_while(HOLD)
        return Num(n=ctx.input.n + 100)

    a, b, c = plain("a", 1), plain("b", 2), plain("c", 5)
    return [
        # a(+1) -> gate(*10 once approved) -> c(+5): input 1 gives 25.
        Workflow(id="gated", input=Num, output=Num).then(a).then(gate).then(c).commit(),
        # a -> gate -> hold(+100) -> c: input 1 gives 125.
        Workflow(id="gated-hold", input=Num, output=Num).then(a).then(gate).then(hold).then(c).commit(),
        Workflow(id="nap-long", input=Num, output=Num).then(a).sleep(LONG_NAP, id="nap").then(c).commit(),
        Workflow(id="nap-short", input=Num, output=Num).then(a).sleep(SHORT_NAP, id="nap").then(c).commit(),
        # a(+1) -> b(+2) -> c(+5): input 0 gives 8.
        Workflow(id="chain", input=Num, output=Num).then(a).then(b).then(c).commit(),
    ]


def _engine(url: str, directory: Path, lease: float = 2.0, poll: float = 0.05) -> Engine:
    engine = Engine.from_url(url, lease_seconds=lease, poll_interval=poll)
    engine.register(*build_workflows(directory))
    return engine


async def start(url: str, directory: Path, workflow_id: str) -> None:
    engine = _engine(url, directory)
    handle = await engine.start(workflow_id, {"n": 1})
    print(handle.run_id, flush=True)
    result = await handle.result()
    print(json.dumps(result.to_json()), flush=True)
    await engine.close()


async def resume(url: str, directory: Path, run_id: str, by: str) -> None:
    engine = _engine(url, directory)
    await engine.resume(run_id, step="gate", data={"approved": True}, by=by)
    print("resumed", flush=True)
    result = await engine.wait_for(run_id, timeout=60)
    print(json.dumps(result.to_json()), flush=True)
    await engine.close()


async def many(url: str, directory: Path, count: int, start_at: float) -> None:
    # 200 waiters polling every 25 ms would flood the reader pool (runs here wake their waiters anyway), and a
    # lease comfortably above a loaded machine's commit latency keeps this about locking, not lease takeovers.
    engine = _engine(url, directory, lease=10.0, poll=1.0)
    await engine.open()
    await asyncio.sleep(max(0.0, start_at - time.time()))  # both processes start their runs at one moment
    handles = await asyncio.gather(*(engine.start("chain", {"n": i}) for i in range(count)))
    results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    await engine.close()
    print(json.dumps({
        "statuses": dict(Counter(r.status for r in results)),
        "outputs": sorted(r.output["n"] - i for i, r in enumerate(results) if r.output is not None),
        "errors": [r.error for r in results if r.error],
        "ids": [r.run_id for r in results],
    }), flush=True)


def main(argv: list[str]) -> None:
    command, url, directory, *rest = argv
    where = Path(directory)
    if command == "start":
        asyncio.run(start(url, where, rest[0]))
    elif command == "resume":
        asyncio.run(resume(url, where, rest[0], rest[1]))
    elif command == "many":
        asyncio.run(many(url, where, int(rest[0]), float(rest[1])))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
