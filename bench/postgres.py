"""9. PostgreSQL: threadflow and DBOS on the same server, 10 no-op durable steps, one run at a time and 100 in flight.

Both run in this process against databases of their own on ``BENCH_POSTGRES_URL`` (created and dropped).
threadflow: one Engine (one process executing runs) through asyncpg; DBOS: ``@DBOS.workflow`` of 10
``@DBOS.step`` with its system database on the same server (psycopg). What each writes per step:
threadflow a step-result row and its event rows, in one statement that also checks this process still
holds the run (its own transaction one run at a time; one transaction shared by every run whose step
finished meanwhile with many in flight); DBOS one ``operation_outputs`` row per step (its own transaction).

Round trips are counted for threadflow, not estimated, on the wire (``wire.py``): every request any of
its asyncpg connections sends to the server while the measured runs execute (simple queries such as
``BEGIN``/``COMMIT``, each extended-protocol Sync, each Flush of a prepare; pings included), divided by the
steps executed (the runs' own start and finish records are included, so this is an upper bound per step).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .common import POSTGRES_URL, Report, Row, latency_fields, restore_default_executor
from .scaleout import _admin, _with_database
from .steps import WARMUP, _dbos_workflow, _measure
from .wire import WireCounter
from .workloads import STEPS, noop_workflow

NAME = "postgres"
BENCH = "9. PostgreSQL"
CONCURRENCY = 100


def sizes(quick: bool) -> dict[str, int]:
    return {"seq": 30, "conc": 100, "dbos_seq": 20, "dbos_conc": 100} if quick else \
        {"seq": 300, "conc": 1000, "dbos_seq": 200, "dbos_conc": 1000}


async def threadflow(url: str, n: int, concurrency: int) -> tuple[float, list[float], dict[str, Any]]:
    from workflows import Engine

    wf = noop_workflow()
    counter = WireCounter()
    counter.install()  # before the engine opens: every connection it opens is counted
    engine = Engine(url, poll_interval=1.0)
    engine.register(wf)
    try:
        await engine.open()

        async def one(_: int) -> None:
            handle = await engine.start(wf.id, {})
            result = await handle.result()
            if result.status != "success":
                raise RuntimeError(f"run ended {result.status}: {result.error}")

        for i in range(WARMUP):
            await one(i)
        before = counter.snapshot()
        cpu0 = time.process_time()
        seconds, latencies = await _measure(n, concurrency, one)
        cpu = time.process_time() - cpu0
        sent = WireCounter.since(before, counter.snapshot())
        steps = n * STEPS
        stats: dict[str, Any] = {**sent, "round_trips_per_step": sent["round_trips"] / steps,
                                 "simple_queries_per_step": sent["simple_queries"] / steps,
                                 "statements_per_step": sent["executes"] / steps, "cpu_us_per_step": cpu / steps * 1e6}
    finally:
        await engine.close()
        counter.uninstall()
    return seconds, latencies, stats


async def dbos(url: str, plan: list[tuple[int, int]]) -> list[tuple[float, list[float]]]:
    from dbos import DBOS

    workflow = _dbos_workflow()
    sync_url = url.replace("postgresql+asyncpg://", "postgresql://")
    DBOS(config={"name": "tfbench-pg", "system_database_url": sync_url, "log_level": "WARNING"})
    DBOS.launch()
    out = []
    try:
        async def one(_: int) -> None:
            await workflow()

        for i in range(WARMUP):
            await one(i)
        for n, concurrency in plan:
            out.append(await _measure(n, concurrency, one))
    finally:
        DBOS.destroy(destroy_registry=False)
        restore_default_executor()
    return out


def _setup(concurrency: int, n: int, label: str) -> str:
    mode = "1 at a time" if concurrency == 1 else f"{min(concurrency, n)} in flight"
    return f"{mode}, {n:,} runs, {label}"


async def run(report: Report, quick: bool) -> None:
    from .common import version_of

    size = sizes(quick)
    try:
        found = await _admin(POSTGRES_URL, "select current_setting('server_version'), current_setting('synchronous_commit')")
        version, sync_commit = found[0]
    except Exception as exc:
        report.add(Row(bench=BENCH, system="threadflow PostgreSQL",
                       note=f"skipped: PostgreSQL unreachable at {POSTGRES_URL} ({type(exc).__name__})"))
        return
    label = f"PostgreSQL {version.split()[0]}, synchronous_commit={sync_commit}"
    tf: dict[str, Row] = {}
    # The server's own synchronous_commit (the comparison with DBOS), then off from the URL (README: what it trades).
    for sync, mode, n, concurrency in (
        (None, "seq", size["seq"], 1), (None, "conc", size["conc"], CONCURRENCY),
        ("off", "seq-off", size["seq"], 1), ("off", "conc-off", size["conc"], CONCURRENCY),
    ):
        name = f"tf_bench_{uuid.uuid4().hex[:8]}"
        await _admin(POSTGRES_URL, f'CREATE DATABASE "{name}"')
        try:
            url = _with_database(POSTGRES_URL, name) + (f"?synchronous_commit={sync}" if sync else "")
            seconds, latencies, stats = await threadflow(url, n, concurrency)
            setup = _setup(concurrency, n, label if sync is None else
                           f"PostgreSQL {version.split()[0]}, synchronous_commit={sync} (from the URL)")
            tf[mode] = report.add(Row(
                bench=BENCH, system="threadflow", setup=setup, n=n,
                throughput=n * STEPS / seconds, unit="steps/s", total_s=seconds, **latency_fields(latencies),
                note=(f"{stats['round_trips_per_step']:.2f} round trips/step counted on the wire "
                      f"({stats['simple_queries_per_step']:.2f} simple queries: BEGIN/COMMIT; "
                      f"{stats['statements_per_step']:.2f} statements executed), {stats['cpu_us_per_step']:.0f} "
                      "us CPU/step; writes a result row + its event rows per step, one statement"),
                extra=stats))
        except Exception as exc:
            report.failed(BENCH, "threadflow", exc)
        finally:
            await _admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    dbos_version = version_of("dbos")
    peer: dict[str, Row] = {}
    if dbos_version is None:
        report.add(Row(bench=BENCH, system="DBOS", note="skipped: pip install dbos"))
    else:
        name = f"tf_bench_dbos_{uuid.uuid4().hex[:8]}"
        await _admin(POSTGRES_URL, f'CREATE DATABASE "{name}"')
        try:
            plan = [("seq", size["dbos_seq"], 1), ("conc", size["dbos_conc"], CONCURRENCY)]
            measured = await dbos(_with_database(POSTGRES_URL, name), [(n, c) for _, n, c in plan])
            for (mode, n, concurrency), (seconds, latencies) in zip(plan, measured, strict=True):
                peer[mode] = report.add(Row(
                    bench=BENCH, system=f"DBOS {dbos_version}", setup=_setup(concurrency, n, label), n=n,
                    throughput=n * STEPS / seconds, unit="steps/s", total_s=seconds, **latency_fields(latencies),
                    note="async @DBOS.workflow of 10 @DBOS.step, PostgreSQL system database; writes one "
                         "operation_outputs row per step"))
        except Exception as exc:
            report.failed(BENCH, f"DBOS {dbos_version}", exc)
        finally:
            await _admin(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    for mode, what in (("seq", "one run at a time"), ("conc", "100 runs in flight")):
        mine, theirs = tf.get(mode), peer.get(mode)
        ratio = mine.throughput / theirs.throughput if mine and theirs and mine.throughput and theirs.throughput else None
        if mine is not None and ratio is not None:
            mine.ratio = f"{ratio:.2f}x DBOS"
        report.target(BENCH, f"PostgreSQL, {what}: >= 3x DBOS on the same server", ratio, 3.0,
                      higher_is_better=True, unit="x")
    seq = tf.get("seq")
    report.target(BENCH, "PostgreSQL: <= 2 round trips to the database per step (counted, one run at a time)",
                  seq.extra.get("round_trips_per_step") if seq else None, 2.0001, higher_is_better=False, unit="")
