"""``python -m bench.opcodes``: Python bytecode the engine executes per durable step and per resumed run, counted.

On a shared machine whose speed moves by a third between moments, a change of 5% in CPU per step cannot be told
from noise by timing it, even alternating rounds. What the Python side of a step does can be counted instead:
``sys.settrace`` with opcode events counts every bytecode instruction the event loop's thread executes (the
engine, storage's Python, asyncio's Python) while the benchmark's workloads run. The count is the same from one
run to the next within about 1% (timers and the dispatcher interleave a little differently) and does not depend on the machine's moment. It leaves out what
runs in C (SQLite, orjson, pydantic-core) and the other threads, so it measures the Python a change removes, not
the time it saves; compare it between two versions of the code, never with a timing.

    python -m bench.opcodes              # the three workloads below
    python -m bench.opcodes --top 30     # and the 30 functions that execute the most
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any


class OpcodeCount:
    """Counts bytecode instructions (and function entries and resumptions) while ``on``; by function if asked."""

    def __init__(self, by_function: bool) -> None:
        self.opcodes = 0
        self.calls = 0
        self.by_function: Counter[str] | None = Counter() if by_function else None

    def __enter__(self) -> OpcodeCount:
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            self.calls += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            self.opcodes += 1
            if self.by_function is not None:
                code = frame.f_code
                self.by_function["/".join(code.co_filename.split("/")[-2:]) + ":" + code.co_name] += 1
        return self._trace


async def steps(concurrency: int, runs: int, by_function: bool) -> tuple[OpcodeCount, int]:
    """Benchmark 1's threadflow part (10 no-op durable steps a run, SQLite WAL+NORMAL): counted per step."""
    from .steps import WARMUP, threadflow
    from .workloads import STEPS

    with tempfile.TemporaryDirectory() as directory:
        await threadflow(Path(directory), 20, concurrency, "NORMAL")  # plans compiled, caches warm: not counted
        with OpcodeCount(by_function) as count:
            await threadflow(Path(directory), runs, concurrency, "NORMAL")
    return count, (runs + WARMUP) * STEPS


async def burst(runs: int, by_function: bool) -> tuple[OpcodeCount, int]:
    """Benchmark 2's burst: ``runs`` suspended runs, all but 100 resumed at once; counted per resumed run until each
    has finished (the resume, the claim, the resumed step, the next step and the run's end)."""
    from workflows import Engine

    from .common import until
    from .workloads import suspend_workflow

    wf = suspend_workflow()
    with tempfile.TemporaryDirectory() as directory:
        engine = Engine.from_url(f"sqlite+aiosqlite:///{directory}/burst.db", poll_interval=1.0)
        engine.register(wf)
        await engine.open()
        try:
            ids = [(await engine.start(wf.id, {})).run_id for _ in range(runs)]

            async def settled(status: str) -> bool:
                return await engine.store.count_runs(status) >= runs

            if not await until(lambda: settled("suspended"), 120, 0.01):
                raise RuntimeError("the runs did not all suspend within 120 s")
            for run_id in ids[:100]:  # plans compiled, caches warm: not counted
                await engine.resume(run_id, data={"ok": True})
            rest = ids[100:]
            with OpcodeCount(by_function) as count:
                await asyncio.gather(*(engine.resume(run_id, data={"ok": True}) for run_id in rest))
                finished = await until(lambda: settled("success"), 300, 0.005)
            if not finished:
                raise RuntimeError("the resumed runs did not all finish within 300 s")
        finally:
            await engine.close()
    return count, len(rest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.opcodes", description=__doc__.split("\n")[0])
    p.add_argument("--top", type=int, default=0, help="also list the N functions that execute the most bytecode")
    args = p.parse_args(argv)
    by_function = args.top > 0
    workloads: list[tuple[str, str, Callable[[], Coroutine[Any, Any, tuple[OpcodeCount, int]]]]] = [
        ("10 no-op durable steps, one run at a time (200 runs)", "step", lambda: steps(1, 200, by_function)),
        ("the same, 100 runs in flight (400 runs)", "step", lambda: steps(100, 400, by_function)),
        ("900 of 1,000 suspended runs resumed at once", "resumed run", lambda: burst(1000, by_function)),
    ]
    for title, unit, workload in workloads:
        count, n = asyncio.run(workload())
        print(f"{title}: {count.opcodes / n:,.0f} bytecode instructions a {unit}, {count.calls / n:,.1f} function "
              "entries and resumptions", flush=True)
        if count.by_function is not None:
            for name, ops in count.by_function.most_common(args.top):
                print(f"  {ops / n:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
