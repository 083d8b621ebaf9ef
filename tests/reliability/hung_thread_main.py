"""A process whose plain ``def`` step hangs (``time.sleep`` for an hour) past its 0.3 s timeout, then stops: the
step's thread cannot be stopped, and it must not keep the process from exiting.

    python -m tests.reliability.hung_thread_main DB_URL     prints the run's status and error type, the number of
                                                            abandoned step threads, then "closed"; then exits
"""

from __future__ import annotations

import asyncio
import sys
import time

from pydantic import BaseModel

from workflows import Engine, StepContext, Workflow, step


class Num(BaseModel):
    n: int


@step(id="hang", input=Num, output=Num, timeout=0.3)
def hang(ctx: StepContext[Num]) -> Num:
    time.sleep(3600)  # a sync HTTP call without a timeout, say
    return ctx.input


async def main(url: str) -> None:
    engine = Engine.from_url(url, lease_seconds=2.0, poll_interval=0.05)
    engine.register(Workflow(id="hangs-in-a-thread", input=Num, output=Num).then(hang).commit())
    try:
        result = await (await engine.start("hangs-in-a-thread", {"n": 1})).result(timeout=30)
        print(result.status, result.error_type, flush=True)
        print(f"abandoned {engine.abandoned_step_threads}", flush=True)
    finally:
        await engine.close()
    print("closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
