"""9. PostgreSQL: threadflow and DBOS on the same server, 10 no-op durable steps, one run at a time and 100 in flight.

Both run in this process against databases of their own on ``BENCH_POSTGRES_URL`` (created and dropped).
threadflow: one Engine (one process executing runs) through asyncpg; DBOS: ``@DBOS.workflow`` of 10
``@DBOS.step`` with its system database on the same server (psycopg). What each writes per step:
threadflow a step-result row, its event row and the run's position (one transaction, shared by every run
whose step finished meanwhile); DBOS one ``operation_outputs`` row per step (its own transaction).

Round trips are counted for threadflow, not estimated: SQLAlchemy events on the engine's connections count
every ``BEGIN``, statement and ``COMMIT`` sent to the server while the measured runs execute, divided by the
steps executed (the run's own start and finish records are included, so this is an upper bound per step).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .common import POSTGRES_URL, Report, Row, latency_fields, restore_default_executor
from .scaleout import _admin, _with_database
from .steps import WARMUP, _dbos_workflow, _measure
from .workloads import STEPS, noop_workflow

NAME = "postgres"
BENCH = "9. PostgreSQL"
CONCURRENCY = 100


def sizes(quick: bool) -> dict[str, int]:
    return {"seq": 30, "conc": 100, "dbos_seq": 20, "dbos_conc": 100} if quick else \
        {"seq": 300, "conc": 1000, "dbos_seq": 200, "dbos_conc": 1000}


class RoundTrips:
    """Counts what an SQLAlchemy engine sends: transactions begun, statements executed, commits."""

    def __init__(self) -> None:
        self.begins = self.statements = self.commits = 0

    def attach(self, async_engine: Any) -> None:
        from sqlalchemy import event

        sync = async_engine.sync_engine
        event.listen(sync, "begin", self._begin)
        event.listen(sync, "before_cursor_execute", self._statement)
        event.listen(sync, "commit", self._commit)

    def _begin(self, *_: Any) -> None:
        self.begins += 1

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.begins, self.statements, self.commits


async def threadflow(url: str, n: int, concurrency: int) -> tuple[float, list[float], dict[str, Any]]:
    from workflows import Engine

    wf = noop_workflow()
    engine = Engine(url, poll_interval=1.0)
    engine.register(wf)
    await engine.open()
    counter = RoundTrips()
    backend = engine.db._backend  # the bench looks inside: round trips are what it measures
    counter.attach(backend.writer)
    if getattr(backend, "reader", backend.writer) is not backend.writer:
        counter.attach(backend.reader)
    try:
        async def one(_: int) -> None:
            handle = await engine.start(wf.id, {})
            result = await handle.result()
            if result.status != "success":
                raise RuntimeError(f"run ended {result.status}: {result.error}")

        for i in range(WARMUP):
            await one(i)
        b0, s0, c0 = counter.snapshot()
        cpu0 = time.process_time()
        seconds, latencies = await _measure(n, concurrency, one)
        cpu = time.process_time() - cpu0
        b1, s1, c1 = counter.snapshot()
        steps = n * STEPS
        stats = {"begins": b1 - b0, "statements": s1 - s0, "commits": c1 - c0,
                 "round_trips_per_step": ((b1 - b0) + (s1 - s0) + (c1 - c0)) / steps,
                 "statements_per_step": (s1 - s0) / steps, "cpu_us_per_step": cpu / steps * 1e6}
    finally:
        await engine.close()
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
                note=(f"{stats['round_trips_per_step']:.2f} round trips/step ({stats['statements_per_step']:.2f} "
                      f"statements, {stats['commits'] / (n * STEPS):.2f} commits), {stats['cpu_us_per_step']:.0f} "
                      "us CPU/step; writes a result row + event row + run position per step"),
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
