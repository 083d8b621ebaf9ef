"""The run repository's exactly-once guarantees come from keys and compare-and-set, not read-then-write:
step results are insert-if-absent, claims and resumes are compare-and-set, leases are checked on every write."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import weakref
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from storage import Database
from storage.records import NewEvent, StepResultRecord, SuspensionRecord
from storage.runs import _SUSPENSION_STATES, CompareAndSetFailed, LeaseLost, RunStore, insert_run, timer_due

LEASE = 30.0


@pytest.fixture
def store(databases: list[Database]) -> RunStore:
    return RunStore(databases[0])


def run_row(status: str = "pending", owner: str | None = None, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "id": uuid.uuid4().hex[:16], "workflow_id": "wf", "status": status, "input": {"n": 1},
        "owner": owner, "lease_expires_at": now + LEASE if owner else None, "ready_at": now,
        "created_at": now, "updated_at": now, **extra,
    }


async def held_run(store: RunStore, owner: str = "me") -> str:
    row = run_row("running", owner)
    await store.create_run(row, [NewEvent(type="run.started")])
    return row["id"]


def result(run_id: str, path: str, output: Any) -> StepResultRecord:
    return StepResultRecord(run_id=run_id, path=path, step_id=path.split("/")[-1], output=output, finished_at=time.time())


def suspension(run_id: str, path: str = "approve") -> SuspensionRecord:
    return SuspensionRecord(run_id=run_id, path=path, step_id=path, payload={"q": "?"}, created_at=time.time())


# -- step results -------------------------------------------------------------------------------------


async def test_a_step_result_is_written_once_the_first_one_wins(store):
    run_id = await held_run(store)

    await store.commit_step(result(run_id, "a", {"v": 1}), "me", LEASE, [NewEvent(type="step.succeeded", path="a")])
    await store.commit_step(result(run_id, "a", {"v": 2}), "me", LEASE, [])

    progress = await store.load_progress(run_id)
    assert list(progress.results) == ["a"]
    assert progress.results["a"].output == {"v": 1}


async def test_concurrent_commits_of_one_path_leave_exactly_one_result(databases):
    stores = [RunStore(db) for db in databases]
    run_id = await held_run(stores[0])

    await asyncio.gather(*(stores[i % 2].commit_step(result(run_id, "a", {"v": i}), "me", LEASE, []) for i in range(20)))

    progress = await stores[1].load_progress(run_id)
    assert len(progress.results) == 1 and progress.results["a"].output["v"] in range(20)


async def test_a_step_result_from_a_process_that_lost_the_run_is_refused(store):
    run_id = await held_run(store, owner="someone-else")

    with pytest.raises(LeaseLost):
        await store.commit_step(result(run_id, "a", {"v": 1}), "me", LEASE, [NewEvent(type="step.succeeded")])

    assert (await store.load_progress(run_id)).results == {}
    assert [e.type for e in await store.read_events(run_id)] == ["run.started"]


async def test_results_and_events_commit_together_while_the_run_is_held(store):
    run_id = await held_run(store)

    await store.commit_step(result(run_id, "a", 1), "me", LEASE + 10, [NewEvent(type="step.succeeded", path="a")])

    assert set((await store.load_progress(run_id)).results) == {"a"}
    assert [(e.type, e.path) for e in await store.read_events(run_id)] == [("run.started", None), ("step.succeeded", "a")]
    # Leases are renewed by the heartbeat, not by every step (one statement per step fences and records).
    before = (await store.get_run(run_id)).lease_expires_at
    assert await store.heartbeat("me", [run_id], LEASE + 20) == set()
    assert (await store.get_run(run_id)).lease_expires_at > before


# -- claims -------------------------------------------------------------------------------------------


async def test_concurrent_claims_never_hand_one_run_to_two_owners(databases):
    stores = [RunStore(db) for db in databases]
    ids = []
    for _ in range(30):
        row = run_row("pending")
        await stores[0].create_run(row, [])
        ids.append(row["id"])

    claims = await asyncio.gather(*(stores[i % 2].claim(f"owner-{i}", 7, LEASE) for i in range(6)))

    claimed = [run_id for c in claims for run_id in c]
    assert sorted(claimed) == sorted(ids)  # every run claimed, none twice
    for owner_index, c in enumerate(claims):
        for run_id in c:
            run = await stores[1].get_run(run_id)
            assert run.status == "running" and run.owner == f"owner-{owner_index}"


async def test_what_is_ready_to_claim(store):
    now = time.time()
    ready = {
        "new": run_row("pending"),
        "woken": run_row("waiting", ready_at=now - 1),
        "abandoned": run_row("running", "dead", lease_expires_at=now - 1),
    }
    not_ready = {
        "sleeping": run_row("waiting", ready_at=now + 60),
        "waiting-for-event": run_row("waiting", ready_at=None, waiting_for="go"),
        "held": run_row("running", "alive"),
        "suspended": run_row("suspended"),
        "done": run_row("success"),
        "canceled": run_row("canceled"),
    }
    for row in [*ready.values(), *not_ready.values()]:
        await store.create_run(row, [])

    assert await store.has_ready()
    claimed = await store.claim("me", 100, LEASE)

    assert sorted(claimed) == sorted(r["id"] for r in ready.values())
    assert await store.claim("me-too", 100, LEASE) == []
    assert not await store.has_ready()


async def test_a_claim_takes_the_longest_ready_runs_first_whatever_made_them_ready(store):
    # Each kind of readiness is read by a query of its own (see storage/ready.py): the claim still takes the
    # oldest ``limit`` of them all, by the time they became ready, and leaves the others ready.
    now = time.time()
    rows = {
        "pending-old": run_row("pending", ready_at=now - 50),
        "woken": run_row("waiting", ready_at=now - 40),
        "abandoned": run_row("running", "dead", lease_expires_at=now - 1, ready_at=now - 30),
        "timer-beside-approval": run_row("suspended", ready_at=now - 20, updated_at=now - 25),
        "pending-new": run_row("pending", ready_at=now - 10),
    }
    for row in rows.values():
        await store.create_run(row, [])

    assert await store.ready_ids() == [rows[k]["id"] for k in rows]
    assert await store.claim("me", 3, LEASE) == [rows[k]["id"] for k in ("pending-old", "woken", "abandoned")]
    assert await store.claim("me", 3, LEASE) == [rows[k]["id"] for k in ("timer-beside-approval", "pending-new")]


async def test_claim_runs_returns_each_run_as_claimed_with_what_it_has_done(store):
    # The dispatcher starts claimed runs from what the claim read in its own transaction (no second read).
    run_id = await suspended_run(store, "approve")
    await store.resolve_suspension(run_id, "approve", {"ok": True}, "ann", [])  # no claim_for: pending
    await store.send_signal(run_id, "later", {"n": 1}, [])
    fresh = run_row("pending")
    await store.create_run(fresh, [])

    claimed = await store.claim_runs("me", 10, LEASE)

    assert [run.id for run, _ in claimed] == [run_id, fresh["id"]]  # oldest ready first
    (run, progress), (new_run, new_progress) = claimed
    assert (run.status, run.owner) == ("running", "me") and run == await store.get_run(run_id)
    assert progress == await store.load_progress(run_id)
    assert progress.suspensions["approve"].status == "resolved" and [s.name for s in progress.signals] == ["later"]
    assert (new_run.status, new_run.owner, new_progress.results) == ("running", "me", {})
    assert await store.claim_runs("me-too", 10, LEASE) == []


async def test_claim_runs_takes_over_an_expired_lease_and_counts_it(store):
    # A run whose holder's lease ran out is claimed with its death counted and said; a held run is left alone.
    abandoned = run_row("running", "dead", recoveries=1, lease_expires_at=time.time() - 1)
    held = run_row("running", "alive")
    for row in (abandoned, held):
        await store.create_run(row, [])
    await store.commit_step(result(abandoned["id"], "a", 1), "dead", LEASE, [])

    [(run, progress)] = await store.claim_runs("me", 10, LEASE)

    assert run == await store.get_run(abandoned["id"])
    assert (run.status, run.owner, run.recoveries) == ("running", "me", 2)
    assert run.lease_expires_at == run.updated_at + LEASE and list(progress.results) == ["a"]
    assert [e.type for e in await store.read_events(abandoned["id"])] == ["run.recovered"]
    assert (await store.get_run(held["id"])).owner == "alive"
    assert await store.claim_runs("me-too", 10, LEASE) == []


async def test_run_and_suspensions_read_together_as_resume_sees_them(store):
    run_id = await suspended_run(store, "approve")
    run, waits = await store.run_and_suspensions(run_id)
    assert run == await store.get_run(run_id) and run.status == "suspended"
    assert [(s.path, s.status) for s in waits] == [("approve", "open")]
    assert await store.run_and_suspensions("no-such-run") == (None, [])
    # Many callers in one loop turn share one read, and each gets its own run's rows.
    others = [await suspended_run(store, f"p{i}") for i in range(5)]
    both = await asyncio.gather(*(store.run_and_suspensions(i) for i in others))
    assert [(r.id, [s.path for s in w]) for r, w in both] == [(i, [f"p{n}"]) for n, i in enumerate(others)]


async def test_a_settle_sees_input_for_its_own_run_only(store):
    # A run about to become suspended checks for input that arrived while it executed (a decision without a
    # result yet, a buffered event one of its waits is for); other runs' open and resolved waits are no input.
    for _ in range(5):
        other = await suspended_run(store, "approve")
        await store.resolve_suspension(other, "approve", {"ok": True}, "ann", [])
    await suspended_run(store, "approve")

    quiet = await held_run(store)
    await store.open_suspension(suspension(quiet, "mine"), "me", LEASE, [])
    assert (await store.settle(quiet, "me", "suspended", []))["status"] == "suspended"

    decided = await held_run(store)
    await store.open_suspension(suspension(decided, "decide"), "me", LEASE, [])
    await store.resolve_suspension(decided, "decide", {"ok": True}, "ann", [])
    assert (await store.settle(decided, "me", "suspended", []))["status"] == "pending"

    delivered = await held_run(store)
    wait = suspension(delivered, "wait-go").model_copy(update={"kind": "event", "event_name": "go"})
    await store.open_suspension(wait, "me", LEASE, [])
    assert await store.send_signal(delivered, "go", {"n": 1}, []) == "delivered"
    assert (await store.settle(delivered, "me", "waiting", [], waiting_for="go"))["status"] == "pending"

    buffered = await held_run(store)
    assert await store.send_signal(buffered, "later", {"n": 2}, []) == "buffered"
    wait = suspension(buffered, "wait-later").model_copy(update={"kind": "event", "event_name": "later"})
    await store.open_suspension(wait, "me", LEASE, [])
    assert (await store.settle(buffered, "me", "waiting", [], waiting_for="later"))["status"] == "pending"


async def test_on_sqlite_a_settle_and_a_claim_read_by_key_not_every_waiting_run(store):
    # SQLite keeps no statistics here: given ``run_id = ? AND status = ?`` it may walk the status index (every
    # open suspension of every run) instead of the primary key. With 100,000 waiting approvals that made each
    # settle cost ~8 ms and capped a backlog's drain at ~140 runs/s; a claim that sorted every pending run
    # before taking ``limit`` of them did the same to the dispatcher.
    db = store.db
    if not db.is_sqlite:
        pytest.skip("the query planner in question is SQLite's")
    for _ in range(5):
        await suspended_run(store)
    for _ in range(20):
        await store.create_run(run_row("pending"), [])
    claim_reads: list[str] = []
    claim_updates: list[str] = []

    def capture(statement: str) -> None:
        # SQLite's own trace (the claim's statements are prepared: they run on the cursor, not through SQLAlchemy),
        # with the values written into the SQL.
        if statement.lstrip().upper().startswith("SELECT") and "ORDER BY runs.ready_at" in statement:
            claim_reads.append(statement)  # which runs are ready
        elif statement.lstrip().upper().startswith("UPDATE RUNS"):
            claim_updates.append(statement)

    through_sqlalchemy: list[str] = []

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        through_sqlalchemy.append(statement)

    backend: Any = db._backend
    raw = backend._writer_connection().connection.dbapi_connection
    raw.set_trace_callback(capture)
    event.listen(backend.writer, "before_cursor_execute", executed)
    try:
        # (Ten ids each: SQLite's choice between the ids and the status indexes turned at about as many.)
        assert len(await store.claim("me", 10, LEASE)) == 10
        assert len(await store.claim_runs("me", 10, LEASE)) == 10  # (the claim that reads what it took)
    finally:
        raw.set_trace_callback(None)
        event.remove(backend.writer, "before_cursor_execute", executed)
    # The queries for ready runs are prepared statements, run straight on the cursor (built once per set of versions).
    assert not [sql for sql in through_sqlalchemy if "ORDER BY runs.ready_at" in sql]

    async def plan(sql: str, parameters: Any = ()) -> str:
        async def op(conn: Any) -> str:
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)).fetchall()
            return " / ".join(r[3] for r in rows)

        return await db.read(op)

    assert len(claim_reads) == 8  # each claim: one query for each way a run is ready
    for sql in claim_reads:
        # Each reads its part of the index in order and stops after ``limit`` rows: no sort of every ready run.
        assert "TEMP B-TREE FOR ORDER BY" not in await plan(sql), sql
    assert len(claim_updates) == 2
    for sql in claim_updates:
        # The runs just picked, by their ids: not every pending run through the status indexes.
        assert await plan(sql) == "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (id=?)", sql
    states = str(_SUSPENSION_STATES.compile(dialect=sqlite_dialect()))
    assert "sqlite_autoindex_suspensions_1 (run_id=?)" in await plan(states, ("r1",) * states.count("?"))


async def test_a_process_whose_run_was_taken_over_can_no_longer_write_to_it(store):
    row = run_row("running", "slow", lease_expires_at=time.time() - 1)
    await store.create_run(row, [])

    assert await store.claim("fast", 10, LEASE) == [row["id"]]

    with pytest.raises(LeaseLost):
        await store.commit_step(result(row["id"], "a", 1), "slow", LEASE, [])
    with pytest.raises(LeaseLost):
        await store.settle(row["id"], "slow", "success", [], output=1)
    assert await store.heartbeat("slow", [row["id"]], LEASE) == {row["id"]}
    assert await store.heartbeat("fast", [row["id"]], LEASE) == set()
    await store.settle(row["id"], "fast", "success", [NewEvent(type="run.finished")], output=2)
    assert (await store.get_run(row["id"])).output == 2


async def test_release_owner_hands_runs_back_for_anyone_to_claim(store):
    a, b = await held_run(store, "crashed"), await held_run(store, "crashed")
    other = await held_run(store, "healthy")

    released = await store.release_owner("crashed")

    assert sorted(released) == sorted([a, b])
    assert {(await store.get_run(i)).status for i in (a, b)} == {"pending"}
    assert (await store.get_run(other)).owner == "healthy"
    assert [e.type for e in await store.read_events(a)][-1] == "run.recovered"
    assert sorted(await store.claim("rescuer", 10, LEASE)) == sorted([a, b])


# -- resume -------------------------------------------------------------------------------------------


async def suspended_run(store: RunStore, path: str = "approve") -> str:
    run_id = await held_run(store)
    await store.open_suspension(suspension(run_id, path), "me", LEASE, [NewEvent(type="step.suspended", path=path)])
    await store.settle(run_id, "me", "suspended", [NewEvent(type="run.suspended")])
    return run_id


async def test_resume_is_a_compare_and_set_the_second_learns_who_won(store):
    run_id = await suspended_run(store)

    await store.resolve_suspension(run_id, "approve", {"ok": True}, "alice", [NewEvent(type="run.resumed")])
    with pytest.raises(CompareAndSetFailed) as err:
        await store.resolve_suspension(run_id, "approve", {"ok": False}, "bob", [NewEvent(type="run.resumed")])

    current = err.value.current
    assert isinstance(current, SuspensionRecord)
    assert (current.status, current.resolved_by, current.resume_data) == ("resolved", "alice", {"ok": True})
    assert (await store.get_run(run_id)).status == "pending"  # ready for a dispatcher to continue
    assert [e.type for e in await store.read_events(run_id)].count("run.resumed") == 1


async def test_concurrent_resumes_through_two_databases_exactly_one_wins(databases):
    stores = [RunStore(db) for db in databases]
    run_id = await suspended_run(stores[0])

    outcomes = await asyncio.gather(
        *(stores[i % 2].resolve_suspension(run_id, "approve", {"i": i}, f"U{i}", []) for i in range(40)),
        return_exceptions=True,
    )

    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert outcomes[winners[0]] is False  # nobody asked to claim the run: it is left to a dispatcher
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, CompareAndSetFailed) for o in losers)
    assert {o.current.resolved_by for o in losers} == {f"U{winners[0]}"}


async def test_a_canceled_runs_suspension_cannot_be_resolved(store):
    run_id = await suspended_run(store)
    await store.cancel(run_id, "admin", [NewEvent(type="run.canceled")])

    with pytest.raises(CompareAndSetFailed) as err:
        await store.resolve_suspension(run_id, "approve", {}, "late", [])

    assert err.value.current.status == "open"
    assert (await store.get_run(run_id)).status == "canceled"


async def test_a_resume_during_execution_turns_the_suspended_settle_into_pending(store):
    run_id = await held_run(store)
    await store.open_suspension(suspension(run_id, "left"), "me", LEASE, [])
    await store.open_suspension(suspension(run_id, "right"), "me", LEASE, [])
    # "left" is resumed while the run still executes another branch...
    await store.resolve_suspension(run_id, "left", {"ok": True}, "alice", [])
    assert (await store.get_run(run_id)).status == "running"

    # ...so when the executor settles as suspended, the run is made ready again instead.
    settled = await store.settle(run_id, "me", "suspended", [NewEvent(type="run.suspended")])

    assert settled["status"] == "pending" and settled["owner"] is None
    assert "run.suspended" not in [e.type for e in await store.read_events(run_id)]


# -- cancel and events ---------------------------------------------------------------------------------


async def test_cancel_is_a_compare_and_set_on_a_live_run(store):
    run_id = await held_run(store)

    await store.cancel(run_id, "U1", [NewEvent(type="run.canceled")])
    with pytest.raises(CompareAndSetFailed) as err:
        await store.cancel(run_id, "U2", [])

    assert err.value.current == "canceled"
    run = await store.get_run(run_id)
    assert (run.status, run.owner, run.error["message"]) == ("canceled", None, "Canceled by U1.")
    with pytest.raises(LeaseLost):
        await store.settle(run_id, "me", "success", [], output=1)
    with pytest.raises(CompareAndSetFailed):
        await store.cancel("no-such-run", "U1", [])


async def test_buffered_signals_are_consumed_once(store):
    run_id = await held_run(store)

    assert await store.send_signal(run_id, "go", {"x": 1}, []) == "buffered"
    [sig] = (await store.load_progress(run_id)).signals

    results = await asyncio.gather(*(store.consume_signal(run_id, sig.id, f"wait-{i}") for i in range(5)))

    assert sorted(results) == [False, False, False, False, True]


async def test_events_are_read_in_order_from_an_offset(store):
    run_id = await held_run(store)
    await store.add_events(run_id, [NewEvent(type="step.started", path=f"s{i}") for i in range(10)])

    everything = await store.read_events(run_id)
    later = await store.read_events(run_id, after=everything[4].id)

    assert [e.path for e in everything] == [None] + [f"s{i}" for i in range(10)]
    assert later == everything[5:]
    assert [e.id for e in await store.read_events(run_id, limit=3)] == [e.id for e in everything[:3]]


# -- reads of one run's records -------------------------------------------------------------------------


async def test_many_concurrent_reads_each_get_their_own_runs_records(store, databases):
    """Reads made at the same moment share queries; each caller still gets exactly its own run's rows."""
    ids = []
    for i in range(37):  # not a power of two: the IN lists of a shared query are padded
        run_id = await held_run(store)
        for step in range(i % 3):
            await store.commit_step(result(run_id, f"s{step}", {"i": i, "step": step}), "me", LEASE, [])
        if i % 4 == 0:
            await store.open_suspension(suspension(run_id, f"approve-{i}"), "me", LEASE, [])
        if i % 5 == 0:
            await store.send_signal(run_id, f"go-{i}", {"i": i}, [])
        ids.append(run_id)
    missing = "no-such-run"
    # What each read returns on its own, through a second handle (no reads to share there).
    alone = RunStore(databases[1])
    expected = {run_id: (await alone.get_run(run_id), await alone.load_progress(run_id),
                         await alone.suspensions_of(run_id)) for run_id in ids}

    runs, progress, suspensions = await asyncio.gather(
        asyncio.gather(*(store.get_run(r) for r in [*ids, missing])),
        asyncio.gather(*(store.load_progress(r) for r in [*ids, missing])),
        asyncio.gather(*(store.suspensions_of(r) for r in [*ids, missing])),
    )

    assert runs[-1] is None and suspensions[-1] == []
    assert progress[-1].results == {} and progress[-1].suspensions == {} and progress[-1].signals == []
    for i, run_id in enumerate(ids):
        run, prog, susp = expected[run_id]
        assert runs[i] == run
        assert progress[i] == prog
        assert suspensions[i] == susp
        assert set(prog.results) == {f"s{step}" for step in range(i % 3)}
        assert [s.path for s in susp] == ([f"approve-{i}"] if i % 4 == 0 else [])
        assert [s.name for s in prog.signals] == ([f"go-{i}"] if i % 5 == 0 else [])


async def test_a_read_made_after_a_commit_sees_it_even_while_others_share_a_query(store):
    run_id = await held_run(store)

    async def commit_then_read() -> set[str]:
        await store.commit_step(result(run_id, "late", 1), "me", LEASE, [])
        return set((await store.load_progress(run_id)).results)

    seen = await asyncio.gather(store.load_progress(run_id), commit_then_read(), store.load_progress(run_id))

    assert seen[1] == {"late"}
    assert set((await store.load_progress(run_id)).results) == {"late"}


def test_the_ready_condition_of_one_moment_is_not_kept_after_it_was_asked() -> None:
    """The dispatcher asks what is ready every poll, each time with a new ``now``: nothing may pile up per ask."""
    condition = timer_due(time.time())
    kept = weakref.ref(condition)
    del condition
    gc.collect()
    assert kept() is None


def test_the_insert_of_a_run_is_built_once_per_dialect() -> None:
    """Prepared statements are kept for the life of the process: one per dialect, not one per ``RunStore``."""
    assert insert_run("sqlite") is insert_run("sqlite")
    assert insert_run("postgresql") is insert_run("postgresql")
