"""5. Scale-out: runs/second with 1, 2 and 4 worker processes on PostgreSQL, and one process on SQLite.

N runs of the 10-step no-op workflow are inserted up front as ``pending`` (an ``Engine(url,
execute=False)`` starts them, so nothing executes them yet). Then W worker processes (``python -m
bench.worker``, each an Engine executing runs) are started, and once all have imported everything and say
``ready`` they are told ``go`` together; the clock runs from ``go`` until every run has finished, as seen
by polling the database. PostgreSQL runs in a database of its own (``tf_bench_<random>``), dropped after.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .common import POSTGRES_URL, Clock, Report, Row, run_limited, scratch_dir, sqlite_url
from .workloads import NOOP, STEPS

NAME = "scaleout"
BENCH = "5. scale-out"
ROOT = Path(__file__).resolve().parent.parent


def sizes(quick: bool) -> dict[str, Any]:
    return {"runs": 40, "workers": (1, 2)} if quick else {"runs": 1000, "workers": (1, 2, 4)}


def _admin_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


async def _admin(url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(_admin_dsn(url), timeout=5)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _insert_pending(url: str, n: int) -> float:
    from workflows import Engine

    engine = Engine(url, execute=False)
    engine.register(NOOP)
    await engine.open()
    try:
        with Clock() as clock:
            await run_limited(n, 100, lambda i: engine.start(NOOP.id, {}))
        pending = await engine.store.count_runs("pending")
        if pending < n:
            raise RuntimeError(f"only {pending} of {n} runs are pending")
    finally:
        await engine.close()
    return clock.seconds


async def _spawn_worker(url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.worker", url, "--capacity", "200", "--poll", "0.1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT))
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"worker did not start: {line!r}")
    return proc


async def _execute(url: str, n: int, workers: int) -> tuple[float, list[int]]:
    from workflows import Engine

    procs = await asyncio.gather(*(_spawn_worker(url) for _ in range(workers)))
    watcher = Engine(url, execute=False)
    await watcher.open()
    finished: list[int] = []
    try:
        with Clock() as clock:
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
            await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
            deadline = time.monotonic() + 600
            while await watcher.store.count_runs("success") < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"runs not finished after 600 s ({workers} workers)")
                await asyncio.sleep(0.02)
    finally:
        for p in procs:
            if p.stdin is not None and not p.stdin.is_closing():
                p.stdin.write(b"stop\n")
                p.stdin.close()
        for p in procs:
            try:
                out, _ = await asyncio.wait_for(p.communicate(), 30)
                tail = out.decode().strip().splitlines()
                finished.append(json.loads(tail[-1])["finished"] if tail else -1)
            except (TimeoutError, ValueError, KeyError):
                if p.returncode is None:
                    p.kill()
                    await p.wait()
                finished.append(-1)
        await watcher.close()
    return clock.seconds, finished


async def _one_config(report: Report, url: str, label: str, n: int, workers: int) -> Row | None:
    try:
        insert_s = await _insert_pending(url, n)
        seconds, finished = await _execute(url, n, workers)
    except Exception as exc:
        report.failed(BENCH, f"threadflow {label}", exc)
        return None
    return report.add(Row(
        bench=BENCH, system="threadflow", setup=f"{label}, {workers} worker process{'es' if workers > 1 else ''}",
        n=n, throughput=n / seconds, unit="runs/s", total_s=seconds,
        note=(f"{n * STEPS / seconds:,.0f} steps/s; runs per worker {finished}; inserting {n:,} pending runs "
              f"took {insert_s:.1f} s")))


async def run(report: Report, quick: bool) -> None:
    size = sizes(quick)
    n = size["runs"]
    rows: dict[str, Row] = {}
    report.note(f"scale-out: this machine has {os.cpu_count()} CPUs; worker processes and PostgreSQL share them")

    pg_ok = True
    try:
        settings = await _admin(POSTGRES_URL, "select current_setting('server_version'), current_setting('synchronous_commit'), "
                                             "current_setting('max_connections')")
        version, sync_commit, max_conn = settings[0]
    except Exception as exc:
        pg_ok = False
        report.add(Row(bench=BENCH, system="threadflow PostgreSQL", note=f"skipped: PostgreSQL unreachable at "
                                                                         f"{POSTGRES_URL} ({type(exc).__name__})"))
    if pg_ok:
        for workers in size["workers"]:
            name = f"tf_bench_{uuid.uuid4().hex[:8]}"
            await _admin(POSTGRES_URL, f'CREATE DATABASE "{name}"')
            try:
                row = await _one_config(report, _with_database(POSTGRES_URL, name),
                                        f"PostgreSQL {version.split()[0]} (synchronous_commit={sync_commit})", n, workers)
                if row:
                    rows[f"pg{workers}"] = row
            finally:
                await _admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        base = rows.get("pg1")
        for key, row in rows.items():
            if base and key != "pg1" and base.throughput and row.throughput:
                row.ratio = f"{row.throughput / base.throughput:.2f}x 1 worker"

    with scratch_dir("scaleout") as directory:
        row = await _one_config(report, sqlite_url(directory / "scaleout.db"), "SQLite WAL+NORMAL", n, 1)
        if row:
            rows["sqlite1"] = row
