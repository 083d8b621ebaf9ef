"""The load generator of benchmark 3, run as its own process: Slack's side of a burst of slash commands.

``python -m bench.slack_load`` reads a JSON job on stdin (``url``, ``secret``, ``forms``: the slash command
forms to deliver, ``warmup``: as many keep-alive connections to open first), sends every form at once,
signed as Slack signs them, and prints the ack latencies (seconds) and HTTP statuses as JSON.

Why a process of its own: in the bot's process, building, signing and sending 50 requests and reading 50
responses shared one event loop (and one core) with the bot, so the bot's ack latency included the load
generator's own work. Slack sends from elsewhere; so does this.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bot.emulator.delivery import sign


async def burst(job: dict[str, Any]) -> dict[str, Any]:
    url, secret = job["url"], job["secret"]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def post(form: dict[str, str]) -> tuple[float, int]:
            body = urlencode(form).encode()
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                       "X-Slack-Signature": sign(secret, timestamp, body)}
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return time.perf_counter() - t0, resp.status

        await asyncio.gather(*(post(form) for form in job["warmup"]))
        started, wall = time.perf_counter(), time.time()
        results = await asyncio.gather(*(post(form) for form in job["forms"]))
        return {"latencies": [r[0] for r in results], "statuses": [r[1] for r in results],
                "all_acked": time.perf_counter() - started, "started_at": wall}


def main() -> int:
    job = json.load(sys.stdin)
    print(json.dumps(asyncio.run(burst(job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
