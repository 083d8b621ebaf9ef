"""Resumes made in one turn of the event loop commit together (storage/resolves.py), each with its own outcome:
the compare-and-set holds for every one of them exactly as if each had committed alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from storage import Database
from storage.outbox import INSERT_EVENTS
from storage.records import NewEvent
from storage.resolves import Resolve, resolve_many
from storage.runs import CompareAndSetFailed, RunStore
from tests.storage.test_runs import LEASE, held_run, suspended_run, suspension


@pytest.fixture
def store(databases: list[Database]) -> RunStore:
    return RunStore(databases[0])


async def test_resumes_of_one_turn_each_get_their_own_outcome(store):
    claimed, ready, resolved, canceled = [await suspended_run(store) for _ in range(4)]
    await store.resolve_suspension(resolved, "approve", {"n": 0}, "first", [])
    await store.cancel(canceled, "admin", [NewEvent(type="run.canceled")])
    executing_too = await held_run(store)  # still executing another branch: the resume may not claim it
    await store.open_suspension(suspension(executing_too), "me", LEASE, [])

    outcomes = await asyncio.gather(
        store.resolve_suspension(claimed, "approve", {"n": 1}, "alice", [NewEvent(type="run.resumed", path="approve")],
                                 claim_for="resumer", lease=LEASE),
        store.resolve_suspension(ready, "approve", {"n": 2}, "bob", [NewEvent(type="run.resumed", path="approve")]),
        store.resolve_suspension(resolved, "approve", {"n": 3}, "carol", []),
        store.resolve_suspension(canceled, "approve", {"n": 4}, "dave", []),
        store.resolve_suspension("no-such-run", "approve", {"n": 5}, "erin", []),
        store.resolve_suspension(executing_too, "approve", {"n": 6}, "frank", [], claim_for="resumer", lease=LEASE),
        return_exceptions=True,
    )

    assert outcomes[:2] == [True, False] and outcomes[5] is False
    assert all(isinstance(o, CompareAndSetFailed) for o in outcomes[2:5])
    assert (outcomes[2].current.resolved_by, outcomes[2].current.resume_data) == ("first", {"n": 0})
    assert outcomes[3].current.status == "open" and outcomes[4].current is None
    run = await store.get_run(claimed)
    assert (run.status, run.owner) == ("running", "resumer") and run.lease_expires_at > run.updated_at
    assert ((await store.get_run(ready)).status, (await store.get_run(ready)).owner) == ("pending", None)
    assert (await store.get_run(canceled)).status == "canceled"
    assert ((await store.get_run(executing_too)).status, (await store.get_run(executing_too)).owner) == ("running", "me")
    for run_id, by, data in ((claimed, "alice", {"n": 1}), (ready, "bob", {"n": 2}), (executing_too, "frank", {"n": 6})):
        [wait] = await store.suspensions_of(run_id)
        assert (wait.status, wait.resolved_by, wait.resume_data) == ("resolved", by, data)
    assert [e.type for e in await store.read_events(claimed)].count("run.resumed") == 1
    assert [e.type for e in await store.read_events(ready)].count("run.resumed") == 1


async def test_many_resumes_of_one_suspension_in_one_turn_exactly_one_wins(store):
    run_id = await suspended_run(store)

    outcomes = await asyncio.gather(
        *(store.resolve_suspension(run_id, "approve", {"i": i}, f"U{i}", [], claim_for="me", lease=LEASE)
          for i in range(20)),
        return_exceptions=True,
    )

    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
    assert len(winners) == 1 and outcomes[winners[0]] is True
    assert {o.current.resolved_by for o in outcomes if isinstance(o, CompareAndSetFailed)} == {f"U{winners[0]}"}
    assert len([o for o in outcomes if isinstance(o, CompareAndSetFailed)]) == 19


async def test_two_waits_of_one_run_resumed_in_one_turn_are_both_resolved(store):
    run_id = await held_run(store)
    for path in ("left", "right"):
        await store.open_suspension(suspension(run_id, path), "me", LEASE, [])
    await store.settle(run_id, "me", "suspended", [NewEvent(type="run.suspended")])

    outcomes = await asyncio.gather(*(
        store.resolve_suspension(run_id, path, {"p": path}, "alice", [], claim_for="resumer", lease=LEASE)
        for path in ("left", "right")))

    assert sorted(outcomes) == [False, True]  # one claims the run; the other finds it claimed already
    assert {(w.path, w.status) for w in await store.suspensions_of(run_id)} == {("left", "resolved"), ("right", "resolved")}
    assert (await store.get_run(run_id)).owner == "resumer"


async def test_a_resume_that_cannot_be_stored_fails_alone(store):
    good = [await suspended_run(store) for _ in range(3)]
    bad = await suspended_run(store)

    outcomes = await asyncio.gather(
        *(store.resolve_suspension(run_id, "approve", {"ok": True}, "alice", []) for run_id in good),
        store.resolve_suspension(bad, "approve", {"not json": object()}, "alice", []),
        return_exceptions=True,
    )

    assert outcomes[:3] == [False, False, False] and isinstance(outcomes[3], Exception)
    assert [(await store.get_run(run_id)).status for run_id in good] == ["pending"] * 3
    assert (await store.get_run(bad)).status == "suspended"
    assert [w.status for w in await store.suspensions_of(bad)] == ["open"]


async def changed_meanwhile(store: RunStore) -> tuple[str, float]:
    """A suspended run, and its ``updated_at`` as read before someone executed it again (it is suspended again)."""
    run_id = await held_run(store)
    for path in ("approve", "other"):
        await store.open_suspension(suspension(run_id, path), "me", LEASE, [])
    await store.settle(run_id, "me", "suspended", [])
    seen = (await store.get_run(run_id)).updated_at
    await store.resolve_suspension(run_id, "other", {}, "bob", [])
    assert await store.claim("someone", 10, LEASE) == [run_id]
    await store.settle(run_id, "someone", "suspended", [], seen=["other"])
    assert (await store.get_run(run_id)).status == "suspended"
    return run_id, seen


@pytest.mark.parametrize("together", [False, True], ids=["alone", "in-a-group"])
async def test_a_resume_claims_its_run_only_if_it_did_not_change_since_it_was_read(store, together):
    # A resumer that read the run's progress starts it from that read; if the run was executed meanwhile, the read
    # is stale: the resume still wins, but the run is left to a dispatcher (which reads it afresh).
    stale, seen = await changed_meanwhile(store)
    fresh = await suspended_run(store)
    fresh_seen = (await store.get_run(fresh)).updated_at

    calls = [store.resolve_suspension(stale, "approve", {"ok": True}, "ann", [], claim_for="me", lease=LEASE,
                                      seen_at=seen),
             store.resolve_suspension(fresh, "approve", {"ok": True}, "ann", [], claim_for="me", lease=LEASE,
                                      seen_at=fresh_seen)]
    outcomes = await asyncio.gather(*calls) if together else [await call for call in calls]

    assert outcomes == [False, True]
    assert ((await store.get_run(stale)).status, (await store.get_run(stale)).owner) == ("pending", None)
    assert [(w.path, w.status) for w in await store.suspensions_of(stale)] == [("approve", "resolved"),
                                                                                 ("other", "resolved")]
    assert ((await store.get_run(fresh)).status, (await store.get_run(fresh)).owner) == ("running", "me")


async def test_run_and_progress_reads_what_a_claim_would(store):
    run_id = await suspended_run(store)
    await store.send_signal(run_id, "later", {"n": 1}, [])

    run, progress = await store.run_and_progress(run_id)

    assert run == await store.get_run(run_id) and progress == await store.load_progress(run_id)
    assert list(progress.suspensions) == ["approve"] and [s.name for s in progress.signals] == ["later"]
    assert await store.run_and_progress("no-such-run") == (None, await store.load_progress("no-such-run"))


def traced(store: RunStore) -> tuple[list[str], Any]:
    """The statements the write connection executes (SQLite's own trace: the group's statements are prepared), and a
    function that stops the trace."""
    statements: list[str] = []
    raw = store.db._backend._writer_connection().connection.dbapi_connection  # type: ignore[union-attr]
    raw.set_trace_callback(statements.append)
    return statements, lambda: raw.set_trace_callback(None)


async def test_a_group_whose_resumes_all_hold_writes_without_reading_first(store):
    if not store.db.is_sqlite:
        pytest.skip("resumes are grouped on SQLite only")
    claimed = [await suspended_run(store) for _ in range(3)]
    ready = [await suspended_run(store) for _ in range(2)]
    statements, stop = traced(store)
    try:
        outcomes = await asyncio.gather(
            *(store.resolve_suspension(r, "approve", {"ok": True}, "ann", [NewEvent(type="run.resumed")],
                                       claim_for="me", lease=LEASE) for r in claimed),
            *(store.resolve_suspension(r, "approve", {"ok": True}, "ann", [NewEvent(type="run.resumed")])
              for r in ready))
    finally:
        stop()

    assert outcomes == [True] * 3 + [False] * 2
    # The compare-and-sets themselves say that every one held: the states of the runs and waits are not read first.
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")], statements
    assert [s.split()[0] for s in statements if s.split()[0] in ("SAVEPOINT", "ROLLBACK", "RELEASE")] == [
        "SAVEPOINT", "RELEASE"]
    # Nor is the run read inside the compare-and-set: each run's own update that follows says it is live.
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE SUSPENSIONS") and "EXISTS" in s.upper()]
    assert [(await store.get_run(r)).status for r in claimed + ready] == ["running"] * 3 + ["pending"] * 2
    for run_id in claimed + ready:
        assert [e.type for e in await store.read_events(run_id)].count("run.resumed") == 1


async def test_a_group_with_a_resume_of_a_run_already_pending_or_running_decides_every_resume_as_alone(store):
    if not store.db.is_sqlite:
        pytest.skip("resumes are grouped on SQLite only")
    claimed, ready = await suspended_run(store), await suspended_run(store)
    pending = await held_run(store)  # two approvals side by side; the first already made the run ready
    for path in ("left", "right"):
        await store.open_suspension(suspension(pending, path), "me", LEASE, [])
    await store.settle(pending, "me", "suspended", [NewEvent(type="run.suspended")])
    await store.resolve_suspension(pending, "left", {"ok": True}, "first", [])
    ready_at = (await store.get_run(pending)).ready_at
    running = await held_run(store)  # still executing another branch here
    await store.open_suspension(suspension(running), "me", LEASE, [])
    resumed = NewEvent(type="run.resumed")
    statements, stop = traced(store)
    try:
        outcomes = await asyncio.gather(
            store.resolve_suspension(claimed, "approve", {"ok": True}, "ann", [resumed], claim_for="resumer", lease=LEASE),
            store.resolve_suspension(ready, "approve", {"ok": True}, "ann", [resumed]),
            store.resolve_suspension(pending, "right", {"ok": True}, "ann", [resumed]),
            store.resolve_suspension(running, "approve", {"ok": True}, "ann", [resumed]))
    finally:
        stop()

    assert outcomes == [True, False, False, False]
    assert statements.count("ROLLBACK TO threadflow_resolve_group") == 1  # the ready marks that did not hold
    assert ((await store.get_run(claimed)).status, (await store.get_run(claimed)).owner) == ("running", "resumer")
    assert (await store.get_run(ready)).status == "pending"
    assert ((await store.get_run(pending)).status, (await store.get_run(pending)).ready_at) == ("pending", ready_at)
    assert ((await store.get_run(running)).status, (await store.get_run(running)).owner) == ("running", "me")
    for run_id in (claimed, ready, pending, running):
        assert all(w.status == "resolved" for w in await store.suspensions_of(run_id))
        assert [e.type for e in await store.read_events(run_id)].count("run.resumed") == 1


async def test_a_group_of_resumes_that_leave_their_runs_to_the_dispatcher_holds_each_compare_and_set(store):
    # No claims: every resume only makes its run ready. A run still executing another branch is not made ready (its
    # wait is resolved: the execution sees it), and a canceled run's open wait may not be resolved at all.
    suspended = await suspended_run(store)
    executing = await held_run(store)
    await store.open_suspension(suspension(executing), "me", LEASE, [])
    canceled = await suspended_run(store)
    await store.cancel(canceled, "admin", [NewEvent(type="run.canceled")])

    outcomes = await asyncio.gather(
        *(store.resolve_suspension(r, "approve", {"ok": True}, "ann", [NewEvent(type="run.resumed", path="approve")])
          for r in (suspended, executing, canceled)),
        return_exceptions=True)

    assert outcomes[:2] == [False, False]
    assert isinstance(outcomes[2], CompareAndSetFailed) and outcomes[2].current.status == "open"
    assert ((await store.get_run(suspended)).status, (await store.get_run(executing)).status) == ("pending", "running")
    assert (await store.get_run(executing)).owner == "me"
    assert [w.status for w in await store.suspensions_of(executing)] == ["resolved"]
    assert [w.status for w in await store.suspensions_of(canceled)] == ["open"]
    assert (await store.get_run(canceled)).status == "canceled"
    assert "run.resumed" not in [e.type for e in await store.read_events(canceled)]
    for run_id in (suspended, executing):
        assert [e.type for e in await store.read_events(run_id)].count("run.resumed") == 1


async def test_a_group_with_one_resume_that_does_not_hold_undoes_only_its_own_updates(store):
    if not store.db.is_sqlite:
        pytest.skip("resumes are grouped on SQLite only")
    good = [await suspended_run(store) for _ in range(3)]
    taken = await suspended_run(store)
    await store.resolve_suspension(taken, "approve", {"n": 0}, "first", [])
    other = await held_run(store)
    now = time.time()
    items = [Resolve(r, "approve", {"ok": True}, "ann", [NewEvent(type="run.resumed")], "me", LEASE, now) for r in good]
    items.append(Resolve(taken, "approve", {"n": 1}, "bob", [NewEvent(type="run.resumed")], None, LEASE, now))

    async def batch(conn: Any) -> list[Any]:
        # Another writer of the same batch went first: its event rows are held back for the batch's one insert.
        await conn.execute(INSERT_EVENTS, [{"run_id": other, "type": "step.succeeded", "path": "a", "data": {}, "at": now}])
        return await resolve_many(conn, items)

    statements, stop = traced(store)
    try:
        outcomes = await store.db.write(batch)
    finally:
        stop()

    assert outcomes[:3] == [True] * 3 and isinstance(outcomes[3], CompareAndSetFailed)
    assert outcomes[3].current.resolved_by == "first"
    assert "ROLLBACK TO threadflow_resolve_group" in statements  # the updates undone, then decided on a read
    assert [(await store.get_run(r)).status for r in good] == ["running"] * 3
    assert (await store.get_run(taken)).status == "pending"  # as the first resume left it, not resolved by bob
    for run_id in good:
        assert [e.type for e in await store.read_events(run_id)].count("run.resumed") == 1
    assert "run.resumed" not in [e.type for e in await store.read_events(taken)]
    # The rest of the batch's transaction was kept: the other writer's event, which it held back, is there.
    assert [e.type for e in await store.read_events(other)].count("step.succeeded") == 1


async def test_a_group_whose_compare_and_sets_hold_but_one_claim_does_not_claims_only_the_others(store):
    # Every suspension is open, so every resolve holds; one run still executes another branch here ("me"), so its
    # claim does not: the group must not report it claimed (the resumer would execute it a second time).
    suspended = await suspended_run(store)
    executing = await held_run(store)
    await store.open_suspension(suspension(executing), "me", LEASE, [])

    outcomes = await asyncio.gather(*(
        store.resolve_suspension(r, "approve", {"ok": True}, "ann", [], claim_for="resumer", lease=LEASE)
        for r in (suspended, executing)))

    assert outcomes == [True, False]
    assert ((await store.get_run(suspended)).status, (await store.get_run(suspended)).owner) == ("running", "resumer")
    assert ((await store.get_run(executing)).status, (await store.get_run(executing)).owner) == ("running", "me")
    assert [w.status for w in await store.suspensions_of(executing)] == ["resolved"]
