"""Run listings for the inspector: keyset pages that neither skip nor repeat runs, filters, counts, and the
per-person visibility rule (channels they are in, runs they started), on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from storage import Database
from storage.records import NewEvent
from storage.run_queries import RunCursor, RunFilter, RunQueries, Visibility
from storage.runs import RunStore
from storage.slack_store import SlackRun, SlackStore


async def add_runs(db: Database, n: int, *, same_time_every: int = 3, base: float | None = None,
                   prefix: str = "") -> list[str]:
    """``n`` runs; every ``same_time_every`` share one created_at (ties are ordered by id). Oldest first."""
    store = RunStore(db)
    base = time.time() - 1000 if base is None else base
    ids = []
    for i in range(n):
        run_id = f"{prefix}{i:04x}{'ab' if i % 2 else 'cd'}{i:010d}"
        created = base + (i // same_time_every)
        await store.create_run({
            "id": run_id, "workflow_id": "even" if i % 2 == 0 else "odd", "status": "success" if i % 4 else "failed",
            "input": {}, "started_by": f"U{i % 3}", "created_at": created, "updated_at": created,
            "ready_at": created,
        }, [NewEvent(type="run.started")])
        ids.append(run_id)
    return ids


async def test_keyset_pages_walk_every_run_once_both_ways(db: Database) -> None:
    await add_runs(db, 23)
    q = RunQueries(db)
    everything = (await q.page(RunFilter(), limit=100)).runs
    expected = [r.id for r in everything]
    assert [(r.created_at, r.id) for r in everything] == sorted(((r.created_at, r.id) for r in everything), reverse=True)

    seen, page = [], await q.page(RunFilter(), limit=5)
    assert page.newer is None
    pages = [page]
    while True:
        seen += [r.id for r in page.runs]
        if page.older is None:
            break
        page = await q.page(RunFilter(), before=page.older, limit=5)
        pages.append(page)
    assert seen == expected and len(pages) == 5 and len(pages[-1].runs) == 3

    # and back, newer and newer, to the first page
    back = pages[-1]
    walked = [r.id for r in back.runs]
    while back.newer is not None:
        back = await q.page(RunFilter(), after=back.newer, limit=5)
        walked = [r.id for r in back.runs] + walked
    assert walked == expected and back.runs == pages[0].runs


async def test_a_run_started_while_paging_does_not_shift_the_pages(db: Database) -> None:
    await add_runs(db, 10)
    q = RunQueries(db)
    first = await q.page(RunFilter(), limit=4)
    await add_runs(db, 1, base=time.time(), prefix="new")  # a newer run arrives
    second = await q.page(RunFilter(), before=first.older, limit=4)
    assert not {r.id for r in second.runs} & {r.id for r in first.runs}


async def test_filters_and_counts(db: Database) -> None:
    ids = await add_runs(db, 12)
    q = RunQueries(db)
    assert await q.count(RunFilter()) == 12
    failed = await q.page(RunFilter(status="failed"))
    assert {r.id for r in failed.runs} == {ids[i] for i in range(0, 12, 4)}
    assert await q.count(RunFilter(status="failed")) == 3
    assert await q.count(RunFilter(workflow_id="odd", status="success")) == 6
    assert [r.id for r in (await q.page(RunFilter(id_prefix=ids[5][:4]))).runs] == [ids[5]]
    assert await q.count(RunFilter(id_prefix="zzzz")) == 0


async def test_a_person_sees_runs_of_their_channels_and_their_own(db: Database) -> None:
    ids = await add_runs(db, 6)
    slack = SlackStore(db)
    for i, channel in ((0, "C1"), (1, "C2"), (2, "C1")):
        await slack.add_run(SlackRun(run_id=ids[i], team_id="T", channel_id=channel, root_ts="1.0",
                                     thread_id=f"slack:T:{channel}:1.0", started_by="U0", created_at=time.time()))
    q = RunQueries(db)
    in_c1 = RunFilter(visible_to=Visibility(channels=frozenset({"C1"})))
    assert {r.id for r in (await q.page(in_c1)).runs} == {ids[0], ids[2]}
    assert await q.count(in_c1) == 2
    # U1 started runs 1 and 4 (1 is in C2, which they are not in): their own runs count too
    mine = RunFilter(visible_to=Visibility(channels=frozenset({"C1"}), user="U1"))
    assert {r.id for r in (await q.page(mine)).runs} == {ids[0], ids[2], ids[1], ids[4]}
    nobody = RunFilter(visible_to=Visibility(channels=frozenset()))
    assert (await q.page(nobody)).runs == [] and await q.count(nobody) == 0
    assert await q.channels_of(ids) == {ids[0]: "C1", ids[1]: "C2", ids[2]: "C1"}


async def test_the_event_feed_reads_every_run_in_commit_order(db: Database) -> None:
    q = RunQueries(db)
    assert await q.last_event_id() == 0
    ids = await add_runs(db, 3)
    feed = await q.events_after(0)
    assert [e.run_id for e in feed] == ids and await q.last_event_id() == feed[-1].id
    assert await q.events_after(feed[0].id, limit=1) == [feed[1]]


@pytest.mark.parametrize("token", ["", "nonsense", "1.5~", "x~abc"])
def test_a_malformed_cursor_is_ignored(token: str) -> None:
    assert RunCursor.parse(token) is None


def test_a_cursor_survives_its_token() -> None:
    cursor = RunCursor(created_at=1765000000.123456, id="abc")
    assert RunCursor.parse(cursor.token) == cursor
