"""Workflows that log every step execution to a file, and a tiny CLI to run them in a process of their own,
so a test can SIGKILL a real process mid-run and check what ran how often after recovery.

    python -m tests.helpers.crash_worker start   DB_URL DIR WORKFLOW [--owner O] [--lease S]
        starts a run, prints its id, then executes it (until killed, or until it settles)
    python -m tests.helpers.crash_worker recover DB_URL DIR RUN_ID
        continues runs whose holder died and prints the run's result as JSON

Each step execution appends its path to ``DIR/executions.log`` (one line, O_APPEND: it survives SIGKILL).
The ``hold`` step waits while ``DIR/hold`` exists, so the test decides when a step is "in flight".
``THREADFLOW_CRASH_AT=after_step_commit:PATH`` makes the process exit at once after that step commits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from workflows import CommittedWorkflow, Engine, StepContext, Workflow, step

LOG = "executions.log"
HOLD = "hold"


class Num(BaseModel):
    n: int


def executions(directory: Path) -> Counter[str]:
    """How many times each step path ran, across every process that used ``directory``."""
    log = directory / LOG
    return Counter(log.read_text().split()) if log.exists() else Counter()


def build_workflows(directory: Path) -> list[CommittedWorkflow]:
    def record(path: str) -> None:
        fd = os.open(directory / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{path}\n".encode())
        finally:
            os.close(fd)

    @step(id="a", input=Num, output=Num)
    async def a(ctx: StepContext[Num]) -> Num:
        record(ctx.path)
        return Num(n=ctx.input.n + 1)

    @step(id="hold", input=Num, output=Num)
    async def hold(ctx: StepContext[Num]) -> Num:
        record(ctx.path)
        while (directory / HOLD).exists():  # noqa: ASYNC110 (another process removes the file)
            await asyncio.sleep(0.01)
        return Num(n=ctx.input.n * 10)

    @step(id="c", input=Num, output=Num)
    async def c(ctx: StepContext[Num]) -> Num:
        record(ctx.path)
        return Num(n=ctx.input.n + 5)

    @step(id="item", input=Num, output=Num)
    async def item(ctx: StepContext[Num]) -> Num:
        record(ctx.path)
        return Num(n=ctx.input.n * 2)

    three_steps = Workflow(id="three-steps", input=Num, output=Num).then(a).then(hold).then(c).commit()
    each = (
        Workflow(id="each", input=Num)
        .then(a)
        .foreach(item, items=lambda x: [{"n": i} for i in range(x.n)])
        .commit()
    )
    return [three_steps, each]


async def start(url: str, directory: Path, workflow_id: str, owner: str | None, lease: float) -> None:
    engine = Engine.from_url(url, owner=owner, lease_seconds=lease, poll_interval=0.05)
    engine.register(*build_workflows(directory))
    handle = await engine.start(workflow_id, {"n": 1 if workflow_id == "three-steps" else 3})
    print(handle.run_id, flush=True)
    result = await handle.result()
    print(json.dumps(result.to_json()), flush=True)
    await engine.close()


async def recover(url: str, directory: Path, run_id: str) -> None:
    engine = Engine.from_url(url, lease_seconds=2.0, poll_interval=0.05)
    engine.register(*build_workflows(directory))
    await engine.recover()
    result = await engine.handle(run_id).result(timeout=30)
    print(json.dumps(result.to_json()), flush=True)
    await engine.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="crash_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("url")
    s.add_argument("directory", type=Path)
    s.add_argument("workflow")
    s.add_argument("--owner")
    s.add_argument("--lease", type=float, default=2.0)
    r = sub.add_parser("recover")
    r.add_argument("url")
    r.add_argument("directory", type=Path)
    r.add_argument("run_id")
    args = parser.parse_args(argv)
    if args.command == "start":
        asyncio.run(start(args.url, args.directory, args.workflow, args.owner, args.lease))
    else:
        asyncio.run(recover(args.url, args.directory, args.run_id))


if __name__ == "__main__":
    main(sys.argv[1:])
