"""The engine's hot writes: a run created, a step committed, a run settled, each with its events.

On PostgreSQL each is one statement, one round trip (``storage/pg_writes.py``). Most tests run on both
databases (the guarantees are the same); the PostgreSQL ones look at what is sent: a write alone is that one
statement with no ``BEGIN``/``COMMIT``, a batch of several writes is one transaction, and the commit queue's
kept connection, when the server drops it, is replaced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from sqlalchemy import update

from bench.wire import WireCounter
from storage import Database
from storage.faults import refused_data, transient_kind
from storage.pg_writes import RECORD_STEP
from storage.records import NewEvent, StepResultRecord, step_result
from storage.runs import FinishedStep, HotPlans, LeaseLost, RunExists, RunStore, insert_result_if_held
from storage.tables import runs
from tests.conftest import _admin_dsn

LEASE = 30.0


def run_row(owner: str | None, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "id": uuid.uuid4().hex[:16], "workflow_id": "wf", "status": "running" if owner else "pending", "input": {},
        "owner": owner, "lease_expires_at": now + LEASE if owner else None, "ready_at": now, "created_at": now,
        "updated_at": now, **extra,
    }


def result(run_id: str, path: str, output: Any, **extra: Any) -> StepResultRecord:
    return StepResultRecord(run_id=run_id, path=path, step_id=path, output=output, finished_at=time.time(), **extra)


async def events_of(store: RunStore, run_id: str) -> list[tuple[str, str | None, Any, float]]:
    return [(e.type, e.path, e.data, e.at) for e in await store.read_events(run_id)]


@pytest.fixture(params=[False, True], ids=["queued", "alone"])
def alone(request: pytest.FixtureRequest) -> bool:
    """Each write as the engine makes it with other runs executing (False) or one run at a time (True)."""
    return bool(request.param)


async def store_of(db: Database, alone: bool) -> RunStore:
    """A run store; ``alone``: its SQLite plans resolved (they are resolved by its first write of a run's row or a step),
    so that its lone writes on SQLite are planned writes, committed straight on the cursor, as the engine's are one run
    at a time."""
    store = RunStore(db)
    if alone:
        row = run_row("warm-up")
        await store.create_run(row, [])
        await store.commit_step(result(row["id"], "w", None), "warm-up", LEASE, [])
        assert store._hot_plans or db.dialect != "sqlite"
    return store


def planned_since(db: Database, before: int, alone: bool) -> None:
    """The lone writes since ``before`` (``db.planned_commits`` then) took the planned path exactly when they could:
    made alone, on SQLite."""
    assert (db.planned_commits > before) == (alone and db.dialect == "sqlite")


def postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("what is sent to PostgreSQL")


async def test_a_steps_events_commit_with_it_in_order_with_their_data(databases: list[Database], alone: bool) -> None:
    store = await store_of(databases[0], alone)
    row = run_row("me")
    await store.create_run(row, [])
    before = store.db.planned_commits
    started = time.time() - 5
    evs = [
        NewEvent(type="step.started", path="a", data={"input": {"n": [1, 2.5, None, "ü"]}}, at=started),
        NewEvent(type="step.note", path=None, data=None),
        NewEvent(type="step.succeeded", path="a", data={"output": None, "nested": {"deep": [True, False]}}),
    ]
    rec = result(row["id"], "a", {"v": [1, "two", None]}, attempts=3, started_at=started)

    await store.commit_step(rec, "me", LEASE, evs, alone=alone)

    planned_since(store.db, before, alone)
    [stored] = (await store.load_progress(row["id"])).results.values()
    assert stored == rec  # every column as given: JSON output, attempts, both times
    assert await events_of(store, row["id"]) == [
        ("step.started", "a", {"input": {"n": [1, 2.5, None, "ü"]}}, started),
        ("step.note", None, None, rec.finished_at),  # no time of its own: the step's
        ("step.succeeded", "a", {"output": None, "nested": {"deep": [True, False]}}, rec.finished_at),
    ]


async def test_a_step_commit_retried_after_it_committed_adds_nothing(databases: list[Database], alone: bool) -> None:
    store = await store_of(databases[0], alone)
    row = run_row("me")
    await store.create_run(row, [], alone=alone)
    rec = result(row["id"], "a", 1)

    await store.commit_step(rec, "me", LEASE, [NewEvent(type="step.succeeded", path="a")], alone=alone)
    # The same commit again, as after a dropped connection whose COMMIT's outcome was not known.
    await store.commit_step(rec, "me", LEASE, [NewEvent(type="step.succeeded", path="a")], alone=alone)

    assert [e[0] for e in await events_of(store, row["id"])] == ["step.succeeded"]
    assert list((await store.load_progress(row["id"])).results) == ["a"]


async def test_a_lease_lost_between_steps_fences_the_next_step(databases: list[Database]) -> None:
    slow, fast = RunStore(databases[0]), RunStore(databases[1])
    row = run_row("slow", recoveries=2)
    await slow.create_run(row, [])
    await slow.commit_step(result(row["id"], "a", 1), "slow", LEASE, [NewEvent(type="step.succeeded", path="a")])
    # The holder stalls past its lease; another process takes the run over between its steps.
    await fast.db.write(lambda conn: conn.execute(update(runs).where(runs.c.id == row["id"]).values(lease_expires_at=0)))
    assert await fast.claim("fast", 10, LEASE) == [row["id"]]
    taken = await fast.get_run(row["id"])

    with pytest.raises(LeaseLost):
        await slow.commit_step(result(row["id"], "b", 2), "slow", LEASE, [NewEvent(type="step.succeeded", path="b")],
                               progressed=True)

    assert list((await fast.load_progress(row["id"])).results) == ["a"]
    assert [(e[0], e[1]) for e in await events_of(fast, row["id"])] == [("step.succeeded", "a"), ("run.recovered", None)]
    after = await fast.get_run(row["id"])
    # Nothing of the refused step touched the run: not the new holder's lease, not its count of deaths.
    assert after == taken and after.owner == "fast" and after.recoveries == 3


async def test_on_postgresql_a_step_commit_waits_for_a_claim_under_way_and_is_fenced_by_it(
    db_url: str, databases: list[Database]
) -> None:
    """A's lease ran out and B's claim (it reads the run's progress in its own transaction) is under way: A's step
    must not go in beside it, or B would run the step again and its own result would be dropped."""
    postgres_only(db_url)
    store = RunStore(databases[0])
    row = run_row("A")
    await store.create_run(row, [])
    claim = await asyncpg.connect(_admin_dsn(db_url))
    try:
        tx = claim.transaction()
        await tx.start()
        await claim.execute("SELECT id FROM runs WHERE id = $1 FOR UPDATE", row["id"])  # as a claim locks it
        await claim.execute("UPDATE runs SET owner = 'B' WHERE id = $1", row["id"])
        committing = asyncio.create_task(store.commit_step(result(row["id"], "s", "from A"), "A", LEASE, [
            NewEvent(type="step.succeeded", path="s")]))
        await asyncio.sleep(0.5)
        assert not committing.done()  # waits for the claim instead of reading the owner it replaces
        await tx.commit()
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(committing, 10)
    finally:
        await claim.close()
    assert (await store.load_progress(row["id"])).results == {}
    assert await events_of(store, row["id"]) == []


async def test_the_first_step_after_a_recovery_resets_the_count_of_deaths(databases: list[Database], alone: bool) -> None:
    store = await store_of(databases[0], alone)
    row = run_row("me", recoveries=2)
    await store.create_run(row, [], alone=alone)

    await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [], progressed=False, alone=alone)
    assert (await store.get_run(row["id"])).recoveries == 2
    await store.commit_step(result(row["id"], "b", 1), "me", LEASE, [], progressed=True, alone=alone)
    assert (await store.get_run(row["id"])).recoveries == 0
    # The same for a run's last step, committed with its end.
    again = run_row("me", recoveries=2)
    await store.create_run(again, [], alone=alone)
    last = FinishedStep(result(again["id"], "last", 1), [], LEASE, progressed=True)
    await store.settle(again["id"], "me", "success", [], output=1, step=last, alone=alone)
    assert (await store.get_run(again["id"])).recoveries == 0


async def _kept_raw(db: Database) -> Any:
    backend: Any = db._backend
    async with backend._kept_lock:
        return (await backend._kept_connection()).raw


async def test_on_postgresql_a_step_committed_alone_is_one_statement_without_begin_or_commit(
    db_url: str, databases: list[Database]
) -> None:
    postgres_only(db_url)
    store = RunStore(databases[0])
    row = run_row("me")
    await store.create_run(row, [])
    # The connection's first step: asyncpg prepares the statement and looks up its array types, once.
    await store.commit_step(result(row["id"], "first", 0), "me", LEASE, [NewEvent(type="step.succeeded", path="first")])
    raw = await _kept_raw(databases[0])
    sent: list[str] = []

    def log(record: Any) -> None:  # what asyncpg itself is asked to run (SQLAlchemy's statements not included)
        sent.append(record.query)

    raw.add_query_logger(log)
    wire = WireCounter()  # every request that reaches the socket, whoever sent it
    wire._wrap(raw._transport)
    try:
        before = wire.snapshot()
        await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [NewEvent(type="step.succeeded", path="a")])
        await asyncio.sleep(0)  # query loggers are called soon after, not within
        assert sent == [RECORD_STEP]
        assert WireCounter.since(before, wire.snapshot())["round_trips"] == 1

        # With another write queued in the same turn, both share one transaction.
        sent.clear()
        before = wire.snapshot()
        store.add_events_nowait(row["id"], [NewEvent(type="step.started", path="b")])
        await store.commit_step(result(row["id"], "b", 2), "me", LEASE, [NewEvent(type="step.succeeded", path="b")])
        await asyncio.sleep(0)
        assert sent == ["BEGIN", RECORD_STEP, "COMMIT"]  # and the events' insert, through SQLAlchemy:
        sent_now = WireCounter.since(before, wire.snapshot())
        # (plus, this first time, SQLAlchemy preparing the events' insert: a flush round trip)
        assert (sent_now["simple_queries"], sent_now["syncs"], sent_now["executes"]) == (2, 2, 2)
        assert sent_now["round_trips"] == 4 + sent_now["flushes"]
    finally:
        raw.remove_query_logger(log)
    assert [(e[0], e[1]) for e in await events_of(store, row["id"])] == [
        ("step.succeeded", "first"), ("step.succeeded", "a"), ("step.started", "b"), ("step.succeeded", "b")]


async def test_on_postgresql_a_dropped_writer_connection_is_replaced(db_url: str, databases: list[Database]) -> None:
    postgres_only(db_url)
    db = databases[0]
    store = RunStore(db)
    row = run_row("me")
    await store.create_run(row, [])
    old = await _kept_raw(db)
    pid = old.get_server_pid()
    admin = await asyncpg.connect(_admin_dsn(db_url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    faults: list[str] = []
    db.on_fault(lambda kind, new: faults.append(kind))

    await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [NewEvent(type="step.succeeded", path="a")])

    new = await _kept_raw(db)
    assert new is not old and new.get_server_pid() != pid and old.is_closed()
    assert faults == ["connection"]  # the queue saw the drop as a transient error and retried
    assert [e[0] for e in await events_of(store, row["id"])] == ["step.succeeded"]
    await store.commit_step(result(row["id"], "b", 2), "me", LEASE, [])  # the new one stays in use
    assert await _kept_raw(db) is new and faults == ["connection"]


async def test_on_postgresql_a_value_the_server_refuses_is_a_data_error_not_an_outage(
    db_url: str, databases: list[Database]
) -> None:
    postgres_only(db_url)
    store = RunStore(databases[0])
    row = run_row("me")
    await store.create_run(row, [])

    with pytest.raises(Exception) as caught:  # noqa: PT011 (what matters is how it is classified)
        await store.commit_step(result(row["id"], "a\x00b", 1), "me", LEASE, [])

    assert refused_data(caught.value) and transient_kind(caught.value) is None
    await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [])  # the connection is fine afterwards
    assert list((await store.load_progress(row["id"])).results) == ["a"]


async def test_a_run_is_created_once_with_its_events(databases: list[Database], alone: bool) -> None:
    store = await store_of(databases[0], alone)
    row = run_row(None, input={"n": [1, None]}, thread_id="t1")
    before = store.db.planned_commits

    await store.create_run(row, [NewEvent(type="run.started", data={"input": {"n": [1, None]}})], alone=alone)
    planned_since(store.db, before, alone)
    # The same start again (a commit of unknown outcome retried): harmless, nothing added.
    await store.create_run(row, [NewEvent(type="run.started", data={"input": {"n": [1, None]}})], alone=alone)
    with pytest.raises(RunExists):  # another run with the same id
        await store.create_run({**row, "created_at": row["created_at"] + 1}, [NewEvent(type="run.started")],
                               alone=alone)

    created = await store.get_run(row["id"])
    assert created is not None and (created.input, created.thread_id, created.status) == ({"n": [1, None]}, "t1", "pending")
    assert created.output is None and created.recoveries == 0  # columns not given: their defaults
    assert await events_of(store, row["id"]) == [("run.started", None, {"input": {"n": [1, None]}}, row["created_at"])]


async def test_a_settle_sets_the_run_and_its_events_together_or_nothing(databases: list[Database], alone: bool) -> None:
    store = await store_of(databases[0], alone)
    row = run_row("me", recoveries=2)
    await store.create_run(row, [], alone=alone)

    with pytest.raises(LeaseLost):
        await store.settle(row["id"], "someone-else", "success", [NewEvent(type="run.finished")], output=1, alone=alone)
    assert (await store.get_run(row["id"])).status == "running" and await events_of(store, row["id"]) == []

    before = store.db.planned_commits
    values = await store.settle(row["id"], "me", "pending", [NewEvent(type="run.released", data={"why": None})],
                                alone=alone)
    planned_since(store.db, before, alone)
    assert values == {"status": "pending", "owner": None, "lease_expires_at": None, "updated_at": values["updated_at"],
                      "ready_at": values["updated_at"], "waiting_for": None, "recoveries": 0}
    assert values["status"] == "pending"
    released = await store.get_run(row["id"])
    assert (released.status, released.owner, released.lease_expires_at, released.recoveries) == ("pending", None, None, 0)

    assert await store.claim("me", 10, LEASE) == [row["id"]]
    await store.settle(row["id"], "me", "failed", [NewEvent(type="run.failed", path="a")],
                       error={"type": "Boom", "message": "ü"}, output={"partial": [1]}, alone=alone)
    failed = await store.get_run(row["id"])
    assert (failed.status, failed.error, failed.output, failed.owner) == ("failed", {"type": "Boom", "message": "ü"},
                                                                          {"partial": [1]}, None)
    assert failed.finished_at is not None and failed.finished_at == failed.updated_at
    assert [(e[0], e[1], e[2]) for e in await events_of(store, row["id"])] == [
        ("run.released", None, {"why": None}), ("run.failed", "a", None)]


async def test_on_postgresql_a_run_start_step_and_finish_are_one_round_trip_each(
    db_url: str, databases: list[Database]
) -> None:
    postgres_only(db_url)
    store = RunStore(databases[0])
    raw = await _kept_raw(databases[0])
    wire = WireCounter()
    wire._wrap(raw._transport)

    async def one_run() -> tuple[str, list[int]]:
        row = run_row("me")
        sent = []
        for write in (
            lambda: store.create_run(row, [NewEvent(type="run.started")]),
            lambda: store.commit_step(result(row["id"], "a", 1), "me", LEASE,
                                      [NewEvent(type="step.succeeded", path="a")]),
            lambda: store.settle(row["id"], "me", "success", [NewEvent(type="run.finished")], output=1),
        ):
            before = wire.snapshot()
            await write()
            sent.append(WireCounter.since(before, wire.snapshot())["round_trips"])
        return row["id"], sent

    # The first time on a connection, asyncpg prepares each statement and looks up the array types: once.
    _, first = await one_run()
    assert all(n > 1 for n in first)
    run_id, sent = await one_run()
    assert sent == [1, 1, 1]
    assert [e[0] for e in await events_of(store, run_id)] == ["run.started", "step.succeeded", "run.finished"]
    assert (await store.get_run(run_id)).status == "success"


async def test_a_runs_last_step_settles_with_it_in_one_commit_or_not_at_all(
    databases: list[Database], alone: bool
) -> None:
    db = databases[0]
    store = await store_of(db, alone)
    row = run_row("me")
    await store.create_run(row, [], alone=alone)
    rec = result(row["id"], "last", {"v": 1})
    step = FinishedStep(rec, [NewEvent(type="step.succeeded", path="last", data={"output": {"v": 1}})], LEASE)

    with pytest.raises(LeaseLost):  # not this process's run: neither the step nor the end
        await store.settle(row["id"], "someone-else", "success", [NewEvent(type="run.finished")], output=1, step=step,
                           alone=alone)
    assert (await store.load_progress(row["id"])).results == {} and await events_of(store, row["id"]) == []

    commits, before = db.commits, db.planned_commits
    await store.settle(row["id"], "me", "success", [NewEvent(type="run.finished", data={"status": "success"})],
                       output={"v": 1}, step=step, alone=alone)
    planned_since(db, before, alone)

    assert db.commits - commits == (1 if db.dialect == "sqlite" else 2)
    assert (await store.load_progress(row["id"])).results == {"last": rec}
    assert (await store.get_run(row["id"])).status == "success"
    assert [(e[0], e[2], e[3]) for e in await events_of(store, row["id"])] == [
        ("step.succeeded", {"output": {"v": 1}}, rec.finished_at),
        ("run.finished", {"status": "success"}, (await store.get_run(row["id"])).finished_at)]


async def test_on_sqlite_a_steps_statements_take_the_resolved_plans(db_url: str, databases: list[Database]) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's prepared plans")
    from storage.backends import SyncConnection

    def resolve(conn: Any) -> HotPlans | None:
        return HotPlans.resolve(SyncConnection(conn), insert_result_if_held("sqlite"))

    hot = await databases[0].read(lambda conn: conn.run_sync(resolve))
    # Without them every step's commit falls back to looking its plans up (correct, but the slow path).
    assert hot is not None and "step_results" in hot.result.sql and hot.events.deferrable
    assert hot.dump({"ü": None}) == '{"ü":null}' and hot.dump(None) == "null"
    # The result's values are taken from the record as they are (no dict, no processor but JSON's): the same values,
    # in the same order, as the plan binds from the record's fields.
    record = step_result(run_id="r1", path="a/b", step_id="b", kind="step", output={"n": [1, None]}, attempts=2,
                         started_at=1.5, finished_at=2.5)
    assert hot.direct
    assert hot.result_values(record, "me") == hot.result.values({**record.__dict__, "b_owner": "me"})


async def test_run_plan_of_the_held_plan_keeps_the_order_of_rows(db_url: str, databases: list[Database]) -> None:
    """``run_plan`` given the plan whose rows are held back: the held rows go in first, as ``execute`` keeps them."""
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's batch connection")
    from storage.backends import SyncConnection
    from storage.runs import HotPlans, insert_result_if_held

    db = databases[0]
    store = RunStore(db)
    row = run_row("me")
    await store.create_run(row, [])

    async def op(conn: Any) -> None:
        assert type(conn) is SyncConnection
        hot = HotPlans.resolve(conn, insert_result_if_held("sqlite"))
        assert hot is not None
        conn.add_rows(hot.events, [(row["id"], "first", None, "null", 1.0)])
        conn.run_plan(hot.events, (row["id"], "second", None, "null", 2.0))

    await db.write(op)
    assert [e[0] for e in await events_of(store, row["id"])] == ["first", "second"]


async def test_many_writers_in_one_batch_keep_each_runs_event_order(databases: list[Database]) -> None:
    db = databases[0]
    store = RunStore(db)
    rows = [run_row("me") for _ in range(60)]
    for r in rows:
        await store.create_run(r, [])

    async def one(r: dict[str, Any]) -> None:
        await store.commit_step(result(r["id"], "a", {"v": 1}), "me", LEASE, [
            NewEvent(type="step.started", path="a"), NewEvent(type="step.succeeded", path="a", data={"x": "ü"})])
        last = result(r["id"], "b", None)
        evs = [NewEvent(type="step.started", path="b"), NewEvent(type="step.succeeded", path="b", data=None)]
        await store.settle(r["id"], "me", "success", [NewEvent(type="run.finished")], output=None,
                           step=FinishedStep(last, evs, LEASE))

    await asyncio.gather(*(one(r) for r in rows))
    for r in rows:
        assert [(e[0], e[1], e[2]) for e in await events_of(store, r["id"])] == [
            ("step.started", "a", None), ("step.succeeded", "a", {"x": "ü"}),
            ("step.started", "b", None), ("step.succeeded", "b", None), ("run.finished", None, None)]


async def test_a_batch_retried_one_at_a_time_adds_no_rows_of_the_failed_attempt(databases: list[Database]) -> None:
    """One writer of a batch fails after adding events: the batch is rolled back and each writer re-run alone."""
    db = databases[0]
    store = RunStore(db)
    rows = [run_row("me") for _ in range(5)]
    for r in rows:
        await store.create_run(r, [])

    async def bad(conn: Any) -> None:
        await store._add_events(conn, rows[0]["id"], [NewEvent(type="doomed")], time.time())
        raise ValueError("this writer fails after its events")

    async def good(r: dict[str, Any]) -> None:
        await store.commit_step(result(r["id"], "a", {"v": 1}), "me", LEASE, [NewEvent(type="step.succeeded", path="a")])

    outcomes = await asyncio.gather(good(rows[1]), db.write(bad, inline=True), *(good(r) for r in rows[2:]),
                                    return_exceptions=True)
    assert isinstance(outcomes[1], ValueError)
    assert await events_of(store, rows[0]["id"]) == []
    for r in rows[1:]:
        assert [e[0] for e in await events_of(store, r["id"])] == ["step.succeeded"]


async def test_event_times_bind_as_the_at_columns_processor_would(db_url: str, databases: list[Database]) -> None:
    """The events plan's ``at`` slot has a bind processor (Float's): the positional rows apply it too."""
    from decimal import Decimal

    store = RunStore(databases[0])
    row = run_row("me")
    await store.create_run(row, [])
    await store.add_events(row["id"], [NewEvent(type="x", at=Decimal("1.5"))])  # type: ignore[arg-type]
    assert [e[3] for e in await events_of(store, row["id"])] == [1.5]


# -- a lone step's commit as a planned write (SQLite, one run at a time) ----------------------------------------------

def sqlite_only(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("SQLite's planned writes")


async def a_run_and_its_plans(db_url: str, db: Database, owner: str = "me") -> tuple[RunStore, dict[str, Any], HotPlans]:
    """On SQLite: a store, a run held by ``owner``, and the plans of a step's statements (resolved here)."""
    from storage.backends import SyncConnection

    sqlite_only(db_url)
    store = RunStore(db)
    row = run_row(owner)
    await store.create_run(row, [])
    hot = await db.read(lambda conn: conn.run_sync(
        lambda sync: HotPlans.resolve(SyncConnection(sync), insert_result_if_held("sqlite"))))
    assert hot is not None
    return store, row, hot


def file_rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db_file(db))) as conn:
        return conn.execute(sql).fetchall()


def db_file(db: Database) -> str:
    return db.url.split("///", 1)[1]


async def test_on_sqlite_a_lone_step_is_committed_as_a_planned_write_with_its_events(
    db_url: str, databases: list[Database]
) -> None:
    db = databases[0]
    store, row, hot = await a_run_and_its_plans(db_url, db)
    started = time.time() - 1
    rec = result(row["id"], "a", {"v": [1, None]}, attempts=2, started_at=started)
    evs = [NewEvent(type="step.started", path="a", data={"input": {"n": 1}}, at=started),
           NewEvent(type="step.succeeded", path="a", data={"output": {"v": [1, None]}})]
    commits = db.commits

    assert db.commit_planned_now(hot.step_write(rec, "me", evs)) is True

    assert db.commits == commits + 1
    assert (await store.load_progress(row["id"])).results == {"a": rec}
    assert await events_of(store, row["id"]) == [
        ("step.started", "a", {"input": {"n": 1}}, started),
        ("step.succeeded", "a", {"output": {"v": [1, None]}}, rec.finished_at),
    ]
    # What commit_step writes for the next step, alone, is the same (it takes this path once its plans are resolved).
    await store.commit_step(result(row["id"], "b", 2), "me", LEASE, [NewEvent(type="step.succeeded", path="b")],
                            alone=True)
    await store.commit_step(result(row["id"], "c", 3), "me", LEASE, [NewEvent(type="step.succeeded", path="c")],
                            alone=True)
    assert list((await store.load_progress(row["id"])).results) == ["a", "b", "c"]
    assert [e[1] for e in await events_of(store, row["id"])] == ["a", "a", "b", "c"]


async def test_on_sqlite_a_planned_write_of_a_run_not_held_writes_nothing_and_the_step_is_fenced(
    db_url: str, databases: list[Database]
) -> None:
    db = databases[0]
    store, row, hot = await a_run_and_its_plans(db_url, db, "someone else")
    late = result(row["id"], "a", 1)

    assert db.commit_planned_now(hot.step_write(late, "me", [NewEvent(type="step.succeeded", path="a")])) is False
    await store.commit_step(result(row["id"], "z", 0), "someone else", LEASE, [], alone=True)
    with pytest.raises(LeaseLost):
        await store.commit_step(late, "me", LEASE, [NewEvent(type="step.succeeded", path="a")], alone=True)

    assert list((await store.load_progress(row["id"])).results) == ["z"]
    assert await events_of(store, row["id"]) == []


async def test_on_sqlite_a_planned_write_while_another_process_writes_waits_its_turn_as_a_function(
    db_url: str, databases: list[Database]
) -> None:
    """Another process (a CLI command) holds SQLite's write lock: the planned write commits nothing on the loop, and
    the step's commit waits in the writer thread until the lock is free, then commits once."""
    import sqlite3
    import threading

    db = databases[0]
    store, row, hot = await a_run_and_its_plans(db_url, db)
    other = sqlite3.connect(db_file(db), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    try:
        rec = result(row["id"], "a", 1)
        assert db.commit_planned_now(hot.step_write(rec, "me", [NewEvent(type="step.succeeded", path="a")])) is False
        release.start()
        await store.commit_step(rec, "me", LEASE, [NewEvent(type="step.succeeded", path="a")], alone=True)
    finally:
        release.cancel()
        release.join()
        other.close()

    assert list((await store.load_progress(row["id"])).results) == ["a"]
    assert [e[0] for e in await events_of(store, row["id"])] == ["step.succeeded"]


async def test_on_sqlite_a_planned_write_that_fails_midway_leaves_nothing_and_the_next_one_works(
    db_url: str, databases: list[Database]
) -> None:
    db = databases[0]
    store, row, hot = await a_run_and_its_plans(db_url, db)
    # The result goes in, then an event row the table refuses (its type is NOT NULL): the whole commit is undone.
    refused = hot.step_write(result(row["id"], "a", 1), "me", [NewEvent(type=None, path="a")])  # type: ignore[arg-type]

    assert db.commit_planned_now(refused) is False
    assert file_rows(db, "SELECT path FROM step_results") == []

    assert db.commit_planned_now(hot.step_write(result(row["id"], "a", 1), "me", [NewEvent(type="ok", path="a")]))
    assert file_rows(db, "SELECT path FROM step_results") == [("a",)]
    assert [e[0] for e in await events_of(store, row["id"])] == ["ok"]


async def test_on_sqlite_events_queued_before_a_lone_step_commit_before_it(
    db_url: str, databases: list[Database]
) -> None:
    """A step started earlier said so with a queued event (``add_events_nowait``): a lone step's commit made while it is
    queued does not overtake it (it goes through the queue behind it), and the next one is planned again."""
    sqlite_only(db_url)
    db = databases[0]
    store = await store_of(db, alone=True)
    row = run_row("me")
    await store.create_run(row, [], alone=True)

    store.add_events_nowait(row["id"], [NewEvent(type="step.started", path="a")])
    before = db.planned_commits
    await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [NewEvent(type="step.succeeded", path="a")],
                            alone=True)
    assert db.planned_commits == before
    await store.commit_step(result(row["id"], "b", 2), "me", LEASE, [NewEvent(type="step.succeeded", path="b")],
                            alone=True)
    assert db.planned_commits == before + 1
    assert [(e[0], e[1]) for e in await events_of(store, row["id"])] == [
        ("step.started", "a"), ("step.succeeded", "a"), ("step.succeeded", "b")]


async def test_a_memory_database_never_builds_a_planned_write() -> None:
    """SQLite in memory keeps every write in its one thread: a lone write goes the function's way at once."""
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.open()
    try:
        store = await store_of(db, alone=True)
        assert not db.commits_planned_now()
        row = run_row("me")
        await store.create_run(row, [], alone=True)
        await store.commit_step(result(row["id"], "a", 1), "me", LEASE, [], alone=True)
        assert db.planned_commits == 0 and list((await store.load_progress(row["id"])).results) == ["a"]
    finally:
        await db.close()
