"""2. Many waiting runs: 2,000 runs suspend in their first step, then all are resumed at once.

Resume latency is measured from the ``engine.resume(...)`` call to the moment the second step starts
(``time.perf_counter()`` recorded inside that step, same process). First some runs are resumed one at a
time while all the others still wait (the latency of the path itself with 2,000 runs in the store), then
all the rest at once (the burst: its p99 is bound by throughput, since the last of N simultaneous resumes
waits for the N-1 before it: p99 < 50 ms for 1,800 at once would need ~36,000 resumes/s).

A floor row shows what the burst costs SQLite alone: the same rows written and read by plain sqlite3 on
the same schema, in the fewest statements possible (IN lists, executemany, two transactions) and with no
engine at all. Whatever an engine does on top (validation, the step itself, asyncio) comes after that.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from .common import Clock, Report, Row, latency_fields, run_limited, scratch_dir, sqlite_url, until
from .workloads import RESUMED_AT, suspend_workflow

NAME = "waiting"
BENCH = "2. waiting runs"


def sizes(quick: bool) -> dict[str, int]:
    return {"runs": 200, "one_by_one": 30} if quick else {"runs": 2000, "one_by_one": 200}


async def run(report: Report, quick: bool, *, url: str | None = None, label: str = "SQLite (WAL+NORMAL)") -> None:
    from workflows import Engine

    size = sizes(quick)
    wf = suspend_workflow()
    with scratch_dir("waiting") as directory:
        engine = Engine.from_url(url or sqlite_url(directory / "waiting.db"), poll_interval=1.0)
        engine.register(wf)
        await engine.open()
        try:
            n = size["runs"]
            RESUMED_AT.clear()

            async def start(_: int) -> str:
                return (await engine.start(wf.id, {})).run_id

            with Clock() as started:
                ids = await run_limited(n, 200, start)

                async def all_suspended() -> bool:
                    return await engine.store.count_runs("suspended") >= n

                ok = await until(all_suspended, 120, 0.005)
            report.add(Row(bench=BENCH, system="threadflow", setup=f"start -> suspended, {label}", n=n,
                           throughput=n / started.seconds, unit="runs/s", total_s=started.seconds,
                           note="" if ok else "timed out waiting for every run to suspend"))

            # -- one at a time while the others wait (the path itself, no queueing) ------------------------
            m = min(size["one_by_one"], n // 2)
            single: list[float] = []
            with Clock() as one_by_one:
                for run_id in ids[:m]:
                    t0 = time.perf_counter()
                    await engine.resume(run_id, data={"ok": True}, by="bench")
                    for _ in range(100_000):  # the step records its own start time; this only waits for it
                        if run_id in RESUMED_AT or time.perf_counter() - t0 > 30:
                            break
                        await asyncio.sleep(0.0002)
                    if run_id in RESUMED_AT:
                        single.append(RESUMED_AT[run_id] - t0)
            row = report.add(Row(
                bench=BENCH, system="threadflow", setup=f"{m} resumed one at a time, {n - m:,} others waiting, {label}",
                n=m, throughput=m / one_by_one.seconds, unit="runs/s", total_s=one_by_one.seconds,
                **latency_fields(single), note="resume() -> next step started, one resume in flight at a time"))
            report.target(BENCH, f"resume -> next step p99 < 50 ms (one at a time, {n:,} runs waiting, {label})",
                          row.p99, 50, higher_is_better=False, unit="ms")

            # -- the rest resumed at once -----------------------------------------------------------------
            rest = ids[m:]
            called: dict[str, float] = {}
            returned: dict[str, float] = {}

            async def resume(run_id: str) -> None:
                called[run_id] = time.perf_counter()
                await engine.resume(run_id, data={"ok": True}, by="bench")
                returned[run_id] = time.perf_counter()

            with Clock() as burst:
                await asyncio.gather(*(resume(r) for r in rest))
                resumed_all = time.perf_counter() - burst.start

                async def all_started() -> bool:
                    return all(r in RESUMED_AT for r in rest)

                ok = await until(all_started, 300, 0.005)
                next_step_all = time.perf_counter() - burst.start

                async def all_done() -> bool:
                    return await engine.store.count_runs("success") >= n

                await until(all_done, 300, 0.005)
            latencies = [RESUMED_AT[r] - called[r] for r in rest if r in RESUMED_AT]
            call = latency_fields([returned[r] - called[r] for r in rest if r in returned])
            row = report.add(Row(
                bench=BENCH, system="threadflow", setup=f"{len(rest):,} resumed at once, {label}", n=len(rest),
                throughput=len(rest) / burst.seconds, unit="runs/s", total_s=burst.seconds, **latency_fields(latencies),
                note=(f"resume() -> next step started; resume() calls took p50 {call['p50']:.0f} / p99 "
                      f"{call['p99']:.0f} ms; all calls returned after {resumed_all:.2f} s, every next step had "
                      f"started after {next_step_all:.2f} s, all runs finished after {burst.seconds:.2f} s; engine "
                      f"capacity {engine.capacity}" + ("" if ok else "; TIMED OUT"))))
            report.target(BENCH, f"resume -> next step p99 <= 250 ms ({len(rest):,} resumed at once, {label})", row.p99,
                          250.001, higher_is_better=False, unit="ms")
        finally:
            await engine.close()
        if url is None:
            await _floor(report, directory / "floor.db", len(ids) - m)


async def _floor(report: Report, path: Path, n: int) -> None:
    """Plain sqlite3, the engine's schema and pragmas: the SQL of ``n`` resumes, batched as far as it goes."""
    from storage import Database

    db = Database(sqlite_url(path))
    await db.open()  # migrations: the same tables and indexes the engine uses
    await db.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        now = time.time()
        ids = [f"floor{i:06}" for i in range(n)]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO runs (id, workflow_id, status, input, created_at, updated_at) VALUES (?, 'f', 'suspended', '{}', ?, ?)",
            [(i, now, now) for i in ids])
        conn.executemany(
            "INSERT INTO suspensions (run_id, path, step_id, kind, payload, status, created_at) "
            "VALUES (?, 'wait', 'wait', 'suspend', '{\"why\": \"benchmark\"}', 'open', ?)", [(i, now) for i in ids])
        conn.execute("COMMIT")
        chunks = [ids[k:k + 256] for k in range(0, n, 256)]
        resume_data = json.dumps({"ok": True})
        with Clock() as clock:
            for chunk in chunks:  # resume(): the run and its suspensions
                marks = ", ".join("?" * len(chunk))
                conn.execute(f"SELECT * FROM runs WHERE id IN ({marks})", chunk).fetchall()
                conn.execute(f"SELECT * FROM suspensions WHERE run_id IN ({marks})", chunk).fetchall()
            conn.execute("BEGIN IMMEDIATE")  # the compare-and-set, the claim and the event, for every resume
            conn.executemany(
                "UPDATE suspensions SET status = 'resolved', resolved_by = 'bench', resolved_at = ?, resume_data = ? "
                "WHERE run_id = ? AND path = 'wait' AND status = 'open'", [(now, resume_data, i) for i in ids])
            conn.executemany(
                "UPDATE runs SET status = 'running', owner = 'floor', lease_expires_at = ?, updated_at = ? "
                "WHERE id = ? AND status = 'suspended'", [(now + 30, now, i) for i in ids])
            conn.executemany(
                "INSERT INTO events (run_id, type, path, data, at) VALUES (?, 'run.resumed', 'wait', ?, ?)",
                [(i, json.dumps({"step_id": "wait", "by": "bench", "data": {"ok": True}}), now) for i in ids])
            conn.execute("COMMIT")
            for chunk in chunks:  # the executor: what the run has done so far
                marks = ", ".join("?" * len(chunk))
                conn.execute(f"SELECT * FROM step_results WHERE run_id IN ({marks})", chunk).fetchall()
                conn.execute(f"SELECT * FROM suspensions WHERE run_id IN ({marks})", chunk).fetchall()
                conn.execute(f"SELECT * FROM signals WHERE run_id IN ({marks})", chunk).fetchall()
            conn.execute("BEGIN IMMEDIATE")  # the resumed step's result and its events: then the next may start
            conn.executemany(
                "INSERT INTO step_results (run_id, path, step_id, kind, output, attempts, started_at, finished_at) "
                "VALUES (?, 'wait', 'wait', 'step', ?, 1, ?, ?)", [(i, resume_data, now, now) for i in ids])
            conn.executemany(
                "INSERT INTO events (run_id, type, path, data, at) VALUES (?, ?, 'wait', ?, ?)",
                [(i, kind, json.dumps({"step_id": "wait", "attempt": 1}), now)
                 for i in ids for kind in ("step.started", "step.succeeded")])
            conn.execute("COMMIT")
    finally:
        conn.close()
    report.add(Row(
        bench=BENCH, system="floor: raw sqlite3", setup=f"the SQL of {n:,} resumes up to the next step, no engine",
        n=n, throughput=n / clock.seconds, unit="runs/s", total_s=clock.seconds,
        note=(f"{clock.seconds * 1000:.0f} ms for what every resume must write and read (resolve, claim, event; "
              "the resumed step's result and events) in 2 transactions, IN lists and executemany: the last of "
              f"{n:,} simultaneous resumes waits at least this long, before any engine work")))

