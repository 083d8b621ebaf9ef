"""1. Durable step overhead: a 10-step no-op workflow on an SQLite file, vs LangGraph and DBOS.

Each system runs the same graph: 10 steps that do nothing, each step's completion made durable before
the next starts. Measured one run at a time and with 100 runs in flight; throughput is durable steps per
second (10 per run; the run's own start and finish records are not counted as steps).

SQLite durability differs by default, so it is printed with every row and matched variants are run:
threadflow uses WAL + synchronous=NORMAL (a commit survives a process crash; a power loss may lose the
last commits); LangGraph's AsyncSqliteSaver uses WAL with SQLite's default synchronous=FULL; DBOS uses
SQLite's default rollback journal with synchronous=FULL; Mastra's LibSQLStore uses LibSQL's defaults (the
"as shipped" row) which are WAL+NORMAL, as threadflow's.

What each system writes per step differs, and every row says it: threadflow inserts a step-result row and an
event row and moves the run's position; LangGraph writes a checkpoint (and its writes) per super-step;
DBOS inserts one ``operation_outputs`` row per step; Mastra upserts the run's whole snapshot (twice a step).
Mastra 1.71's LibSQLStore sets WAL + synchronous=NORMAL itself (with busy_timeout, temp_store, cache and mmap
sizes): its shipped configuration is already threadflow's durability, so it runs as shipped. (Handing it
a client with the pragmas set by the benchmark instead skips that tuning and ran 3-5x slower: unfair.)

CPU per durable step is the process time of the process that executes the runs (here this one: the
engine, SQLite's writer thread and the benchmark's own driver), divided by the steps executed.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from pathlib import Path
from typing import Any

from .common import (
    Clock,
    Report,
    Row,
    env,
    latency_fields,
    restore_default_executor,
    run_limited,
    scratch_dir,
    sqlite_url,
    version_of,
)
from .workloads import STEPS, noop_workflow

NAME = "steps"
BENCH = "1. durable steps"
CONCURRENCY = 100
WARMUP = 10
#: Rounds of threadflow and Mastra alternated, one run at a time (the median round of each is reported).
ROUNDS = 3


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"seq": 50, "conc": 100, "peer_seq": 30, "peer_conc": 100, "dbos_seq": 10, "dbos_conc": 20,
                "mastra_seq": 30, "mastra_conc": 100, "raw": 2000, "batch_steps": 20000}
    return {"seq": 1000, "conc": 1000, "peer_seq": 1000, "peer_conc": 1000, "dbos_seq": 300, "dbos_conc": 300,
            "mastra_seq": 1000, "mastra_conc": 1000, "raw": 20000, "batch_steps": 200000}


async def _measure(n: int, concurrency: int, one: Any) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def timed(i: int) -> None:
        t0 = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - t0)

    with Clock() as clock:
        if concurrency == 1:
            for i in range(n):
                await timed(i)
        else:
            await run_limited(n, concurrency, timed)
    return clock.seconds, latencies


def _row(system: str, setup: str, n: int, seconds: float, latencies: list[float], **kw: Any) -> Row:
    return Row(bench=BENCH, system=system, setup=setup, n=n, throughput=n * STEPS / seconds, unit="steps/s",
               total_s=seconds, **latency_fields(latencies), **kw)


def _setup(concurrency: int, n: int, sync: str) -> str:
    mode = "1 at a time" if concurrency == 1 else f"{min(concurrency, n)} in flight"
    return f"{mode}, {n:,} runs, {sync}"


# -- threadflow -----------------------------------------------------------------------------------------

async def threadflow(directory: Path, n: int, concurrency: int, synchronous: str,
                     tag: str = "") -> tuple[float, list[float], dict[str, Any]]:
    from workflows import Engine

    wf = noop_workflow()
    with env(THREADFLOW_SQLITE_SYNCHRONOUS=synchronous):
        engine = Engine.from_url(sqlite_url(directory / f"tf-{synchronous}-{concurrency}{tag}.db"), poll_interval=1.0)
        engine.register(wf)
        await engine.open()
        try:
            async def one(_: int) -> None:
                handle = await engine.start(wf.id, {})
                result = await handle.result()
                if result.status != "success":
                    raise RuntimeError(f"run ended {result.status}: {result.error}")

            for i in range(WARMUP):
                await one(i)
            commits0, writes0 = engine.db.commits, engine.db.batched_writes
            cpu0 = time.process_time()
            seconds, latencies = await _measure(n, concurrency, one)
            cpu = time.process_time() - cpu0
            stats = {"commits": engine.db.commits - commits0, "queued_writes": engine.db.batched_writes - writes0,
                     "cpu_us_per_step": cpu / (n * STEPS) * 1e6}
        finally:
            await engine.close()
    return seconds, latencies, stats


# -- LangGraph ------------------------------------------------------------------------------------------

def _langgraph_graph() -> Any:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        n: int

    def node(_: int) -> Any:
        async def noop(state: State) -> None:
            return None

        return noop

    builder = StateGraph(State)
    previous = START
    for i in range(STEPS):
        builder.add_node(f"s{i}", node(i))
        builder.add_edge(previous, f"s{i}")
        previous = f"s{i}"
    builder.add_edge(previous, END)
    return builder


async def langgraph(directory: Path, n: int, concurrency: int, synchronous: str | None) -> tuple[float, list[float], str]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    builder = _langgraph_graph()
    path = directory / f"lg-{synchronous}-{concurrency}.db"
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        await saver.setup()
        if synchronous is not None:
            await saver.conn.execute(f"PRAGMA synchronous={synchronous}")
        cur = await saver.conn.execute("PRAGMA synchronous")
        sync_level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get((await cur.fetchone())[0], "?")
        cur = await saver.conn.execute("PRAGMA journal_mode")
        journal = (await cur.fetchone())[0]
        graph = builder.compile(checkpointer=saver)
        kwargs: dict[str, Any] = {}
        if "durability" in inspect.signature(graph.ainvoke).parameters:
            kwargs["durability"] = "sync"
            how = 'durability="sync"'
        else:  # older LangGraph: checkpoints are written before the next step by default
            how = "default checkpointing (no durability parameter)"

        async def one(_: int) -> None:
            await graph.ainvoke({"n": 0}, {"configurable": {"thread_id": uuid.uuid4().hex}}, **kwargs)

        for i in range(WARMUP):
            await one(i)
        seconds, latencies = await _measure(n, concurrency, one)
    return seconds, latencies, f"{journal.upper()}+{sync_level}; {how}"


# -- DBOS -----------------------------------------------------------------------------------------------

_DBOS_WORKFLOW: Any = None


def _dbos_workflow() -> Any:
    global _DBOS_WORKFLOW
    if _DBOS_WORKFLOW is not None:
        return _DBOS_WORKFLOW
    from dbos import DBOS

    steps = []
    for i in range(STEPS):
        async def noop() -> None:
            return None

        steps.append(DBOS.step(name=f"tfbench_noop_{i}")(noop))

    async def ten_steps() -> None:
        for s in steps:
            await s()

    _DBOS_WORKFLOW = DBOS.workflow(name="tfbench_ten_steps")(ten_steps)
    return _DBOS_WORKFLOW


async def dbos(directory: Path, runs: list[tuple[int, int]]) -> list[tuple[float, list[float], str]]:
    """DBOS is a process-wide singleton: launch it once and run every configuration in ``runs``."""
    import sqlalchemy as sa
    from dbos import DBOS

    workflow = _dbos_workflow()
    path = directory / "dbos.db"
    DBOS(config={"name": "tfbench", "system_database_url": f"sqlite:///{path}", "log_level": "WARNING"})
    DBOS.launch()
    out = []
    try:
        async def one(_: int) -> None:
            await workflow()

        for i in range(WARMUP):
            await one(i)
        for n, concurrency in runs:
            seconds, latencies = await _measure(n, concurrency, one)
            out.append((seconds, latencies, ""))
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            journal = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        engine.dispose()
        # DBOS sets no synchronous pragma: SQLite's default (FULL) applies on its connections.
        mode = f"{str(journal).upper()} journal+FULL (SQLite defaults)"
        out = [(s, lat, mode) for s, lat, _ in out]
    finally:
        DBOS.destroy(destroy_registry=False)
        restore_default_executor()
    return out


# -- floors ---------------------------------------------------------------------------------------------

async def raw_aiosqlite(directory: Path, n: int, synchronous: str) -> tuple[float, list[float]]:
    """One INSERT + COMMIT per iteration on one aiosqlite connection: the floor of any aiosqlite engine."""
    import aiosqlite

    async with aiosqlite.connect(directory / f"raw-{synchronous}.db", isolation_level=None) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={synchronous}")
        await conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, run TEXT, data TEXT)")
        latencies = []
        with Clock() as clock:
            for i in range(n):
                t0 = time.perf_counter()
                await conn.execute("BEGIN IMMEDIATE")
                await conn.execute("INSERT INTO t (run, data) VALUES (?, ?)", ("r", f"step {i}"))
                await conn.execute("COMMIT")
                latencies.append(time.perf_counter() - t0)
    return clock.seconds, latencies


def executemany_floor(directory: Path, steps: int, synchronous: str, per_commit: int = 1000) -> tuple[float, int]:
    """The floor of 100 runs in flight: one writer, three statements a step as ``executemany`` batches.

    Like the engine's group commit with no engine: per commit, ``per_commit`` steps' result rows and event
    rows are inserted and their runs' positions updated, by plain sqlite3 in one ``BEGIN IMMEDIATE``.
    """
    import sqlite3

    conn = sqlite3.connect(directory / f"floor-{synchronous}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, position TEXT, updated REAL)")
    conn.execute("CREATE TABLE results (run_id TEXT, path TEXT, output TEXT, PRIMARY KEY (run_id, path))")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, run_id TEXT, kind TEXT, data TEXT)")
    run_ids = [uuid.uuid4().hex for _ in range(100)]
    conn.executemany("INSERT INTO runs VALUES (?, '', 0)", [(r,) for r in run_ids])
    commits = 0
    with Clock() as clock:
        for start in range(0, steps, per_commit):
            batch = [(run_ids[i % 100], f"s{i // 100}") for i in range(start, min(steps, start + per_commit))]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO results VALUES (?, ?, 'null')", batch)
            conn.executemany("INSERT INTO events (run_id, kind, data) VALUES (?, 'step.succeeded', ?)", batch)
            conn.executemany("UPDATE runs SET position = ?, updated = 1 WHERE id = ?", [(p, r) for r, p in batch])
            conn.execute("COMMIT")
            commits += 1
    conn.close()
    return clock.seconds, commits


# -- the benchmark ----------------------------------------------------------------------------------------

def _ratio(mine: float | None, peers: dict[str, float | None]) -> str:
    parts = [f"{mine / v:.2f}x {name}" for name, v in peers.items() if mine and v]
    return ", ".join(parts)


async def run(report: Report, quick: bool) -> None:
    size = sizes(quick)
    lg_version = version_of("langgraph")
    dbos_version = version_of("dbos")
    results: dict[tuple[str, str], Row] = {}

    with scratch_dir("steps") as directory:
        mastra = _mastra_node(report)
        # One run at a time against Mastra first, in rounds that alternate the two (see _against_mastra).
        await _against_mastra(report, results, directory, size, quick, mastra)
        # --quick skips the matched-durability variants (threadflow FULL, LangGraph NORMAL).
        for label, sync in (("NORMAL", "NORMAL"),) + ((("FULL", "FULL"),) if not quick else ()):
            for mode, n, concurrency in (("seq", size["seq"], 1), ("conc", size["conc"], CONCURRENCY)):
                if ("tf-" + label, mode) in results:
                    continue  # measured in the rounds against Mastra
                try:
                    seconds, latencies, stats = await threadflow(directory, n, concurrency, sync)
                    results[("tf-" + label, mode)] = report.add(_threadflow_row(n, concurrency, sync, seconds, latencies, stats))
                except Exception as exc:
                    report.failed(BENCH, f"threadflow WAL+{sync}", exc)

        if lg_version is None or version_of("langgraph-checkpoint-sqlite") is None:
            report.add(Row(bench=BENCH, system="LangGraph", note="skipped: pip install langgraph langgraph-checkpoint-sqlite"))
        else:
            for label, sync in (("default", None),) + ((("NORMAL", "NORMAL"),) if not quick else ()):
                for mode, n, concurrency in (("seq", size["peer_seq"], 1), ("conc", size["peer_conc"], CONCURRENCY)):
                    try:
                        seconds, latencies, how = await langgraph(directory, n, concurrency, sync)
                        results[("lg-" + label, mode)] = report.add(_row(
                            f"LangGraph {lg_version}", _setup(concurrency, n, how.split(";")[0]), n, seconds, latencies,
                            note=("AsyncSqliteSaver, " + how.split("; ")[1]) + (" (PRAGMA set by the benchmark)" if sync else "")
                            + "; writes a checkpoint + its writes per super-step"))
                    except Exception as exc:
                        report.failed(BENCH, f"LangGraph {lg_version}", exc)

        if dbos_version is None:
            report.add(Row(bench=BENCH, system="DBOS", note="skipped: pip install dbos"))
        else:
            try:
                plan = [("seq", size["dbos_seq"], 1), ("conc", size["dbos_conc"], CONCURRENCY)]
                measured = await dbos(directory, [(n, c) for _, n, c in plan])
                for (mode, n, concurrency), (seconds, latencies, how) in zip(plan, measured, strict=True):
                    results[("dbos", mode)] = report.add(_row(
                        f"DBOS {dbos_version}", _setup(concurrency, n, how.split(" (")[0]), n, seconds, latencies,
                        note="async @DBOS.workflow of 10 @DBOS.step, SQLite system database (defaults); writes "
                             "one operation_outputs row per step"))
            except Exception as exc:
                report.failed(BENCH, f"DBOS {dbos_version}", exc)

        if mastra is not None:
            await _mastra(report, results, directory, size, mastra,
                          modes=("conc",) if ("mastra", "seq") in results else ("seq", "conc"))

        for sync in ("NORMAL", "FULL"):
            try:
                seconds, commits = executemany_floor(directory, size["batch_steps"], sync)
                report.add(Row(bench=BENCH, system="floor: executemany group commit", setup=f"plain sqlite3, WAL+{sync}",
                               n=size["batch_steps"], throughput=size["batch_steps"] / seconds, unit="steps/s",
                               total_s=seconds, note=(f"{commits} commits of 1,000 steps: per step a result row, an "
                                                      "event row, a position update (3 executemany a commit), no engine")))
            except Exception as exc:
                report.failed(BENCH, f"executemany floor {sync}", exc)
            try:
                seconds, latencies = await raw_aiosqlite(directory, size["raw"], sync)
                report.add(Row(bench=BENCH, system="floor: raw aiosqlite", setup=f"INSERT+COMMIT loop, WAL+{sync}",
                               n=size["raw"], throughput=size["raw"] / seconds, unit="commits/s", total_s=seconds,
                               **latency_fields(latencies), note="one connection, 3 thread hops per commit"))
            except Exception as exc:
                report.failed(BENCH, f"raw aiosqlite {sync}", exc)

    def tput(key: tuple[str, str]) -> float | None:
        row = results.get(key)
        return row.throughput if row else None

    for mode in ("seq", "conc"):
        for tf_label, peers in (
            ("NORMAL", {"LangGraph": ("lg-default", mode), "LangGraph@NORMAL": ("lg-NORMAL", mode), "DBOS": ("dbos", mode),
                        "Mastra": ("mastra", mode)}),
            ("FULL", {"LangGraph@FULL": ("lg-default", mode), "DBOS": ("dbos", mode)}),
        ):
            row = results.get(("tf-" + tf_label, mode))
            if row is not None:
                row.ratio = _ratio(row.throughput, {name: tput(key) for name, key in peers.items()})

    seq_tf, seq_lg = tput(("tf-NORMAL", "seq")), tput(("lg-default", "seq"))
    seq_mastra = tput(("mastra", "seq"))
    report.target(BENCH, "one run at a time >= 10x LangGraph (threadflow WAL+NORMAL / LangGraph default)",
                  seq_tf / seq_lg if seq_tf and seq_lg else None, 10.0, higher_is_better=True, unit="x")
    report.target(BENCH, "one run at a time >= 3x Mastra (both WAL+NORMAL; Mastra as shipped)",
                  seq_tf / seq_mastra if seq_tf and seq_mastra else None, 3.0, higher_is_better=True, unit="x")
    report.target(BENCH, "100 runs in flight >= 20,000 durable steps/s (WAL+NORMAL)", tput(("tf-NORMAL", "conc")),
                  20000, higher_is_better=True, unit="steps/s")
    if not quick:
        report.target(BENCH, "100 runs in flight >= 12,000 durable steps/s (WAL+FULL)", tput(("tf-FULL", "conc")),
                      12000, higher_is_better=True, unit="steps/s")
    cpu = results.get(("tf-NORMAL", "seq"))
    if cpu is not None:
        report.note(f"CPU per durable step (threadflow, WAL+NORMAL): {cpu.extra['cpu_us_per_step']:.0f} us one run "
                    f"at a time, {results[('tf-NORMAL', 'conc')].extra['cpu_us_per_step']:.0f} us with 100 in flight"
                    if ("tf-NORMAL", "conc") in results else
                    f"CPU per durable step (threadflow, WAL+NORMAL): {cpu.extra['cpu_us_per_step']:.0f} us")


def _threadflow_row(n: int, concurrency: int, sync: str, seconds: float, latencies: list[float],
                    stats: dict[str, Any], rounds: str = "") -> Row:
    per_commit = stats["queued_writes"] / max(1, stats["commits"])
    return _row("threadflow", _setup(concurrency, n, f"WAL+{sync}"), n, seconds, latencies,
                note=(f"{stats['commits'] / n:.1f} commits/run, {per_commit:.1f} writes/commit, "
                      f"{stats['cpu_us_per_step']:.0f} us CPU/step; writes a fenced result row and two event rows "
                      "(step.started, step.succeeded) per step" + rounds),
                extra=stats)


def _mastra_node(report: Report) -> str | None:
    """The Node binary for Mastra (its packages installed), or None with a "skipped" row saying why."""
    from . import mastra_peer

    try:
        return mastra_peer.prepare()  # blocking: npm ci, once
    except mastra_peer.Skipped as exc:
        report.add(Row(bench=BENCH, system="Mastra", note=f"skipped: {exc}"))
        return None


def _median(measured: list[tuple[float, Any]]) -> int:
    """The index of the median round by time (the middle one of an odd number, the faster middle one of an even)."""
    order = sorted(range(len(measured)), key=lambda k: measured[k][0])
    return order[(len(order) - 1) // 2]


async def _against_mastra(report: Report, results: dict[tuple[str, str], Row], directory: Path, size: dict[str, int],
                          quick: bool, node: str | None) -> None:
    """threadflow one run at a time (WAL+NORMAL), and Mastra's same runs, in rounds that alternate the two.

    This machine's speed moves by a third between moments, more than the difference being measured: two rows taken
    minutes apart compare moments as much as systems. So each system runs ``ROUNDS`` times, each round in a fresh
    file, threadflow then Mastra, and each row is the median round of its system; its note lists every round and the
    ratio within each pair.
    """
    rounds = 1 if quick else ROUNDS
    n, n_mastra = size["seq"], size["mastra_seq"]
    ours: list[tuple[float, tuple[list[float], dict[str, Any]]]] = []
    theirs: list[tuple[float, dict[str, Any]]] = []
    for k in range(rounds):
        try:
            seconds, latencies, stats = await threadflow(directory, n, 1, "NORMAL", tag=f"-round-{k}")
            ours.append((seconds, (latencies, stats)))
        except Exception as exc:
            report.failed(BENCH, "threadflow WAL+NORMAL", exc)
            break  # the rounds measured so far are reported (none: each system is measured on its own after)
        if node is not None:
            try:
                out = await _mastra_once(node, directory / f"mastra-1-round-{k}.db", n_mastra, 1)
                theirs.append((float(out["seconds"]), out))
            except Exception as exc:
                report.failed(BENCH, "Mastra", exc)
                node = None
    if not ours:
        return
    rates = [n * STEPS / s for s, _ in ours]
    mastra_rates = [n_mastra * STEPS / s for s, _ in theirs]
    listed = ""
    if len(ours) > 1:
        listed = f"; median of {len(ours)} rounds, steps/s " + ", ".join(f"{r:,.0f}" for r in rates)
        if len(mastra_rates) == len(rates):
            listed += (" (alternated with Mastra's: " + ", ".join(f"{m:,.0f}" for m in mastra_rates) + "; ratio in each pair "
                       + ", ".join(f"{r / m:.2f}x" for r, m in zip(rates, mastra_rates, strict=True)) + ")")
    mid = _median(ours)
    seconds, (latencies, stats) = ours[mid]
    results[("tf-NORMAL", "seq")] = report.add(_threadflow_row(n, 1, "NORMAL", seconds, latencies, stats, listed))
    if theirs:
        seconds, out = theirs[_median(theirs)]
        also = f"; median of {len(theirs)} rounds alternated with threadflow's" if len(theirs) > 1 else ""
        results[("mastra", "seq")] = report.add(_mastra_row(n_mastra, 1, out, also))


async def _mastra_once(node: str, db: Path, n: int, concurrency: int) -> dict[str, Any]:
    from . import mastra_peer

    return await mastra_peer.run(node, db, n, concurrency, "shipped")


def _mastra_row(n: int, concurrency: int, out: dict[str, Any], rounds: str = "") -> Row:
    version = version_of_npm("@mastra/core")
    journal = str(out.get("journal", "?")).upper()
    return _row(
        f"Mastra {version or ''}".strip(), _setup(concurrency, n, f"{journal}+NORMAL"), n,
        float(out["seconds"]), list(out["latencies"]),
        note=(f"LibSQLStore as shipped (it sets WAL+NORMAL), Node {out.get('node')}; "
              f"{out['cpu_us'] / (n * STEPS):.0f} us CPU/step (Node process); upserts the run's whole "
              "snapshot twice per step" + rounds),
        extra={"cpu_us_per_step": out["cpu_us"] / (n * STEPS)})


async def _mastra(report: Report, results: dict[tuple[str, str], Row], directory: Path, size: dict[str, int],
                  node: str, modes: tuple[str, ...]) -> None:
    for mode, n, concurrency in (("seq", size["mastra_seq"], 1), ("conc", size["mastra_conc"], CONCURRENCY)):
        if mode not in modes:
            continue
        try:
            out = await _mastra_once(node, directory / f"mastra-{concurrency}.db", n, concurrency)
            results[("mastra", mode)] = report.add(_mastra_row(n, concurrency, out))
        except Exception as exc:
            report.failed(BENCH, "Mastra", exc)


def version_of_npm(package: str) -> str | None:
    from .mastra_peer import HERE

    try:
        return str(json.loads((HERE / "node_modules" / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None
