"""A replica that fires N concurrent resumes at one suspension and prints one line per outcome."""

from __future__ import annotations

import asyncio
import sys
import time

from tests.helpers.scaleout_flows import gated
from workflows import AlreadyResumed, Engine


async def main(url: str, run_id: str, count: int, who: str, start_at: float) -> None:
    engine = Engine.from_url(url, poll_interval=0.05, lease_seconds=2.0)
    engine.register(gated)
    await engine.open()
    await asyncio.sleep(max(0.0, start_at - time.time()))  # both replicas fire at the same moment

    async def one(i: int) -> str:
        try:
            await engine.resume(run_id, step="gate", data={"approved": True, "by": f"{who}-{i}"}, by=f"{who}-{i}")
            return f"won {who}-{i}"
        except AlreadyResumed as exc:
            return f"lost {exc.by}"

    results = await asyncio.gather(*(one(i) for i in range(count)))
    await engine.close()
    print("\n".join(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])))
