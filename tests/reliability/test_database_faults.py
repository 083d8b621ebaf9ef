"""The database fails under the engine and comes back: no run is lost, failed, or repeats a step for it.

- PostgreSQL: every connection of the test database is terminated (``pg_terminate_backend``, what a server
  restart, a failover or a proxy restart does to clients) every 20 ms for 10 s while 125 runs execute.
- PostgreSQL with a DBA's ``lock_timeout`` or ``statement_timeout`` on the database while another session holds
  the runs table: the engine's own statements are cancelled ("try again"), not refused ("this is wrong").
- PostgreSQL failing over while the old primary's connections go silent (nothing answers, nothing closes them).
- SQLite: another process holds the write lock past the busy timeout ("database is locked").
- SQLite on a small tmpfs that fills up, then is freed (runs as root, as in CI; otherwise skipped: mounting a
  filesystem needs root).

Transient errors are retried with backoff (a step that succeeded is never recorded as failed because its commit
failed), counted in ``/metrics`` and logged once per outage, and a start made while the disk is full gets a clear
error after its retries instead of a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bot.metrics import Metrics
from storage import Database
from storage.backends import PAGE_SIZE
from storage.errors import DatabaseUnavailable
from tests.conftest import FAST, EngineFactory, _admin_dsn
from tests.helpers.pg_wire import blackhole
from tests.helpers.system import tmpfs
from tests.reliability.faulty_flows import WORKFLOWS
from tests.reliability.tally import tally
from workflows import Engine, StepContext, Workflow, step


def transient_errors(body: str, kind: str) -> float:
    prefix = f'threadflow_db_transient_errors_total{{kind="{kind}"}} '
    return sum(float(line.removeprefix(prefix)) for line in body.splitlines() if line.startswith(prefix))


#: How long the server terminates every connection of the test database, every 20 ms.
CHURN_SECONDS = 10.0
#: Every run has finished this long after the fault ended (they took under 3 s on a slow 2-core machine).
RECOVERY_SECONDS = 15.0


async def test_postgresql_connections_terminated_mid_run_lose_and_fail_nothing(
    db_url: str, fault_dir: Path, engine: EngineFactory
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("terminating server connections is a PostgreSQL fault")
    import asyncpg

    e = engine(*WORKFLOWS)
    metrics = Metrics(e)
    admin = await asyncpg.connect(_admin_dsn(db_url))
    terminated = 0
    try:
        expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(125)}
        counting = asyncio.ensure_future(tally(f"PostgreSQL connections terminated every 20 ms for {CHURN_SECONDS:g} s",
                                               e, expected, fault_dir, timeout=CHURN_SECONDS + RECOVERY_SECONDS))
        # The fault lasts a while, then the server is healthy again: every run must then finish, once each, with its
        # own output. (Whether writes get through *during* the fault depends on the machine: a new connection and
        # a batch must fit between two terminations, which a slow machine cannot do; that is slowness, not loss.)
        churn_ends = time.monotonic() + CHURN_SECONDS
        while not counting.done() and time.monotonic() < churn_ends:
            terminated += len(await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))
            await asyncio.sleep(0.02)
        finished_during_fault = await e.store.count_runs("success")  # (list_runs stops at 50)
        counts = await counting
        body = (await metrics.render()).decode()
    finally:
        metrics.close()
        await admin.close()

    errors = transient_errors(body, "connection")
    assert counts.save(connections_terminated=terminated, retried_errors=errors,
                       finished_during_fault=finished_during_fault).harmless
    assert terminated > 0 and errors > 0  # the fault really hit the engine


async def _on_database(url: str, sql: str) -> None:
    """``ALTER DATABASE <the test database> <sql>``, as a DBA would (new connections take it)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = await asyncpg.connect(_admin_dsn(url))
    try:
        await admin.execute(f'ALTER DATABASE "{make_url(url).database}" {sql}')
    finally:
        await admin.close()


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
async def test_a_timeout_a_dba_set_on_the_database_does_not_fail_runs_whose_steps_succeeded(
    db_url: str, fault_dir: Path, setting: str
) -> None:
    """A step that succeeded must not be recorded as failed (``OutputUnstorable``) because another session held a
    lock a moment longer than ``lock_timeout``: the cancelled statement was rolled back, and is retried."""
    if not db_url.startswith("postgresql"):
        pytest.skip("lock_timeout and statement_timeout are PostgreSQL settings")
    import asyncpg

    await _on_database(db_url, f"SET {setting} = '200ms'")
    e = Engine.from_url(db_url, **FAST)
    e.register(*WORKFLOWS)
    other = await asyncpg.connect(_admin_dsn(db_url))
    try:
        async with e:
            expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(20)}
            # Another session (a migration, a retention job, a DBA's maintenance) holds the runs table for 1 s.
            async with other.transaction():
                await other.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
                await asyncio.sleep(1.0)
            counts = await tally(f"{setting} 200 ms on the database, runs table locked 1 s", e, expected, fault_dir,
                                 timeout=20)
    finally:
        await other.close()
        await _on_database(db_url, f"RESET {setting}")
    assert counts.save().harmless, counts


@pytest.mark.timeout(60)
async def test_runs_continue_after_a_failover_that_leaves_the_old_connections_silent(
    db_url: str, fault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine gives up on connections that do not answer within ``THREADFLOW_DB_COMMAND_TIMEOUT`` (30 s unless
    set; 1 s here) and carries on on new ones, as the README promises for failovers, instead of waiting for the
    operating system's TCP retransmission timeout (about 15 minutes on Linux)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL failover")
    monkeypatch.setenv("THREADFLOW_DB_COMMAND_TIMEOUT", "1")
    async with blackhole(db_url) as (proxy, url):
        e = Engine.from_url(url, **FAST)
        e.register(*WORKFLOWS)
        await e.open()
        try:
            expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(10)}
            await asyncio.sleep(0.05)  # under way
            proxy.fail_over()
            counts = await tally("failover, old connections silent (command timeout 1 s)", e, expected, fault_dir,
                                 timeout=12)
        finally:
            await asyncio.wait_for(e.close(), 10)
    assert proxy.silenced > 0  # the fault hit the engine's connections
    assert counts.save().harmless, counts


@pytest.mark.timeout(60)
async def test_a_start_made_as_the_connections_go_silent_is_retried_on_a_new_one(
    db_url: str, fault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start is retried for ``retry_seconds`` after its first failure, however long that failure took to come (the
    command timeout): given up at once, it would fail although a new connection would take it at once."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL failover")
    monkeypatch.setenv("THREADFLOW_DB_COMMAND_TIMEOUT", "1")
    async with blackhole(db_url) as (proxy, url):
        e = Engine(Database(url, retry_seconds=0.5), execute=False, **FAST)
        e.register(*WORKFLOWS)
        try:
            await e.start("healthy", {"n": 1})
            proxy.fail_over()
            second = await e.start("healthy", {"n": 2})
            assert (await e.get_run(second.run_id)).status == "pending"
        finally:
            await asyncio.wait_for(e.close(), 10)
    assert proxy.silenced > 0


@pytest.mark.timeout(60)
async def test_an_engine_whose_connections_went_silent_still_closes_promptly(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutting down right after a failover: its pooled connections are closed one after another, and a graceful
    close waits for a goodbye the dead server never sends; each is dropped after a moment instead."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL failover")
    monkeypatch.setenv("THREADFLOW_DB_COMMAND_TIMEOUT", "1")
    async with blackhole(db_url) as (proxy, url):
        e = Engine.from_url(url, **FAST)
        e.register(*WORKFLOWS)
        await e.open()
        await asyncio.gather(*(e.list_runs() for _ in range(8)))  # several pooled connections, idle now
        proxy.fail_over()
        started = time.monotonic()
        await asyncio.wait_for(e.close(), 30)
        took = time.monotonic() - started
    assert proxy.silenced > 0
    assert took < 6, f"closing took {took:.1f} s"


async def test_sqlite_locked_past_the_busy_timeout_is_waited_out(
    sqlite_url: str, fault_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "100")
    async with engine_with_metrics(Database(sqlite_url)) as (e, metrics):
        expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(30)}
        other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)  # another process's writer
        with caplog.at_level(logging.WARNING, logger="threadflow.storage"):
            other.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(1.5)  # 15 busy timeouts
            other.execute("COMMIT")
            other.close()
            counts = await tally("SQLite locked by another writer for 1.5 s (busy timeout 0.1 s)", e, expected,
                                 fault_dir)
        body = (await metrics.render()).decode()

    assert counts.save().harmless
    assert transient_errors(body, "locked") > 0
    outages = [r.getMessage() for r in caplog.records if "database write failed (locked" in r.getMessage()]
    assert len(outages) == 1  # logged once for the outage, not once per retry


class Num(BaseModel):
    n: int


class Decision(BaseModel):
    approved: bool


@step(id="approve", input=Num, output=Num, suspend=Decision, resume=Decision)
async def approve(ctx: StepContext[Num]) -> Num:
    decision = await ctx.suspend(Decision(approved=False))
    return Num(n=ctx.input.n + int(decision.approved))


@contextmanager
def locked_by_another_process(sqlite_url: str) -> Iterator[None]:
    """Another process holds SQLite's write lock (a backup, a VACUUM, a migration) while the block runs."""
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


async def test_a_database_stall_longer_than_a_lease_does_not_strand_the_live_processs_own_runs(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement of the process's versions waited out the stall in the commit queue and committed rows
    already expired; the sweep right after it flagged the process's own runs stranded ("... which no running process
    has"), with a ``run.stranded`` event per run, posted in each run's Slack thread."""
    monkeypatch.setenv("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "100")
    e = Engine(Database(sqlite_url), **FAST)  # lease 2 s
    e.register(Workflow(id="approval", input=Num, output=Num).then(approve).commit())
    await e.open()
    try:
        waiting = await (await e.start("approval", {"n": 1})).result(timeout=10)
        assert waiting.status == "suspended"
        await asyncio.sleep(FAST["lease_seconds"] + 0.5)  # up for a lease: the process sweeps from now on
        with locked_by_another_process(sqlite_url):
            await asyncio.sleep(3.0)  # a lease and a half
        await asyncio.sleep(2.0)

        events = [ev for ev in (await e.details(waiting.run_id)).events if ev.type == "run.stranded"]
        assert not events and (await e.get_run(waiting.run_id)).stranded_at is None, events
        # And it still goes on here.
        await e.resume(waiting.run_id, step="approve", data={"approved": True}, by="U1")
        assert (await e.handle(waiting.run_id).result(timeout=10)).output == {"n": 2}
    finally:
        await e.close()


async def test_a_database_stall_longer_than_a_lease_does_not_make_the_process_take_over_its_own_live_run(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease keeper cannot renew while the database is locked; when the lock went, the process's own dispatcher
    claimed its own run, still executing here, as if from a dead holder: a ``run.recovered`` event naming this very
    process as the "previous owner", and one more recovery counted toward THREADFLOW_MAX_RECOVERIES."""
    monkeypatch.setenv("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "5000")  # the engine waits in SQLite for the lock
    go = asyncio.Event()

    @step(id="long", input=Num, output=Num)
    async def long(ctx: StepContext[Num]) -> Num:
        await go.wait()  # a long step: a model call, a deploy
        return ctx.input

    e = Engine(Database(sqlite_url), **FAST)  # lease 2 s
    e.register(Workflow(id="long-step", input=Num, output=Num).then(long).commit())
    await e.open()
    try:
        handle = await e.start("long-step", {"n": 1})
        await asyncio.sleep(0.5)
        for _ in range(3):  # after each stall the lease keeper's renewal and the dispatcher's claim race
            with locked_by_another_process(sqlite_url):
                await asyncio.sleep(3.0)  # a lease and a half
            await asyncio.sleep(1.5)

        recovered = [ev.data for ev in (await e.details(handle.run_id)).events if ev.type == "run.recovered"]
        run = await e.get_run(handle.run_id)
        assert (run.owner, run.recoveries, recovered) == (e.owner, 0, [])
        go.set()
        assert (await handle.result(timeout=10)).status == "success"
    finally:
        go.set()
        await e.close()


#: The size of ``small_disk``, and how many database pages it holds.
DISK_SIZE = 4 * 1024 * 1024
DISK_PAGES = DISK_SIZE // PAGE_SIZE


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of this test's own (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a tmpfs of the test's own, and mounting one needs root (CI runs as root)")
    with tmpfs(tmp_path / "disk", size=str(DISK_SIZE)) as mount:
        yield mount


@asynccontextmanager
async def engine_with_metrics(database: Database) -> AsyncIterator[tuple[Engine, Metrics]]:
    """An open engine executing the faulty flows, and the metrics of its process."""
    e = Engine(database, **FAST)
    e.register(*WORKFLOWS)
    metrics = Metrics(e)
    try:
        await e.open()
        yield e, metrics
    finally:
        metrics.close()
        await e.close()


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    return filler


async def start_until_refused(e: Engine, expected: dict[str, Any]) -> None:
    """Start healthy runs until one is refused (its DatabaseUnavailable propagates); those that fit join ``expected``.

    A full filesystem need not refuse SQLite's next commit: the WAL file keeps the size it grew to, and once a
    checkpoint has copied all of it into the database, commits write it over from its start. When a checkpoint
    finished just before the disk filled (on a busy machine the engine's first one can run that late), starts
    find room there and succeed, rightly, until it is used up; the first that needs the file to grow is refused.
    Each start is a commit of its own, which adds a page at least to the WAL, so a disk of ``DISK_PAGES`` pages
    has refused one before that many were made.
    """
    for n in range(100, 100 + DISK_PAGES):
        run = await e.start("healthy", {"n": n})
        expected[run.run_id] = {"n": n + 8}
    raise AssertionError(f"{DISK_PAGES} starts fitted on a full disk of {DISK_PAGES} pages")


async def test_sqlite_on_a_full_disk_carries_on_by_itself_once_space_is_freed(
    small_disk: Path, fault_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine_with_metrics(Database(f"sqlite+aiosqlite:///{small_disk / 'threadflow.db'}",
                                            retry_seconds=1.0)) as (e, metrics):
        expected = {(await e.start("healthy", {"n": i})).run_id: {"n": i + 8} for i in range(30)}
        with caplog.at_level(logging.WARNING, logger="threadflow.storage"):
            filler = fill(small_disk)
            with pytest.raises(DatabaseUnavailable, match="database or disk is full"):
                await start_until_refused(e, expected)  # a clear error, after a second of retries
            await asyncio.sleep(3.0)  # long enough for the jobs that retry on their own to fail a few times
            filler.unlink()
            counts = await tally("SQLite disk full for 4 s, then freed", e, expected, fault_dir)
            after = await (await e.start("healthy", {"n": 1000})).result(timeout=10)  # no restart needed
        body = (await metrics.render()).decode()
        still_running = [r.id for r in await e.list_runs(status="running")]

    assert counts.save().harmless
    assert after.status == "success" and after.output == {"n": 1008} and still_running == []
    assert transient_errors(body, "disk_full") > 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database write failed (disk_full" in m for m in messages) == 1
    assert sum("database write works again" in m for m in messages) == 1
    # The jobs that retry on their own schedule (checkpoints, the dispatcher, the version announcer) say so once
    # each while it lasts (a reminder only after a minute), not once per attempt.
    for job in ("WAL checkpoint", "dispatcher iteration", "announcing workflow versions"):
        assert sum(m.startswith(f"{job} failed") for m in messages) <= 1, (job, messages)
    assert not any("PendingRollbackError" in m for m in messages)


async def test_sqlite_on_a_full_disk_a_run_executing_alone_waits_for_space_and_runs_each_step_once(
    small_disk: Path,
) -> None:
    """One run at a time, a step's commit is a planned write on the writer's cursor: on a full disk it fails there,
    nothing is half written, and the commit waits its turn through the queue until space is freed; the next steps
    are planned writes again on the same connection."""
    executed: list[str] = []
    go_on = asyncio.Event()

    @step(id="first")
    async def first(ctx: StepContext[Any]) -> int:
        executed.append("first")
        await go_on.wait()
        return 1

    @step(id="second")
    async def second(ctx: StepContext[Any]) -> int:
        executed.append("second")
        return 2

    wf = Workflow(id="alone-on-a-full-disk").then(first).then(second).commit()
    path = small_disk / "threadflow.db"
    db = Database(f"sqlite+aiosqlite:///{path}", retry_seconds=1.0)
    e = Engine(db, **FAST)
    e.register(wf)
    metrics = Metrics(e)
    await e.open()
    try:
        warm = await e.start(wf.id, {})  # its plans resolved: the lone writes after it are planned
        go_on.set()
        assert (await warm.result(timeout=10)).status == "success"
        go_on.clear()
        executed.clear()
        run = await e.start(wf.id, {})
        while "first" not in executed:
            await asyncio.sleep(0.01)
        # The disk fills, then another process's writes use up what the WAL file had room for: big ones, then one-page
        # ones (the frames a failed transaction wrote may be written over by the next one: at most a page is left).
        ballast = sqlite3.connect(path, isolation_level=None)
        ballast.execute("PRAGMA wal_autocheckpoint=0")
        ballast.execute("CREATE TABLE ballast (x BLOB)")
        filler = fill(small_disk)
        for size in (8192, 1):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                for _ in range(DISK_PAGES * 8):
                    ballast.execute("INSERT INTO ballast VALUES (zeroblob(?))", (size,))
        ballast.close()
        planned = db.planned_commits

        go_on.set()  # the first step finishes while nothing more fits
        await asyncio.sleep(1.5)
        assert transient_errors((await metrics.render()).decode(), "disk_full") > 0
        assert executed == ["first"] and (await e.get_run(run.run_id)).status == "running"
        filler.unlink()
        result = await run.result(timeout=10)
    finally:
        metrics.close()
        await e.close()

    assert result.status == "success" and result.output == 2
    assert executed == ["first", "second"]  # each once: the failed commit was not taken as the step's failure
    assert db.planned_commits > planned  # after the failed one, planned writes work again on the same connection
