"""Claims, timers and stranded runs by workflow version, in SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from storage import Database
from storage.records import NewEvent, SuspensionRecord
from storage.runs import RunStore
from storage.versions import Serving, VersionStore

OLD, NEW = "0" * 16, "f" * 16


def row(status: str, fingerprint: str | None, workflow_id: str = "wf", **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "id": uuid.uuid4().hex[:16], "workflow_id": workflow_id, "workflow_fingerprint": fingerprint, "status": status,
        "ready_at": now, "created_at": now, "updated_at": now, **extra,
    }


async def add(store: RunStore, *rows: dict[str, Any]) -> list[str]:
    for r in rows:
        await store.create_run(r, [NewEvent(type="run.started")])
    return [r["id"] for r in rows]


async def test_a_claim_takes_only_runs_of_versions_the_process_has(db: Database) -> None:
    store = RunStore(db)
    old, new, legacy, other = await add(store, row("pending", OLD), row("pending", NEW), row("pending", None),
                                        row("pending", None, workflow_id="gone"))
    store.serving = Serving((NEW,), ("wf",))
    assert sorted(await store.claim("new-replica", 10, 30.0)) == sorted([new, legacy])
    assert not await store.has_ready()  # the old version's run is ready, but not for this process

    store.serving = Serving((OLD,), ("wf",))
    assert await store.has_ready()
    assert await store.claim("old-replica", 10, 30.0) == [old]
    store.serving = None  # a store that is not an engine's sees every run
    assert await store.claim("anyone", 10, 30.0) == [other]


async def test_timers_ignore_runs_and_approvals_the_process_will_never_act_on(db: Database) -> None:
    store = RunStore(db)
    past = time.time() - 60
    [_, suspended] = await add(store, row("waiting", OLD, ready_at=past),
                               row("running", OLD, owner="me", lease_expires_at=time.time() + 30))
    await store.open_suspension(SuspensionRecord(
        run_id=suspended, path="approve", step_id="approve", created_at=past, expires_at=past + 1,
    ), "me", 30.0, [])
    await store.settle(suspended, "me", "suspended", [])
    store.serving = Serving((NEW,), ())
    assert await store.next_wakeup() is None
    assert await store.next_expiry() is None
    assert await store.expired_suspensions(time.time()) == []
    store.serving = Serving((OLD,), ())
    assert await store.next_wakeup() == pytest.approx(past)
    assert [s.run_id for s in await store.expired_suspensions(time.time())] == [suspended]
    await store.cancel(suspended, "ops", [])
    assert await store.next_expiry() is None  # a canceled run's approval never expires


async def test_stranded_runs_are_those_no_live_process_nor_the_asker_has(db: Database) -> None:
    store, versions = RunStore(db), VersionStore(db)
    old, _, _ = await add(store, row("suspended", OLD), row("pending", NEW), row("success", OLD))
    await versions.announce("replica-a", [("wf", "2", NEW)], lease=30.0)
    assert [r.id for r in await versions.stranded(Serving())] == [old]
    assert await versions.stranded(Serving((OLD,), ())) == []  # the asker has it: it can continue the run
    await versions.announce("replica-b", [("wf", "1", OLD)], lease=30.0)
    assert await versions.stranded(Serving()) == []
    await versions.announce("replica-b", [("wf", "1", OLD)], lease=-1.0)  # its heartbeat stopped
    assert [r.id for r in await versions.stranded(Serving())] == [old]
    assert {(c.fingerprint, c.open_runs) for c in await versions.open_counts()} == {(OLD, 1), (NEW, 1)}


async def test_a_sweep_flags_each_stranded_run_once_with_its_event(db: Database) -> None:
    store, versions = RunStore(db), VersionStore(db)
    [old] = await add(store, row("suspended", OLD))
    await versions.announce("replica-a", [("wf", "2", NEW)], lease=30.0)

    def event(s: Any) -> NewEvent:
        return NewEvent(type="run.stranded", data={"fingerprint": s.fingerprint,
                                                   "registered": [v.fingerprint for v in s.live]})

    [found] = await versions.sweep(event)
    assert (found.run_id, found.fingerprint, [v.fingerprint for v in found.live]) == (old, OLD, [NEW])
    assert await versions.sweep(event) == []
    assert [(e.type, e.data) for e in await store.read_events(old) if e.type == "run.stranded"] == [
        ("run.stranded", {"fingerprint": OLD, "registered": [NEW]})
    ]
    await versions.announce("replica-b", [("wf", "1", OLD)], lease=30.0)
    assert await versions.sweep(event) == []
    assert (await store.get_run(old)).stranded_at is None  # served again: a later stranding is said again
    await versions.withdraw("replica-b")
    assert [s.run_id for s in await versions.sweep(event)] == [old]


async def test_a_sweep_never_strands_the_runs_of_versions_the_sweeping_process_has(db: Database) -> None:
    """Whatever its rows in the table say: their write may have waited out a database stall and committed expired."""
    store, versions = RunStore(db), VersionStore(db)
    [mine] = await add(store, row("suspended", OLD))
    await versions.announce("replica-a", [("wf", "1", OLD)], lease=-1.0)  # listed, but already expired

    assert await versions.sweep(lambda s: NewEvent(type="run.stranded"), Serving((OLD,), ("wf",))) == []
    assert (await store.get_run(mine)).stranded_at is None
