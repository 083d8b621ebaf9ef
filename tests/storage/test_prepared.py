"""Prepared statements and the inline commit path on SQLite.

Prepared statements skip SQLAlchemy's execution layer on SQLite, so each test compares what they store
with what SQLAlchemy itself stores for the same statement. The inline path runs the engine's small writes
on the event loop's thread; it must never make the loop wait for another process's lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Float,
    TypeDecorator,
    bindparam,
    create_engine,
    insert,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import Database, jsoncodec
from storage.backends import JSON_CODEC
from storage.prepared import (
    _MISSING,
    Plan,
    _bind_processor,
    _Item,
    _json_bind,
    _json_result,
    _result_processor,
    _segments,
    _sqlite_json_result,
    plan_for,
    prepared,
)
from storage.runs import _TOUCH_LEASE
from storage.tables import events, runs, step_results

_INSERT_EVENT = prepared(insert(events))
_INSERT_RESULT = prepared(insert(step_results))
_SET_STATUS = prepared(
    update(runs).where(runs.c.id == bindparam("b_id"), runs.c.status.in_(("pending", "running")))
)


@pytest.fixture
async def db(sqlite_url: str) -> AsyncIterator[Database]:
    database = Database(sqlite_url)
    await database.open()
    yield database
    await database.close()


def raw_rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    """What is really in the file, read with plain sqlite3 (no SQLAlchemy type processing)."""
    path = db.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def wal_size(db: Database) -> int:
    return os.path.getsize(db.url.split("///", 1)[1].split("?")[0] + "-wal")


def run_row(run_id: str, status: str = "pending") -> dict[str, Any]:
    now = time.time()
    return {"id": run_id, "workflow_id": "wf", "status": status, "input": {"n": 1}, "created_at": now, "updated_at": now}


async def test_a_prepared_insert_stores_exactly_what_sqlalchemy_stores(db: Database) -> None:
    rows = [
        {"run_id": "r", "type": "step.succeeded", "path": "a", "data": {"nested": [1, "two", None]}, "at": 1.5},
        {"run_id": "r", "type": "step.started", "path": None, "data": None, "at": 2.0},
    ]

    async def fast(conn: AsyncConnection) -> int:
        return int((await conn.execute(_INSERT_EVENT, rows)).rowcount)

    async def slow(conn: AsyncConnection) -> None:
        for row in rows:  # a statement built per call is never prepared: SQLAlchemy runs it
            await conn.execute(insert(events).values(**row | {"run_id": "s"}))

    assert await db.write(fast, inline=True) == 2
    await db.write(slow)
    stored = raw_rows(db, "SELECT run_id, type, path, data, at FROM events ORDER BY id")
    assert [r[1:] for r in stored if r[0] == "r"] == [r[1:] for r in stored if r[0] == "s"]
    assert json.loads(stored[0][3]) == {"nested": [1, "two", None]}  # (compact text: orjson, storage/jsoncodec.py)
    assert stored[1][3] == "null"  # JSON None is stored as SQLAlchemy stores it (the JSON null)


async def test_a_prepared_update_binds_literals_and_in_lists(db: Database) -> None:
    await db.write(lambda conn: conn.execute(insert(runs), [run_row("a"), run_row("b", "success")]))

    async def settle(run_id: str) -> Any:
        async def op(conn: AsyncConnection) -> int:
            res = await conn.execute(_SET_STATUS, {"b_id": run_id, "status": "failed", "error": {"why": "x"}})
            return int(res.rowcount)

        return await db.write(op, inline=True)

    assert await settle("a") == 1
    assert await settle("b") == 0  # not pending or running: the IN list of the WHERE holds
    assert raw_rows(db, "SELECT id, status, error FROM runs ORDER BY id") == [
        ("a", "failed", '{"why":"x"}'), ("b", "success", None),
    ]


def test_statements_sqlalchemy_must_run_are_not_prepared() -> None:
    dialect = sqlite_dialect.dialect(paramstyle="qmark")
    row = {"run_id": "r", "path": "p", "step_id": "s", "kind": "step", "output": None, "finished_at": 1.0}
    # A Python-side default (attempts=1) needs SQLAlchemy's execution context.
    assert plan_for(_INSERT_RESULT, row, dialect) is None
    assert plan_for(_INSERT_RESULT, row | {"attempts": 2, "started_at": None}, dialect) is not None
    # Rows with different columns in one executemany.
    assert plan_for(_INSERT_EVENT, [{"run_id": "r", "type": "x", "at": 1.0}, {"run_id": "r", "type": "x"}], dialect) is None
    # Statements nobody marked, a SELECT with many parameter sets, and things that are not statements.
    assert plan_for(insert(events), {"run_id": "r", "type": "x", "at": 1.0}, dialect) is None
    assert plan_for(_GET_RUN, [{"b_id": "a"}, {"b_id": "b"}], dialect) is None
    with pytest.raises(TypeError, match="only INSERT/UPDATE/DELETE/SELECT"):
        prepared(text("SELECT 1"))


async def test_a_python_default_still_applies_through_the_fallback(db: Database) -> None:
    async def op(conn: AsyncConnection) -> None:
        await conn.execute(_INSERT_RESULT, {
            "run_id": "r", "path": "p", "step_id": "s", "kind": "step", "output": {"v": 1}, "finished_at": 1.0,
        })

    await db.write(op, inline=True)
    assert raw_rows(db, "SELECT attempts, output FROM step_results") == [(1, '{"v":1}')]


async def test_a_failed_prepared_batch_rolls_back_and_each_writer_gets_its_own_outcome(db: Database) -> None:
    async def good(conn: AsyncConnection) -> None:
        await conn.execute(_INSERT_EVENT, {"run_id": "ok", "type": "x", "path": None, "data": None, "at": 1.0})

    async def bad(conn: AsyncConnection) -> None:
        await conn.execute(_INSERT_EVENT, {"run_id": "bad", "type": "x", "path": None, "data": None, "at": 1.0})
        raise RuntimeError("this writer fails after its statement")

    results = await asyncio.gather(db.write(good, inline=True), db.write(bad, inline=True), return_exceptions=True)
    assert results[0] is None and isinstance(results[1], RuntimeError)
    assert raw_rows(db, "SELECT run_id FROM events") == [("ok",)]


async def test_an_inline_write_waits_off_the_loop_while_another_process_holds_the_lock(db: Database) -> None:
    """The event loop keeps ticking while SQLite's write lock is held elsewhere; the write lands after."""
    path = db.url.split("///", 1)[1]
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process (the CLI, a second replica) holds the write lock
    released = threading.Event()

    def release_later() -> None:
        time.sleep(0.5)
        other.execute("COMMIT")
        released.set()

    async def op(conn: AsyncConnection) -> None:
        await conn.execute(_INSERT_EVENT, {"run_id": "late", "type": "x", "path": None, "data": None, "at": 1.0})

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not released.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    threading.Thread(target=release_later).start()
    try:
        ticking = asyncio.create_task(ticker())
        await db.write(op, inline=True)
        await ticking
    finally:
        other.close()
    assert released.is_set()
    assert ticks >= 20  # the loop was free for the half second the lock was held elsewhere
    assert raw_rows(db, "SELECT run_id FROM events") == [("late",)]


async def test_only_writes_marked_inline_run_on_the_loop_thread(db: Database) -> None:
    threads: dict[str, str] = {}

    def where(name: str) -> Any:
        async def op(conn: AsyncConnection) -> None:
            await conn.run_sync(lambda _sync: threads.__setitem__(name, threading.current_thread().name))
            await conn.execute(text("SELECT 1"))

        return op

    await db.write(where("hot"), inline=True)
    await db.write(where("other"))
    assert threads["hot"] == threading.current_thread().name
    assert threads["other"].startswith("threadflow-db-writer")


async def test_a_writer_connection_replaced_under_the_engine_is_taken_up_inline_and_in_the_writer_thread(
    db: Database,
) -> None:
    """The writer's DBAPI connection and cursor are kept with it; if SQLAlchemy replaces the DBAPI connection on its
    own (it reconnects an invalidated connection on its next use), the next commit works on the new one, with the
    writer's pragmas, on the loop's thread and in the writer thread alike."""

    def insert(run_id: str) -> Any:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(_INSERT_EVENT, {"run_id": run_id, "type": "x", "path": None, "data": None, "at": 1.0})

        return op

    await db.write(insert("before"), inline=True)
    backend: Any = db._backend  # (the kept writer connection: what the test replaces)
    for through, inline in (("loop", True), ("writer thread", False)):
        conn = backend._writer_conn
        old = conn.connection.dbapi_connection
        conn.invalidate()
        new = conn.connection.dbapi_connection  # SQLAlchemy reconnects here: the kept connection looks valid again
        assert new is not old and not conn.invalidated
        await db.write(insert(through), inline=inline)
        assert backend._writer_raw[0] is new
        assert new.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert raw_rows(db, "SELECT run_id FROM events ORDER BY id") == [("before",), ("loop",), ("writer thread",)]


async def test_a_memory_database_keeps_every_write_in_its_one_thread() -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.open()
    try:
        seen: list[str] = []

        async def op(conn: AsyncConnection) -> None:
            await conn.run_sync(lambda _sync: seen.append(threading.current_thread().name))

        await db.write(op, inline=True)
        assert seen and seen[0].startswith("threadflow-db")
    finally:
        await db.close()


def test_json_columns_keep_their_sqlalchemy_type() -> None:
    # The plan's bind processors come from the column types: JSON must serialise, not pass dicts through.
    dialect = sqlite_dialect.dialect(paramstyle="qmark")
    plan = plan_for(_INSERT_EVENT, {"run_id": "r", "type": "x", "path": None, "data": {"a": 1}, "at": 1.0}, dialect)
    assert plan is not None
    assert '{"a":1}' in plan.values({"run_id": "r", "type": "x", "path": None, "data": {"a": 1}, "at": 1.0})
    assert isinstance(events.c.data.type, JSON)


_GET_RUN = prepared(select(runs).where(runs.c.id == bindparam("b_id")))


async def test_a_prepared_select_returns_what_sqlalchemy_returns(db: Database) -> None:
    row = run_row("a") | {"output": {"list": [1, 2.5, None], "text": "é"}, "error": None, "finished_at": 3.25}
    await db.write(lambda conn: conn.execute(insert(runs), [row]))

    async def fast(conn: AsyncConnection) -> Any:
        return (await conn.execute(_GET_RUN, {"b_id": "a"})).mappings().first()

    async def slow(conn: AsyncConnection) -> Any:
        return dict((await conn.execute(select(runs).where(runs.c.id == "a"))).mappings().one())

    assert await db.read(fast, inline=True) == await db.read(slow)
    assert (await db.read(fast, inline=True))["output"] == {"list": [1, 2.5, None], "text": "é"}

    async def missing(conn: AsyncConnection) -> Any:
        result = await conn.execute(_GET_RUN, {"b_id": "nope"})
        return result.mappings().first(), result.first()

    assert await db.read(missing, inline=True) == (None, None)


async def test_an_inline_read_runs_on_the_loop_thread_and_sees_the_latest_commit(db: Database) -> None:
    seen: list[tuple[str, Any]] = []

    async def op(conn: AsyncConnection) -> None:
        row = (await conn.execute(_GET_RUN, {"b_id": "a"})).mappings().first()
        await conn.run_sync(lambda _sync: seen.append((threading.current_thread().name, row and row["status"])))

    await db.read(op, inline=True)
    await db.write(lambda conn: conn.execute(insert(runs), [run_row("a")]))
    await db.read(op, inline=True)
    await db.write(lambda conn: conn.execute(update(runs).values(status="running")))
    await db.read(op, inline=True)
    here = threading.current_thread().name
    assert seen == [(here, None), (here, "pending"), (here, "running")]


async def test_the_wal_stays_small_under_a_steady_stream_of_commits(db: Database) -> None:
    """Checkpoints run off the event loop, yet complete: the WAL starts over instead of growing."""
    for i in range(3000):
        await db.write(lambda conn, i=i: conn.execute(
            _INSERT_EVENT, {"run_id": f"r{i}", "type": "x", "path": None, "data": {"i": i}, "at": 1.0}), inline=True)
    wal = wal_size(db)
    # 3,000 commits of a page or more each would be 12 MB or more of WAL without checkpoints.
    assert wal < 8 * 1024 * 1024, wal
    assert raw_rows(db, "SELECT count(*) FROM events") == [(3000,)]


async def test_the_wal_stays_small_when_checkpoints_cannot_run_beside_the_commits(tmp_path: Any) -> None:
    """A URL with options is opened by SQLAlchemy only: every checkpoint then runs whole under the write lock, and
    still completes (the first pass, beside the commits, needs a connection of its own)."""
    path = tmp_path / "options.db"
    db = Database(f"sqlite+aiosqlite:///{path}?timeout=20")
    await db.open()
    try:
        for i in range(3000):
            await db.write(lambda conn, i=i: conn.execute(
                _INSERT_EVENT, {"run_id": f"r{i}", "type": "x", "path": None, "data": {"i": i}, "at": 1.0}), inline=True)
        assert wal_size(db) < 8 * 1024 * 1024
    finally:
        await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchall() == [(3000,)]


_RUNS_IN = prepared(select(runs).where(runs.c.id.in_(bindparam("ids", expanding=True))).order_by(runs.c.id))
#: a list of JSON values (each item through the JSON processor)
_JSON_IN = prepared(select(events.c.id).where(events.c.run_id == bindparam("b_id"),
                                              events.c.data.in_(bindparam("datas", expanding=True))))
#: a list, a value with a processor (Float) and literals around it
_READY_IN = prepared(select(runs.c.id).where(runs.c.status == "pending", runs.c.id.in_(bindparam("ids", expanding=True)),
                                             runs.c.ready_at <= bindparam("b_now", type_=Float), runs.c.owner.is_(None)))


async def test_a_prepared_in_list_returns_what_sqlalchemy_returns_for_any_length(db: Database) -> None:
    await db.write(lambda conn: conn.execute(insert(runs), [run_row(f"r{i:02}") for i in range(20)]))

    async def both(ids: list[str]) -> tuple[Any, Any]:
        async def fast(conn: AsyncConnection) -> Any:
            return list((await conn.execute(_RUNS_IN, {"ids": ids})).mappings())

        async def slow(conn: AsyncConnection) -> Any:
            q = select(runs).where(runs.c.id.in_(ids)).order_by(runs.c.id)
            return [dict(r) for r in (await conn.execute(q)).mappings()]

        return await db.read(fast, inline=True), await db.read(slow)

    for n in [1, 2, 3, 5, 8, 9, 17, 20]:  # plans are compiled for 1, 2, 4, 8, ... items and padded
        ids = [f"r{i:02}" for i in range(0, 2 * n, 2)] + ["missing"]
        fast, slow = await both(ids)
        assert fast == slow
        assert [r["id"] for r in fast] == sorted(i for i in ids if i != "missing" and i < "r20")
    assert await both([]) == ([], [])  # an empty list goes through SQLAlchemy, which renders it correctly
    dialect = sqlite_dialect.dialect(paramstyle="qmark")
    assert plan_for(_RUNS_IN, {"ids": []}, dialect) is None
    assert plan_for(_RUNS_IN, {"ids": ["a", "b", "c"]}, dialect) is plan_for(_RUNS_IN, {"ids": ["x", "y", "z", "w"]}, dialect)
    # A list's items are bound in one go (a claim binds 256 ids), as the slot-by-slot path binds them.
    for n in [1, 3, 5, 200]:
        params = {"ids": [f"r{i}" for i in range(n)], "b_now": 5.0}
        plan = plan_for(_READY_IN, params, dialect)
        assert plan is not None and plan._segments is not None and plan.expanding
        by_slot = tuple(
            (process or (lambda v: v))(params[name][min(literal.index, n - 1)] if isinstance(literal, _Item)
                                       else params[name] if literal is _MISSING else literal)
            for name, literal, process in plan.slots)
        assert plan.values(params) == by_slot and len(by_slot) > n


# -- deferred inserts -------------------------------------------------------------------------------


_DEFERRED_EVENT = prepared(insert(events), deferrable=True)
_EVENTS_OF = prepared(select(events.c.run_id, events.c.type).where(events.c.run_id.in_(bindparam("ids", expanding=True)))
                      .order_by(events.c.id))


def event(run_id: str, kind: str = "x") -> dict[str, Any]:
    return {"run_id": run_id, "type": kind, "path": None, "data": {"k": kind}, "at": 1.0}


def rows_in_transaction(conn: AsyncConnection) -> int:
    """Count events on the writer's own DBAPI connection, past the repository layer (same transaction)."""
    raw: Any = conn.sync_connection.connection.dbapi_connection  # type: ignore[attr-defined]
    return int(raw.execute("SELECT count(*) FROM events").fetchone()[0])


async def test_a_deferred_insert_waits_until_its_table_is_touched_then_runs_in_the_same_transaction(db: Database) -> None:
    seen: dict[str, Any] = {}

    async def writer(conn: AsyncConnection) -> None:
        await conn.execute(_DEFERRED_EVENT, [event("a", "one"), event("a", "two")])
        await conn.execute(_DEFERRED_EVENT, event("a", "three"))
        seen["held back"] = rows_in_transaction(conn)
        await conn.execute(_SET_STATUS, {"b_id": "a", "status": "running"})  # another table: still held back
        seen["after another table"] = rows_in_transaction(conn)
        # A statement on the same table sees every row added before it.
        seen["read"] = list((await conn.execute(_EVENTS_OF, {"ids": ["a"]})).mappings())
        await conn.execute(_DEFERRED_EVENT, event("a", "four"))

    await db.write(writer, inline=True)

    assert seen["held back"] == 0 and seen["after another table"] == 0
    assert [r["type"] for r in seen["read"]] == ["one", "two", "three"]
    # The rows held back at the end commit with the batch, in the order they were added.
    assert raw_rows(db, "SELECT type, data FROM events ORDER BY id") == [
        ("one", '{"k":"one"}'), ("two", '{"k":"two"}'), ("three", '{"k":"three"}'), ("four", '{"k":"four"}'),
    ]


async def test_writers_sharing_a_batch_keep_their_event_order_and_a_failed_one_loses_only_its_own(db: Database) -> None:
    def good(run_id: str) -> Any:
        async def op(conn: AsyncConnection) -> None:
            for i in range(3):
                await conn.execute(_DEFERRED_EVENT, event(run_id, f"{run_id}-{i}"))

        return op

    async def bad(conn: AsyncConnection) -> None:
        await conn.execute(_DEFERRED_EVENT, event("bad"))
        raise RuntimeError("this writer fails after adding its event")

    writers = [good("a"), good("b"), bad, good("c")]
    results = await asyncio.gather(*(db.write(w, inline=True) for w in writers), return_exceptions=True)

    assert results[:2] == [None, None] and results[3] is None and isinstance(results[2], RuntimeError)
    assert raw_rows(db, "SELECT type FROM events ORDER BY id") == [
        (f"{r}-{i}",) for r in "abc" for i in range(3)
    ]


def test_only_a_plain_insert_can_be_deferred() -> None:
    for statement in [
        update(events).values(type="x"),
        insert(events).from_select(["run_id", "type", "at"], select(runs.c.id, runs.c.status, runs.c.created_at)),
        insert(events).returning(events.c.id),
    ]:
        with pytest.raises(TypeError, match="plain INSERT"):
            prepared(statement, deferrable=True)


#: SQLite's dialect with the engine's JSON codec (the plans' JSON processors are for it)
OURS = create_engine("sqlite://", **JSON_CODEC).dialect
_JSON_VALUES = [None, JSON.NULL, null(), {"a": [1, None]}, [1, 2], "x", 1.5, True, 2**70, {"n": 2**70},
                float("nan"), float("inf"), {1: "int key"}, {"t": (1, 2)}, datetime(2026, 1, 2, 3, 4, 5),
                uuid.UUID(int=7), Decimal("1.5"), b"bytes", object()]


@pytest.mark.parametrize("value", _JSON_VALUES, ids=repr)
def test_json_columns_bind_as_sqlalchemys_processor_binds(value: Any) -> None:
    """The plans' JSON processor is SQLAlchemy's, a layer less: the same text, SQL NULL and errors, for any value."""
    theirs = JSON().dialect_impl(OURS).bind_processor(OURS)
    assert _bind_processor(JSON(), OURS) is _json_bind

    def outcome(process: Any) -> Any:
        try:
            return ("value", process(value))
        except Exception as exc:
            return ("error", type(exc), str(exc))

    assert outcome(_json_bind) == outcome(theirs)


def test_nan_beside_an_integer_beyond_64_bits_is_refused_not_written_as_the_text_nan() -> None:
    """orjson refuses the integer, and ``json``, which takes it, would write ``NaN``: not JSON, which PostgreSQL
    refuses (every time the run was taken over) and SQLite gave back as NaN where orjson alone gives ``null``."""
    assert json.loads(jsoncodec.dumps({"id": 2**70, "rate": 0.5})) == {"id": 2**70, "rate": 0.5}
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsoncodec.dumps({"id": 2**70, "rate": float("nan")})


@pytest.mark.parametrize("text_", [None, "null", '{"a": [1, null]}', "5", 5, 5.5, Decimal("2.5"), "NaN", "{bad", b"[1]"],
                         ids=repr)
def test_json_columns_read_as_sqlalchemys_processor_reads(text_: Any) -> None:
    theirs = JSON().dialect_impl(OURS).result_processor(OURS, None)
    mine = _result_processor(JSON(), OURS)

    def outcome(process: Any) -> Any:
        try:
            value = process(text_)
            return ("value", "nan" if value != value else value)  # NaN is not equal to itself
        except Exception as exc:
            return ("error", type(exc))

    assert outcome(mine) == outcome(theirs)


def test_json_types_the_plans_do_not_know_keep_sqlalchemys_processors() -> None:
    class Tagged(TypeDecorator[Any]):  # a type with processing of its own, over JSON
        impl = JSON
        cache_ok = True

        def process_bind_param(self, value: Any, dialect: Any) -> Any:
            return {"tagged": value}

    for type_, dialect in ((JSON(none_as_null=True), OURS), (Tagged(), OURS), (JSON(), create_engine("sqlite://").dialect)):
        assert _bind_processor(type_, dialect) is not _json_bind
        assert _result_processor(type_, dialect) not in (_json_result, _sqlite_json_result)
    assert _bind_processor(Tagged(), OURS)(1) == '{"tagged":1}'  # (SQLAlchemy's: its own step, then the JSON codec)


def test_a_list_parameter_with_a_processor_binds_its_items_through_it() -> None:
    params = {"datas": [{"a": 1}, None, [2]], "b_id": "r1"}
    plan = plan_for(_JSON_IN, params, OURS)
    assert plan is not None and plan._segments is not None
    assert plan.values(params) == ("r1", '{"a":1}', "null", "[2]", "[2]")
    # Items that are not a list's slots 0, 1, 2, ... in a row: no segments, and the slot-by-slot path binds them.
    assert _segments((("ids", _Item(0), None), ("ids", _Item(2), None))) is None
    shuffled = Plan("SELECT ?, ?, ?", (("ids", _Item(0), None), ("x", _MISSING, str), ("ids", _Item(3), None)),
                    expanding=True)
    assert shuffled._segments is None
    assert shuffled.values({"ids": ["a", "b"], "x": 7}) == ("a", "7", "b")


def test_the_fast_path_binds_what_the_slot_by_slot_path_binds() -> None:
    dialect = sqlite_dialect.dialect()
    row = {"run_id": "r1", "type": "step.succeeded", "path": None, "data": {"output": [1, "é"], "n": None}, "at": 1.5}
    plan = plan_for(_INSERT_EVENT, row, dialect)
    assert plan is not None and plan._get is not None  # every slot is a parameter: the itemgetter path
    by_slot = tuple(process(row[name]) if process else row[name] for name, _, process in plan.slots)
    assert plan.values(row) == by_slot
    assert json.loads(plan.values({**row, "data": None})[[n for n, _, _ in plan.slots].index("data")]) is None
    with pytest.raises(KeyError):
        plan.values({k: v for k, v in row.items() if k != "type"})
    # A plan with a list of literals in it (``status IN (...)`` compiled from the statement: one name for two
    # values, beside a parameter named ``status``) takes the fast path too, each literal in its place; so does
    # one with a single literal (``status = 'running'``).
    update_plan = plan_for(_SET_STATUS, {"b_id": "r1", "status": "failed"}, dialect)
    assert update_plan is not None and update_plan._get is not None
    assert update_plan.values({"b_id": "r1", "status": "failed"}) == ("failed", "r1", "pending", "running")
    held = {"b_id": "r1", "b_owner": "me", "b_now": 2.0, "b_expires": 3.0}
    lease_plan = plan_for(_TOUCH_LEASE, held, dialect)
    assert lease_plan is not None and lease_plan._get is not None
    by_slot = tuple(held[name] if literal is _MISSING else literal for name, literal, _ in lease_plan.slots)
    assert lease_plan.values(held) == by_slot and "running" in by_slot
