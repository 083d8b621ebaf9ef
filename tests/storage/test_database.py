"""The database handle: URLs, migrations, the commit queue (group commit with a per-writer retry), and
SQLite's BEGIN IMMEDIATE that lets several processes write one file without "database is locked"."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import Database, DatabaseURLError, normalize_url
from storage.migrations import head_revision
from storage.tables import events


def add_event(run_id: str, kind: str = "step.started"):
    async def op(conn: AsyncConnection) -> int:
        res = await conn.execute(insert(events).values(run_id=run_id, type=kind, at=time.time()))
        return int(res.inserted_primary_key[0])

    return op


async def count_events(db: Database, run_id: str | None = None) -> int:
    async def op(conn: AsyncConnection) -> int:
        q = select(func.count()).select_from(events)
        if run_id is not None:
            q = q.where(events.c.run_id == run_id)
        return int((await conn.execute(q)).scalar_one())

    return await db.read(op)


# -- URLs and migrations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///threadflow.db", "sqlite+aiosqlite:///threadflow.db"),
        ("sqlite+aiosqlite:///x/y.db", "sqlite+aiosqlite:///x/y.db"),
        ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_urls_people_paste_get_the_async_driver(given, expected):
    assert normalize_url(given) == expected


@pytest.mark.parametrize("bad", ["not a url", "mysql://u@h/d", "://"])
def test_unusable_urls_are_refused_with_what_to_use_instead(bad):
    with pytest.raises(DatabaseURLError, match="sqlite\\+aiosqlite://"):
        Database(bad)


@pytest.mark.parametrize(("bad", "shown"), [
    ("postgresql:/u:pa:ss@h/d", "'postgresql:/u:***@h/d'"),  # one slash missing, a ':' in the password
    ("postgresql://u:p@ss@h:54x32/d", "'postgresql://u:***@h:54x32/d'"),  # an '@' in it, a port not a number
    ("u:pass@h/d", "'u:***@h/d'"),  # no scheme at all
])
def test_an_unparsable_url_is_refused_with_its_password_masked(bad, shown):
    with pytest.raises(DatabaseURLError, match="not a valid SQLAlchemy URL") as refused:
        normalize_url(bad)
    assert shown in str(refused.value)


async def test_opening_migrates_to_head_and_is_idempotent(db_url):
    first, second = Database(db_url), Database(db_url)
    # Two handles opening at once (two processes starting) both end up on the current schema.
    await asyncio.gather(first.open(), second.open())
    await first.open()

    async def revision(conn: AsyncConnection) -> str:
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()

    assert await first.read(revision) == head_revision()
    await first.write(add_event("r1"))
    assert await count_events(second, "r1") == 1
    await first.close()
    await second.close()


async def test_a_database_opens_itself_on_first_use_and_after_close(db_url):
    database = Database(db_url)

    await database.write(add_event("r1"))
    await database.close()

    assert await count_events(database, "r1") == 1
    await database.close()


# -- the commit queue ---------------------------------------------------------------------------------


async def test_concurrent_writers_share_commits(db):
    batches: list[int] = []
    db.on_commit(batches.append)

    ids = await asyncio.gather(*(db.write(add_event(f"r{i}")) for i in range(200)))

    assert len(set(ids)) == 200
    assert await count_events(db) == 200
    assert sum(batches) == 200
    assert len(batches) <= 5, batches  # 200 writers, a handful of transactions
    assert max(batches) > 1


async def test_a_write_of_a_lone_writer_commits_at_once_without_waiting_for_the_queue(db):
    """``now=True`` (the engine's step of a run executing alone): committed on the caller's own turn of the loop."""
    if not db.is_sqlite:
        pytest.skip("PostgreSQL writes go through the queue: a round trip is the cost there, not a loop turn")
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)  # runs at the loop's next turn
    event_id = await db.write(add_event("alone"), inline=True, now=True)
    assert turned == []  # committed before the loop turned
    assert await count_events(db, "alone") == 1 and isinstance(event_id, int)


async def test_a_lone_write_never_overtakes_writes_queued_before_it(db):
    queued = db.write_nowait(add_event("first"), inline=True)  # waits for the queue's next turn
    second = await db.write(add_event("second"), inline=True, now=True)
    first = await queued
    assert first < second  # the queue went first: events keep the order they were written in


async def test_a_lone_write_that_fails_is_left_to_the_queue_which_reports_it(db):
    async def duplicate_key(conn: AsyncConnection) -> None:
        await conn.execute(insert(events).values(id=1, run_id="dup", type="x", at=time.time()))

    await db.write(duplicate_key)
    with pytest.raises(Exception, match="UNIQUE|unique|duplicate"):
        await db.write(duplicate_key, inline=True, now=True)
    assert await count_events(db, "dup") == 1


async def test_one_failing_writer_does_not_fail_the_others_in_its_batch(db):
    class Refused(Exception):
        pass

    def failing(run_id: str):
        async def op(conn: AsyncConnection) -> None:
            await add_event(run_id)(conn)  # written, then rolled back with the failure
            raise Refused(run_id)

        return op

    ops = [failing(f"r{i}") if i == 7 else add_event(f"r{i}") for i in range(20)]

    outcomes = await asyncio.gather(*(db.write(op) for op in ops), return_exceptions=True)

    assert isinstance(outcomes[7], Refused)
    assert all(isinstance(o, int) for i, o in enumerate(outcomes) if i != 7)
    assert await count_events(db, "r7") == 0
    assert await count_events(db) == 19


async def test_a_database_error_of_one_writer_only_fails_that_writer(db):
    async def duplicate_key(conn: AsyncConnection) -> None:
        await conn.execute(insert(events).values(id=1, run_id="dup", type="x", at=time.time()))

    first = await db.write(add_event("r0"))
    assert first == 1

    outcomes = await asyncio.gather(
        db.write(add_event("a")), db.write(duplicate_key), db.write(add_event("b")), return_exceptions=True
    )

    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], AssertionError)
    assert isinstance(outcomes[0], int) and isinstance(outcomes[2], int)
    assert await count_events(db) == 3


async def test_a_write_commits_even_if_its_caller_is_cancelled(db):
    hold = threading.Event()

    async def busy(conn: AsyncConnection) -> None:  # holds the writer while the next write queues
        if db.is_sqlite:
            await conn.run_sync(lambda _sync: hold.wait(5))
        else:
            await asyncio.to_thread(hold.wait, 5)

    blocker = asyncio.create_task(db.write(busy))
    await asyncio.sleep(0.01)
    task = asyncio.create_task(db.write(add_event("kept")))
    await asyncio.sleep(0.01)
    task.cancel()
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await blocker

    # The queued write still commits: a finished step's result is never lost to a cancellation.
    for _ in range(200):
        if await count_events(db, "kept"):
            break
        await asyncio.sleep(0.01)
    assert await count_events(db, "kept") == 1


async def test_queued_writes_finish_before_close(db_url):
    database = Database(db_url)
    await database.open()
    futures = [database.write_nowait(add_event(f"r{i}")) for i in range(50)]

    await database.close()

    assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
    await database.open()
    assert await count_events(database) == 50
    await database.close()


async def test_commits_notify_watchers(db):
    version = db.changes.version
    waiter = asyncio.create_task(db.changes.wait(version, timeout=5))
    await asyncio.sleep(0)

    await db.write(add_event("r1"))

    assert await asyncio.wait_for(waiter, 5) > version
    # A waiter that is behind returns at once; one that is current times out quietly.
    assert await db.changes.wait(version, timeout=5) == db.changes.version
    assert await db.changes.wait(db.changes.version, timeout=0.01) == db.changes.version


async def test_reads_are_not_blocked_by_an_open_write_transaction(db):
    await db.write(add_event("before"))
    # SQLite's writes run in the writer thread, so the open transaction is held with thread events there;
    # on PostgreSQL the write function runs on the event loop and may await an asyncio event.
    inside, finish = threading.Event(), threading.Event()

    async def long_write(conn: AsyncConnection) -> None:
        await add_event("during")(conn)
        if db.is_sqlite:
            await conn.run_sync(lambda _sync: (inside.set(), finish.wait(5)))
        else:
            inside.set()
            await asyncio.to_thread(finish.wait, 5)

    writing = asyncio.create_task(db.write(long_write))
    assert await asyncio.to_thread(inside.wait, 5)

    # The reader sees what was committed, not the open transaction's row, and does not wait for it.
    assert await asyncio.wait_for(count_events(db), 2) == 1

    finish.set()
    await writing
    assert await count_events(db) == 2


# -- SQLite: several processes on one file -----------------------------------------------------------


async def test_two_databases_on_one_sqlite_file_write_concurrently_without_locking_errors(sqlite_url):
    """Each transaction reads and then writes. With a deferred BEGIN, two connections that both read and
    then both try to write deadlock and one fails at once with "database is locked"; BEGIN IMMEDIATE
    takes the write lock up front, so the other waits (busy_timeout) instead."""
    a, b = Database(sqlite_url), Database(sqlite_url)
    await a.open()
    await b.open()

    def read_then_write(run_id: str):
        async def op(conn: AsyncConnection) -> int:
            seen = (await conn.execute(select(func.count()).select_from(events))).scalar_one()
            await conn.run_sync(lambda _sync: time.sleep(0.001))  # let the other handle's transaction interleave
            await conn.execute(insert(events).values(run_id=run_id, type="x", at=time.time(), data={"seen": seen}))
            return int(seen)

        return op

    async def writer(database: Database, name: str) -> list[int]:
        seen = []
        for i in range(40):
            seen.append(await database.write(read_then_write(f"{name}{i}")))
            seen.append(await database.run_in_transaction(read_then_write(f"{name}{i}-direct")))
        return seen

    try:
        seen_a, seen_b = await asyncio.gather(writer(a, "a"), writer(b, "b"))
    finally:
        await a.close()
        await b.close()

    check = Database(sqlite_url)
    await check.open()
    assert await count_events(check) == 160
    await check.close()
    # Serializable: every transaction saw a different number of earlier rows.
    assert sorted(seen_a + seen_b) == list(range(160))


async def test_sqlite_uses_wal_and_a_busy_timeout(sqlite_url):
    database = Database(sqlite_url)
    await database.open()

    async def pragmas(conn: AsyncConnection) -> tuple[str, int]:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
        busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
        return mode, busy

    try:
        mode, busy = await database.read(pragmas)
    finally:
        await database.close()
    assert mode == "wal"
    assert busy >= 1000


async def test_the_change_signal_wakes_every_waiter_and_counts_them_right() -> None:
    from storage.database import ChangeSignal

    signal = ChangeSignal()
    version = signal.version
    signal.notify()  # nobody waits yet
    assert await asyncio.wait_for(signal.wait(version, 5), 1) == version + 1
    version = signal.version
    waiter = asyncio.ensure_future(signal.wait(version, 5))
    await asyncio.sleep(0)
    signal.notify()
    assert await asyncio.wait_for(waiter, 1) == version + 1
    # cancelled and timed-out waiters leave the count right
    waiter = asyncio.ensure_future(signal.wait(signal.version, 5))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert await signal.wait(signal.version, 0.01) == signal.version
    assert signal._waiting == 0
