"""A script that runs one workflow under ``asyncio.run`` whose ``async def`` step spins on the CPU forever: the test
presses Ctrl+C twice (SIGINT). The first asks asyncio to cancel the main task, which cannot happen while the loop
is busy; the second raises KeyboardInterrupt inside the step's code. That one comes from a signal, so the engine
lets it through: the process stops and the run is handed back, not failed as if the step had raised it.

    python -m tests.reliability.spin_main DB_URL      prints the run id, then "spinning" from inside the step
"""

from __future__ import annotations

import asyncio
import signal
import sys

from pydantic import BaseModel

from workflows import Engine, StepContext, Workflow, step


class Num(BaseModel):
    n: int


@step(id="spin", input=Num, output=Num)
async def spin(ctx: StepContext[Num]) -> Num:
    print("spinning", flush=True)
    count = 0
    while True:  # CPU-bound Python code in an async def: the event loop never gets control back
        count += 1


async def main(url: str) -> None:
    engine = Engine.from_url(url, lease_seconds=2.0, poll_interval=0.05)
    engine.register(Workflow(id="spin", input=Num, output=Num).then(spin).commit())
    try:
        handle = await engine.start("spin", {"n": 1})
        print(handle.run_id, flush=True)
        await handle.result()
    finally:
        await engine.close()


if __name__ == "__main__":
    # As in a terminal: a process started in the background (by a test runner, say) may inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(main(sys.argv[1]))
