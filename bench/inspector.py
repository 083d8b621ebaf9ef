"""6. The run inspector: the runs page over 100,000 runs, and how soon a committed step shows on a run page.

Runs page: 100,000 runs are written straight into a migrated SQLite file (the shape ``engine.start``
writes; statuses and workflows mixed, one every 50 ms of history), then the inspector (``threadflow ui``'s
app, operator mode) answers ``GET /runs`` over HTTP: the newest page, a status filter, a page deep in the
history (keyset cursor), and a run-id search. Latency is the whole HTTP request: two queries (the page and
the count) and the Jinja render of 50 rows.

Commit -> page: an engine executes runs of 20 steps (each ~25 ms of work) while a client follows each run's
page stream (``GET /runs/<id>/live``, server-sent events fed by ``engine.watch``), in the same process as
the engine (as ``threadflow dev`` and ``serve`` with THREADFLOW_UI run it). For each ``step.succeeded`` the
latency is the moment the update reached the client minus the event's time, which is taken just before
its commit: commit + wake-up + reading and rendering the run + the stream.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel

from .common import Report, Row, latency_fields, scratch_dir, sqlite_url

NAME = "inspector"
BENCH = "6. run inspector"
STATUSES = ["success"] * 80 + ["failed"] * 8 + ["canceled"] * 4 + ["suspended"] * 6 + ["waiting"] * 2
WORKFLOWS = ["greet-user", "approval", "deploy-app", "chat-flow"]


def sizes(quick: bool) -> dict[str, int]:
    return {"runs": 10_000, "requests": 40, "live_runs": 3} if quick else {"runs": 100_000, "requests": 300,
                                                                             "live_runs": 15}


def seed_runs(path: Path, n: int) -> list[tuple[float, str]]:
    """``n`` runs, oldest first; returns (created_at, id) of each."""
    rng = random.Random(16)
    start = time.time() - n * 0.05
    rows, keys = [], []
    for i in range(n):
        created = start + i * 0.05
        run_id = f"{rng.getrandbits(64):016x}"
        status = rng.choice(STATUSES)
        done = created + rng.uniform(0.1, 30) if status in ("success", "failed", "canceled") else None
        rows.append((run_id, rng.choice(WORKFLOWS), status, json.dumps({"name": f"user {i}"}),
                     json.dumps({"greeting": "hi"}) if status == "success" else None,
                     f"U0{rng.randrange(40):03d}", created, done or created, created, done))
        keys.append((created, run_id))
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO runs (id, workflow_id, status, input, output, started_by, created_at, updated_at, ready_at,"
        " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return keys


async def time_gets(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.text()
            assert resp.status == 200, body[:300]
        seconds.append(time.perf_counter() - started)
    return seconds


async def runs_page(report: Report, quick: bool) -> None:
    from bot.inspector import InspectorConfig, start_inspector
    from storage import Database
    from storage.run_queries import RunCursor
    from workflows import Engine
    from workflows.examples import builtin_workflows

    n = sizes(quick)
    with scratch_dir("inspector") as tmp:
        db_path = tmp / "runs.db"
        db = Database(sqlite_url(db_path))
        await db.open()
        await db.close()
        keys = seed_runs(db_path, n["runs"])
        engine = Engine(sqlite_url(db_path), execute=False)
        engine.register(*builtin_workflows())
        await engine.open()
        running = await start_inspector(engine, InspectorConfig(port=0))
        deep = RunCursor(created_at=keys[len(keys) // 10][0], id=keys[len(keys) // 10][1])
        cases = [
            ("newest page", "runs", True),
            ("status=failed", "runs?status=failed", False),
            (f"page at run {len(keys) - len(keys) // 10:,} (keyset)", f"runs?before={deep.token}", False),
            ("run id search (prefix)", f"runs?q={keys[-5000][1][:5]}", False),
            ("table refresh (live update)", "runs?partial=table", False),
        ]
        try:
            async with aiohttp.ClientSession() as http:
                await time_gets(http, running.url + "runs", 10)  # warm up
                for label, path, target in cases:
                    seconds = await time_gets(http, running.url + path, n["requests"])
                    row = report.add(Row(bench=BENCH, system="threadflow", setup=f"GET /runs, {label}",
                                         n=len(seconds), **latency_fields(seconds),
                                         note=f"{n['runs']:,} runs, 50 per page, SQLite"))
                    if target:
                        report.target(BENCH, f"runs page with {n['runs']:,} runs p95 < 100 ms", row.p95, 100,
                                      higher_is_better=False, unit="ms")
        finally:
            await running.stop()
            await engine.close()


class Tick(BaseModel):
    n: int = 0


async def committed_step_to_page(report: Report, quick: bool) -> None:
    from bot.inspector import InspectorConfig, start_inspector
    from workflows import Engine, Workflow, step

    def make_step(i: int) -> Any:
        @step(id=f"s{i:02d}", input=Tick, output=Tick)
        async def work(ctx: Any) -> Tick:
            await asyncio.sleep(0.025)
            return Tick(n=ctx.input.n + 1)

        return work

    builder = Workflow(id="twenty-steps", input=Tick, output=Tick)
    for i in range(20):
        builder = builder.then(make_step(i))
    flow = builder.commit()
    n = sizes(quick)
    with scratch_dir("inspector-live") as tmp:
        engine = Engine(sqlite_url(tmp / "live.db"), poll_interval=0.5)
        engine.register(flow)
        await engine.open()
        running = await start_inspector(engine, InspectorConfig(port=0))
        latencies: list[float] = []
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(n["live_runs"]):
                    handle = await engine.start("twenty-steps", {})
                    opened = time.time()
                    async with http.get(f"{running.url}runs/{handle.run_id}/live?after=0") as resp:
                        event = None
                        async for raw in resp.content:
                            line = raw.decode().rstrip("\n")
                            if line.startswith("event: "):
                                event = line[7:]
                            elif line.startswith("data: ") and event == "update":
                                received = time.time()
                                for ev in json.loads(line[6:])["events"]:
                                    if ev["type"] == "step.succeeded" and ev["at"] > opened:
                                        latencies.append(received - ev["at"])
                            elif line.startswith("data: ") and event == "end":
                                break
                    await handle.result(timeout=30)
        finally:
            await running.stop()
            await engine.close()
    row = report.add(Row(bench=BENCH, system="threadflow", setup="committed step -> run page (SSE, same process)",
                         n=len(latencies), **latency_fields(latencies),
                         note="event time (just before its commit) to the update reaching the page's stream"))
    report.target(BENCH, "a committed step shows on an open run page p99 < 200 ms", row.p99, 200,
                  higher_is_better=False, unit="ms")


async def run(report: Report, quick: bool) -> None:
    await runs_page(report, quick)
    await committed_step_to_page(report, quick)
