"""Resumes made in the same turn of the event loop, committed as one compare-and-set for all of them (SQLite).

Why: a burst of resumes (a channel approving a batch; 1,800 at once in the benchmark) reaches the commit
queue as one write per resume, each running its own two or three statements (the compare-and-set on the
suspension, the claim or the ready mark of the run, its event) through the statement layer. Here the
resumes of one loop turn become one write, each statement one ``executemany`` for all of them.

Usually every resume of a group holds: the updates run first, with no read before them, and their row counts
say so (each update carries its own compare-and-set ``WHERE``). If one did not hold, they are undone to a
savepoint taken just before them, and the group is decided on a read: the states of its suspensions and runs
are read with a few ``IN`` queries inside the write transaction, and every compare-and-set that holds is
executed. (Reading first every time cost about a quarter of a group's write: 1,800 resumes, ~44 -> ~34 ms.)

On SQLite the write transaction has the database to itself (``BEGIN IMMEDIATE``: one writer), so what the
read says is what the updates find; every update still carries its own compare-and-set ``WHERE``, and the
write fails as a whole (nothing committed, each resume then tried on its own) if one did not match. Each
resume gets its own outcome: one that lost the compare-and-set raises CompareAndSetFailed with the row as
it is, the others are not affected. A lone resume, a second resume of a run already in the group, and any
resume on PostgreSQL (concurrent writers: the read would need locks) take the one-resume path as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, and_, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .coalesce import MAX_KEYS
from .outbox import INSERT_EVENTS
from .pgconn import PgConnection
from .prepared import prepared
from .records import TERMINAL_STATUSES, NewEvent, SuspensionRecord
from .tables import runs, suspensions

#: An open suspension becomes resolved, its run not tested: for a group's write-first path only (see _resolve_all),
#: where every run's own update, which follows, tests that it is suspended or waiting, so live (the subquery below
#: was about a quarter of a burst's group write).
RESOLVE_OPEN = prepared(
    update(suspensions)
    .where(suspensions.c.run_id == bindparam("b_run_id"), suspensions.c.path == bindparam("b_path"),
           suspensions.c.status == "open")
    .values(status="resolved", resolved_by=bindparam("b_by"), resolved_at=bindparam("b_now"),
            resume_data=bindparam("b_data", type_=JSON))
)
#: Resume's compare-and-set: an open suspension of a live run becomes resolved.
RESOLVE_SUSPENSION = prepared(RESOLVE_OPEN.where(
    # The run must still be live: a canceled run's suspensions are closed for good.
    exists().where(and_(runs.c.id == bindparam("b_run_id"), runs.c.status.not_in(tuple(TERMINAL_STATUSES)))),
))
#: A suspended or waiting run becomes ready for any dispatcher.
MAKE_READY = prepared(
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.status.in_(("suspended", "waiting")))
    .values(status="pending", ready_at=bindparam("b_now"), updated_at=bindparam("b_now"), waiting_for=None)
)
#: A suspended or waiting run is claimed by the process that just resumed it.
CLAIM_WAITING = prepared(
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.status.in_(("suspended", "waiting")))
    .values(status="running", owner=bindparam("b_owner"), lease_expires_at=bindparam("b_expires"),
            updated_at=bindparam("b_now"), ready_at=bindparam("b_now"), waiting_for=None)
)
_OWNER = prepared(select(runs.c.owner).where(runs.c.id == bindparam("b_id")))
#: PostgreSQL: the run's row locked for the rest of the transaction, and its status (see locked_status).
_LOCK_RUN_PG = "SELECT status FROM runs WHERE id = $1 FOR UPDATE"

#: The same, only if the run did not change since the resumer read it (every claim and every settle sets
#: ``updated_at``): then the progress it read with the run is still all the run has done.
CLAIM_UNCHANGED = prepared(
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.status.in_(("suspended", "waiting")),
           runs.c.updated_at == bindparam("b_seen"))
    .values(status="running", owner=bindparam("b_owner"), lease_expires_at=bindparam("b_expires"),
            updated_at=bindparam("b_now"), ready_at=bindparam("b_now"), waiting_for=None)
)
_RUN_STATES_IN = prepared(
    select(runs.c.id, runs.c.status, runs.c.owner, runs.c.updated_at).where(runs.c.id.in_(bindparam("ids", expanding=True)))
)
#: By the runs' key only, the status tested in Python (see runs.py's _SUSPENSION_STATES: with ``status`` in
#: the query, SQLite would read ``ix_suspensions_open``, every open suspension of every run).
_SUSPENSION_STATES_IN = prepared(
    select(suspensions.c.run_id, suspensions.c.path, suspensions.c.status, suspensions.c.resolved_by,
           suspensions.c.resolved_at).where(suspensions.c.run_id.in_(bindparam("ids", expanding=True)))
)
_SUSPENSION = prepared(
    select(suspensions).where(suspensions.c.run_id == bindparam("b_run_id"), suspensions.c.path == bindparam("b_path"))
)
#: Taken before a group's updates, which are undone to it if one of them did not hold (see _resolve_all).
_SAVEPOINT = "threadflow_resolve_group"


class CompareAndSetFailed(Exception):
    """A compare-and-set matched no row; ``current`` is the row as it is now (or None)."""

    def __init__(self, current: Any) -> None:
        super().__init__("compare-and-set failed")
        self.current = current


class GroupMismatch(Exception):
    """An update of a resume group matched fewer rows than its read promised (rolled back; resumed one by one)."""


@dataclass(slots=True)
class Resolve:
    """One resume: resolve the open suspension at ``path`` with ``data``; claim the run for ``claim_for``."""

    run_id: str
    path: str
    data: Any
    by: str | None
    events: Sequence[NewEvent]
    claim_for: str | None
    lease: float
    now: float
    #: The run's ``updated_at`` as the resumer read it: claimed only if unchanged since (see RunStore.resolve_suspension).
    seen_at: float | None = None

    def resolve_values(self) -> dict[str, Any]:
        """RESOLVE_SUSPENSION's (and RESOLVE_OPEN's) parameters."""
        return {"b_run_id": self.run_id, "b_path": self.path, "b_now": self.now, "b_by": self.by, "b_data": self.data}

    def claim_values(self, *, unchanged: bool = False) -> dict[str, Any]:
        """CLAIM_WAITING's parameters (``claim_for`` is set), or CLAIM_UNCHANGED's with ``unchanged``."""
        values = {"b_id": self.run_id, "b_owner": self.claim_for, "b_now": self.now, "b_expires": self.now + self.lease}
        return {**values, "b_seen": self.seen_at} if unchanged else values

    def ready_values(self) -> dict[str, Any]:
        """MAKE_READY's parameters."""
        return {"b_id": self.run_id, "b_now": self.now}

    def event_rows(self) -> list[dict[str, Any]]:
        """INSERT_EVENTS's rows for the resume's events."""
        return [{"run_id": self.run_id, "type": e.type, "path": e.path, "data": e.data, "at": e.at or self.now}
                for e in self.events]


#: A resume's outcome in a group: whether its run was claimed, or why its compare-and-set failed.
Outcome = bool | CompareAndSetFailed
#: The one-resume write of a Resolve (its own transaction): whether the run was claimed.
ResolveOne = Callable[[Resolve], Awaitable[bool]]
#: The write of a group of Resolves (one transaction): each one's outcome.
ResolveMany = Callable[[list[Resolve]], Awaitable[list[Outcome]]]


@dataclass(slots=True)
class _Group:
    loop: asyncio.AbstractEventLoop
    items: list[Resolve] = field(default_factory=list)
    futures: list[asyncio.Future[bool]] = field(default_factory=list)
    runs: set[str] = field(default_factory=set)


class ResolveGroups:
    """``await groups.resolve(item)``: the resumes of one loop turn share one write (see the module docstring)."""

    def __init__(self, one: ResolveOne, many: ResolveMany) -> None:
        self._one = one
        self._many = many
        self._group: _Group | None = None
        #: Group writes in flight: kept so they are not garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()

    async def resolve(self, item: Resolve) -> bool:
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None or group.loop is not loop:
            # call_soon runs after every callback already due in this turn: the resumes made alongside this
            # one (a gather, or the callers one shared read released) are all in the group when it is written.
            group = self._group = _Group(loop)
            loop.call_soon(self._dispatch, group, context=contextvars.Context())
        elif item.run_id in group.runs:
            # A second suspension of a run in the group: its own write (the group's read would not see the first).
            return await self._one(item)
        fut: asyncio.Future[bool] = loop.create_future()
        group.items.append(item)
        group.futures.append(fut)
        group.runs.add(item.run_id)
        return await fut

    def _dispatch(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        task = group.loop.create_task(self._commit(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, group: _Group) -> None:
        items, futures = group.items, group.futures
        try:
            if len(items) == 1:
                outcomes: list[Outcome] | None = [await self._one(items[0])]
            else:
                try:
                    outcomes = await self._many(items)
                except Exception:
                    outcomes = None  # one resume's failure must not fail the others: each on its own
            if outcomes is None:
                await asyncio.gather(*(self._settle_one(item, fut) for item, fut in zip(items, futures, strict=True)))
                return
            for fut, outcome in zip(futures, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, CompareAndSetFailed):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
        except BaseException as exc:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(
                        "The shared resume write was interrupted before it finished; try again."))
            if not isinstance(exc, Exception):
                raise

    async def _settle_one(self, item: Resolve, fut: asyncio.Future[bool]) -> None:
        try:
            result = await self._one(item)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)


async def locked_status(conn: AsyncConnection, run_id: str) -> str | None:
    """PostgreSQL: lock the run's row until the transaction ends and return its status (None: no such run).

    Every write that changes what a run waits for (a resume, an event, a run settling suspended or waiting, a
    cancel) takes this lock first, so they happen one after the other: under READ COMMITTED a statement's
    subquery or an earlier read does not see a concurrent transaction's change, and a resume could be told it
    resumed a run canceled at the same moment, or land between a settle's check for input and its update (the
    run then waiting for good on an approval already given). On SQLite the write transaction holds the database
    (``BEGIN IMMEDIATE``): nothing to lock, ``"-"`` is returned without a statement.
    """
    if isinstance(conn, PgConnection):
        status: str | None = await conn.fetchval(_LOCK_RUN_PG, run_id)
        return status
    if conn.dialect.name == "postgresql":
        return (await conn.execute(select(runs.c.status).where(runs.c.id == run_id).with_for_update())).scalar_one_or_none()
    return "-"


async def resolve_one(conn: AsyncConnection, item: Resolve) -> bool:
    """One resume: the compare-and-set (CompareAndSetFailed with the current row if not open), then the claim of
    its run for ``claim_for`` if it was suspended or waiting (True), else the run made ready; its events."""
    now = item.now
    status = await locked_status(conn, item.run_id)
    live = status is not None and status not in TERMINAL_STATUSES
    res = await conn.execute(RESOLVE_SUSPENSION, item.resolve_values()) if live else None
    if res is None or res.rowcount == 0:
        row = (await conn.execute(_SUSPENSION, {"b_run_id": item.run_id, "b_path": item.path})).mappings().first()
        if row is not None and row["resolved_at"] == now and row["resolved_by"] == item.by:
            # This very resume, committed by an attempt whose outcome was not known (a dropped connection).
            owner = (await conn.execute(_OWNER, {"b_id": item.run_id})).first()
            return item.claim_for is not None and owner is not None and owner[0] == item.claim_for
        raise CompareAndSetFailed(SuspensionRecord.model_validate(dict(row)) if row else None)
    claimed = False
    if item.claim_for is not None:
        unchanged = item.seen_at is not None
        claimed = (await conn.execute(CLAIM_UNCHANGED if unchanged else CLAIM_WAITING,
                                      item.claim_values(unchanged=unchanged))).rowcount == 1
    if not claimed:
        await conn.execute(MAKE_READY, item.ready_values())
    rows = item.event_rows()
    if rows:
        await conn.execute(INSERT_EVENTS, rows)
    return claimed


async def resolve_many(conn: AsyncConnection, items: Sequence[Resolve]) -> list[Outcome]:
    """The compare-and-sets of ``items`` (one per run), each one's outcome: claimed or not, or why it failed."""
    outcomes = await _resolve_all(conn, items)
    return outcomes if outcomes is not None else await _resolve_each_as_read(conn, items)


async def _resolve_all(conn: AsyncConnection, items: Sequence[Resolve]) -> list[Outcome] | None:
    """Every resume of the group as it usually is: each suspension open, each run suspended or waiting (so live, and
    claimable if it is to be claimed). Their outcomes, or None, having changed nothing, if one of them is not so.

    The updates are executed first, with no read before them: each carries its own compare-and-set, so their row
    counts say whether every one held. If one did not, the updates are undone to a savepoint taken before them (the
    rest of the batch's transaction is kept) and the group goes the way that reads first. As every run's update must
    hold here, the suspensions' compare-and-set need not test their runs as well (RESOLVE_OPEN): a run that is not
    suspended or waiting (finished, canceled, missing, or pending or running) fails its own update, and the group is
    decided on the read, where a live one's resume only resolves its suspension.
    """
    resolve = [item.resolve_values() for item in items]
    claims: list[dict[str, Any]] = []
    claims_unchanged: list[dict[str, Any]] = []
    ready: list[dict[str, Any]] = []
    for item in items:
        if item.claim_for is None:
            ready.append(item.ready_values())
        elif item.seen_at is None:
            claims.append(item.claim_values())
        else:
            claims_unchanged.append(item.claim_values(unchanged=True))
    await conn.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")  # (rows other writers of the batch hold back go in first)
    if ((await conn.execute(RESOLVE_OPEN, resolve)).rowcount != len(resolve)
            or claims and (await conn.execute(CLAIM_WAITING, claims)).rowcount != len(claims)
            or claims_unchanged and (await conn.execute(CLAIM_UNCHANGED, claims_unchanged)).rowcount != len(claims_unchanged)
            or ready and (await conn.execute(MAKE_READY, ready)).rowcount != len(ready)):
        await conn.exec_driver_sql(f"ROLLBACK TO {_SAVEPOINT}")
        await conn.exec_driver_sql(f"RELEASE {_SAVEPOINT}")
        return None
    await conn.exec_driver_sql(f"RELEASE {_SAVEPOINT}")
    new_events = [row for item in items for row in item.event_rows()]
    if new_events:
        await conn.execute(INSERT_EVENTS, new_events)
    return [item.claim_for is not None for item in items]


async def _resolve_each_as_read(conn: AsyncConnection, items: Sequence[Resolve]) -> list[Outcome]:
    """The group when some resume's compare-and-set, claim or ready mark does not hold (a run pending or running
    already, say): the states of its suspensions and runs are read first, and each resume is decided on what they say."""
    ids = [item.run_id for item in items]
    run_states: dict[str, tuple[str, str | None, float]] = {}
    waits: dict[tuple[str, str], tuple[str, str | None, float | None]] = {}
    for start in range(0, len(ids), MAX_KEYS):
        chunk = {"ids": ids[start:start + MAX_KEYS]}
        for r in (await conn.execute(_RUN_STATES_IN, chunk)).mappings():
            run_states[r["id"]] = (r["status"], r["owner"], r["updated_at"])
        for r in (await conn.execute(_SUSPENSION_STATES_IN, chunk)).mappings():
            waits[(r["run_id"], r["path"])] = (r["status"], r["resolved_by"], r["resolved_at"])
    outcomes: list[Outcome] = []
    resolve: list[dict[str, Any]] = []
    claim: list[dict[str, Any]] = []
    ready: list[dict[str, Any]] = []
    new_events: list[dict[str, Any]] = []
    for item in items:
        run = run_states.get(item.run_id)
        wait = waits.get((item.run_id, item.path))
        if wait is None or wait[0] != "open" or run is None or run[0] in TERMINAL_STATUSES:
            if wait is not None and wait[2] == item.now and wait[1] == item.by:
                # This very resume, committed by an attempt whose outcome was not known (a dropped connection).
                outcomes.append(item.claim_for is not None and run is not None and run[1] == item.claim_for)
                continue
            row = (await conn.execute(_SUSPENSION, {"b_run_id": item.run_id, "b_path": item.path})).mappings().first()
            outcomes.append(CompareAndSetFailed(SuspensionRecord.model_validate(dict(row)) if row else None))
            continue
        resolve.append(item.resolve_values())
        if item.claim_for is not None and run[0] in ("suspended", "waiting") and item.seen_at in (None, run[2]):
            claim.append(item.claim_values())  # (seen_at checked just above, against the run as read)
            outcomes.append(True)
        else:
            ready.append(item.ready_values())  # (a run executing elsewhere, or pending already: nothing to do)
            outcomes.append(False)
        new_events.extend(item.event_rows())
    if resolve and (await conn.execute(RESOLVE_SUSPENSION, resolve)).rowcount != len(resolve):
        raise GroupMismatch("a resume's compare-and-set did not match what the group's read found")
    if claim and (await conn.execute(CLAIM_WAITING, claim)).rowcount != len(claim):
        raise GroupMismatch("a resumed run's claim did not match what the group's read found")
    if ready:
        await conn.execute(MAKE_READY, ready)
    if new_events:
        await conn.execute(INSERT_EVENTS, new_events)
    return outcomes
