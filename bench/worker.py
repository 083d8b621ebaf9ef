"""A benchmark worker process: ``python -m bench.worker URL [--capacity N] [--poll S]``.

Imports everything and builds its Engine first, prints ``ready``, then starts executing when a line ``go``
arrives on stdin, and shuts down cleanly on ``stop`` (or end of input), printing how many runs it finished.
The parent times from ``go`` to the last run finished, so interpreter start-up is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--capacity", type=int, default=200)
    p.add_argument("--poll", type=float, default=0.1)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from workflows import Engine
    from workflows.observe import add_observer

    from .workloads import WORKFLOWS

    finished = 0

    def count(kind: str, data: dict) -> None:
        nonlocal finished
        if kind == "run.finished":
            finished += 1

    add_observer(count)
    engine = Engine(args.url, capacity=args.capacity, poll_interval=args.poll)
    engine.register(*WORKFLOWS)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    await engine.open()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" or EOF
    await engine.close()
    print(json.dumps({"finished": finished, "commits": engine.db.commits}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
