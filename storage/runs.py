"""The run repository: the narrow async interface the engine persists through.

Public methods queue one write (or run one read); private ``_x(conn)`` functions do the SQL so several
operations compose inside one group-committed transaction. Exactly-once records come from keys, not from
read-then-write checks: step results are insert-if-absent on ``(run_id, path)``, resume is a
compare-and-set on the suspension's ``status``, claims are compare-and-set on the run's ``owner``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    JSON,
    Float,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from . import pg_writes
from .backends import SyncConnection
from .coalesce import Coalescer
from .database import Database, insert_ignore, knowing_retries
from .outbox import INSERT_EVENTS
from .pgconn import PgConnection, autocommit_safe
from .prepared import Plan, PlannedWrite, plan_for, prepared
from .ready import is_ready, oldest_ready
from .records import (
    TERMINAL_STATUSES,
    ClaimCandidate,
    EventRecord,
    NewEvent,
    RunProgress,
    RunRecord,
    StepResultRecord,
    SuspensionRecord,
    run_record,
    signal_record,
    step_result_record,
    suspension_record,
)
from .resolves import MAKE_READY, Outcome, Resolve, ResolveGroups, locked_status, resolve_many, resolve_one
from .resolves import CompareAndSetFailed as CompareAndSetFailed  # (callers import it from here)
from .tables import events, runs, signals, step_results, suspensions
from .versions import Serving


class LeaseLost(Exception):
    """This process no longer holds the run (canceled, or another process took it over); stop executing."""


def _same(value: Any) -> Any:
    return value


#: The slots of the fenced insert of a step's result, in the order SQLAlchemy compiles them, as HotPlans.result_values
#: binds them (written out: a column added to the table changes the compiled slots, and resolve then binds by name).
_RESULT_SLOTS = ("run_id", "path", "step_id", "kind", "output", "attempts", "started_at", "finished_at", "run_id",
                 "b_owner", "status_1")


@dataclass(frozen=True)
class HotPlans:
    """A step's two SQLite statements, resolved once per store: most of a step's commit was looking plans up and
    binding dicts (see ``SyncConnection.run_plan``)."""

    #: the fenced insert of a step's result (bound from the record's fields and ``b_owner``)
    result: Plan
    #: the events INSERT, bound positionally: (run_id, type, path, data, at)
    events: Plan
    #: the bind processors of the JSON columns (the result's output, the events' data) and of the times (Float's)
    dump: Callable[[Any], Any]
    times: Callable[[Any], Any]
    #: the result's slots are the expected ones (``_RESULT_SLOTS``, each with one of the two processors or none):
    #: its values are bound from the record's fields without a dict
    direct: bool
    #: the dialect the plans were compiled for (a new run's INSERT is planned by its row's columns, see run_write)
    dialect: Any

    @classmethod
    def resolve(cls, conn: SyncConnection, insert_result: Any) -> HotPlans | None:
        dialect = conn.dialect
        names = (*(c.name for c in step_results.columns), "b_owner")  # what _record_step binds
        result = plan_for(insert_result, dict.fromkeys(names), dialect)
        events_plan = plan_for(INSERT_EVENTS, [dict.fromkeys(_EVENT_COLUMNS)], dialect)
        if result is None or events_plan is None or tuple(n for n, _, _ in events_plan.slots) != _EVENT_COLUMNS:
            return None
        processors = {name: process for name, _, process in events_plan.slots}
        if any(processors[name] is not None for name in ("run_id", "type", "path")):
            return None  # add_events binds these three as they are
        dump, times = processors["data"] or _same, processors["at"] or _same
        expected = {"output": dump, "started_at": times, "finished_at": times}
        direct = (tuple(n for n, _, _ in result.slots) == _RESULT_SLOTS and result.slots[-1][1] == "running"
                  and all((process or _same) is expected.get(name, _same) for name, _, process in result.slots))
        return cls(result, events_plan, dump, times, direct, dialect)

    def result_values(self, record: StepResultRecord, owner: str) -> tuple[Any, ...]:
        """The fenced insert's values for a step's result, as the plan binds them from the record's fields."""
        d = record.__dict__
        if self.direct:
            run_id, times = d["run_id"], self.times
            return (run_id, d["path"], d["step_id"], d["kind"], self.dump(d["output"]), d["attempts"],
                    times(d["started_at"]), times(d["finished_at"]), run_id, owner, "running")
        return self.result.values({**d, "b_owner": owner})

    def event_rows(self, run_id: str, new: Iterable[NewEvent], now: float) -> list[tuple[Any, ...]]:
        """Events as positional rows for the resolved plan, no dict and no look-up per row."""
        dump, times = self.dump, self.times
        return [(run_id, e.type, e.path, dump(e.data), times(e.at or now)) for e in new]

    def add_events(self, conn: SyncConnection, run_id: str, new: Iterable[NewEvent], now: float) -> None:
        """The events' rows added to the batch (``conn``: the batch's SyncConnection)."""
        conn.add_rows(self.events, self.event_rows(run_id, new, now))

    def _step_statement(self, record: StepResultRecord, owner: str) -> tuple[Plan, tuple[Any, ...]]:
        return self.result, self.result_values(record, owner)

    def step_write(self, record: StepResultRecord, owner: str, new: Sequence[NewEvent]) -> PlannedWrite:
        """A step's result with its events as plans and values: what ``_record_step`` writes when the result goes in."""
        return PlannedWrite((self._step_statement(record, owner),),
                            ((self.events, self.event_rows(record.run_id, new, record.finished_at)),))

    def run_write(self, insert_run: Any, row: dict[str, Any], new: Sequence[NewEvent]) -> PlannedWrite | None:
        """A new run's row with its events, as ``create_run`` writes them when the row goes in (None: not planned)."""
        plan = plan_for(insert_run, row, self.dialect)
        if plan is None:
            return None
        return PlannedWrite(((plan, plan.values(row)),), ((self.events, self.event_rows(row["id"], new, row["created_at"])),))

    def settle_write(self, run_id: str, owner: str, values: dict[str, Any], new: Sequence[NewEvent], now: float,
                     step: FinishedStep | None) -> PlannedWrite | None:
        """A run's end (``values``: the columns ``settle`` sets), after its last step if ``step``, with their events;
        as ``settle`` writes them (None: not planned)."""
        bound = {**values, "b_id": run_id, "b_owner": owner}
        plan = plan_for(_SETTLE, bound, self.dialect)
        if plan is None:
            return None
        fenced: tuple[tuple[Plan, tuple[Any, ...]], ...] = ((plan, plan.values(bound)),)
        rows = self.event_rows(run_id, new, now)
        if step is not None:
            fenced = (self._step_statement(step.result, owner), *fenced)
            rows = self.event_rows(step.result.run_id, step.events, step.result.finished_at) + rows
        return PlannedWrite(fenced, ((self.events, rows),))


class FinishedStep(NamedTuple):
    """A step's result to commit with its run's settle (the run's last step: one commit instead of two)."""

    result: StepResultRecord
    events: Sequence[NewEvent]
    lease: float
    progressed: bool = False


class RunExists(Exception):
    """A run with this id exists already (a caller chose a run id that is taken)."""


_TERMINAL = tuple(TERMINAL_STATUSES)
_NO_PROGRESS = RunProgress(results={}, suspensions={}, signals=[])

#: An event row, inserted only if its run is not terminal (bound per row: run_id, type, path, data, at).
_INSERT_EVENT_IF_LIVE = prepared(insert(events).from_select(
    ["run_id", "type", "path", "data", "at"],
    select(
        bindparam("run_id", type_=String),
        bindparam("type", type_=String),
        bindparam("path", type_=String),
        bindparam("data", type_=JSON),
        bindparam("at", type_=Float),
    ).where(
        # FOR SHARE (PostgreSQL; SQLite has one writer anyway): a cancel committing meanwhile is waited for
        # and seen, so no event lands after the run's final one.
        select(runs.c.id)
        .where(runs.c.id == bindparam("run_id", type_=String), runs.c.status.not_in(_TERMINAL))
        .with_for_update(read=True)
        .exists()
    ),
))


#: Hot-path statements are built once: building a Core statement costs more than executing it on SQLite.
#: The columns of an event row, in the order ``_add_events`` binds them on SQLite (checked against the plan).
_EVENT_COLUMNS = ("run_id", "type", "path", "data", "at")
_CREATED_AT = prepared(select(runs.c.created_at).where(runs.c.id == bindparam("b_id")))
#: A recovered run made progress: its count of deaths starts over.
_RESET_RECOVERIES = prepared(
    update(runs).where(runs.c.id == bindparam("b_id"), runs.c.owner == bindparam("b_owner")).values(recoveries=0)
)
_TOUCH_LEASE = prepared(
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.owner == bindparam("b_owner"), runs.c.status == "running")
    .values(updated_at=bindparam("b_now"), lease_expires_at=bindparam("b_expires"))
)
#: Move a held run out of ``running``; the columns to set are the parameters besides ``b_id``/``b_owner``.
_SETTLE = prepared(
    update(runs).where(runs.c.id == bindparam("b_id"), runs.c.owner == bindparam("b_owner"), runs.c.status == "running")
)
#: The reads of one run's records (by key; ordered as they were written).
_GET_RUN = prepared(select(runs).where(runs.c.id == bindparam("b_id")))
_RESULTS_OF = prepared(select(step_results).where(step_results.c.run_id == bindparam("b_run_id")))
_SUSPENSIONS_OF = prepared(
    select(suspensions).where(suspensions.c.run_id == bindparam("b_run_id")).order_by(suspensions.c.created_at)
)
_SIGNALS_OF = prepared(select(signals).where(signals.c.run_id == bindparam("b_run_id")).order_by(signals.c.id))
#: The same reads for many runs at once (coalesced callers; ``ids`` is a list).
_RUNS_IN = prepared(select(runs).where(runs.c.id.in_(bindparam("ids", expanding=True))))
_RESULTS_IN = prepared(select(step_results).where(step_results.c.run_id.in_(bindparam("ids", expanding=True))))
_SUSPENSIONS_IN = prepared(
    select(suspensions).where(suspensions.c.run_id.in_(bindparam("ids", expanding=True))).order_by(suspensions.c.created_at)
)
_SIGNALS_IN = prepared(
    select(signals).where(signals.c.run_id.in_(bindparam("ids", expanding=True))).order_by(signals.c.id)
)
#: A run still "running" under an expired lease when claimed: its holder died (or lost the database for longer
#: than a lease). Counted, so a run that kills its process is not retried forever.
_RECOVERIES_AFTER_CLAIM = case((runs.c.status == "running", runs.c.recoveries + 1), else_=runs.c.recoveries)
#: A claim's compare-and-set on SQLite (the candidates, if still ready at ``b_now``); see RunStore._claim.
_CLAIM_READY = prepared(
    update(runs)
    .where(runs.c.id.in_(bindparam("ids", expanding=True)), is_ready(bindparam("b_now", type_=Float), by_key=True))
    .values(status="running", owner=bindparam("b_owner"), lease_expires_at=bindparam("b_expires"),
            updated_at=bindparam("b_now"), waiting_for=None, recoveries=_RECOVERIES_AFTER_CLAIM)
)
#: A settle checks for input that arrived while the run executed (``_has_unconsumed_input``): a resolved
#: suspension whose step has no result yet, or a buffered event one of its open waits is for. The run's
#: suspensions are read by its key alone and their status tested here: with ``status = ...`` in the query,
#: SQLite (no statistics kept) reads ``ix_suspensions_open`` instead of the primary key, i.e. every open
#: suspension of every run: 100,000 waiting approvals made each settle cost ~8 ms (~140 runs/s).
_SUSPENSION_STATES = prepared(
    select(
        suspensions.c.path, suspensions.c.status, suspensions.c.kind, suspensions.c.event_name,
        exists().where(and_(step_results.c.run_id == bindparam("b_run_id"), step_results.c.path == suspensions.c.path))
        .label("has_result"),
    ).where(suspensions.c.run_id == bindparam("b_run_id"))
)
_PENDING_SIGNAL = prepared(
    select(signals.c.id)
    .where(
        signals.c.run_id == bindparam("b_run_id"),
        signals.c.name.in_(bindparam("names", expanding=True)),
        signals.c.consumed_path.is_(None),
    )
    .limit(1)
)


def timer_due(now: float) -> ColumnElement[bool]:
    """A waiting run whose wake-up time has come, or a suspended run whose other branch's timer has.

    A suspended run has a ``ready_at`` only when a branch beside its open approval sleeps: ``settle`` sets it to
    that timer, later than the moment it settled (``updated_at``); a due timer settles the run ``waiting``.
    """
    return or_(
        and_(runs.c.status == "waiting", runs.c.ready_at.is_not(None), runs.c.ready_at <= now),
        and_(runs.c.status == "suspended", runs.c.ready_at.is_not(None), runs.c.ready_at <= now,
             runs.c.ready_at > runs.c.updated_at),
    )


@cache  # (prepared statements live as long as the process: one per dialect)
def insert_run(dialect: str) -> Any:
    """``INSERT INTO runs ... ON CONFLICT DO NOTHING``: a start retried after a commit of unknown outcome is harmless."""
    return prepared(insert_ignore(dialect, runs))


@cache
def insert_suspension(dialect: str) -> Any:
    """``INSERT INTO suspensions ... ON CONFLICT DO NOTHING`` (a suspension is opened once per path)."""
    return prepared(insert_ignore(dialect, suspensions))


@cache
def insert_result_if_held(dialect: str) -> Any:
    """``INSERT INTO step_results SELECT :values WHERE <run held by :b_owner> ON CONFLICT DO NOTHING``."""
    cols = [c.name for c in step_results.columns]
    # FOR SHARE (PostgreSQL; SQLite has one writer anyway): a claim by another process, under way, is waited
    # for and then seen; a plain read would see this process still holding the run and record a result that
    # the new holder, which read the run's progress in its claim, never sees.
    values = select(*(bindparam(c, type_=step_results.c[c].type) for c in cols)).where(
        select(runs.c.id).where(
            runs.c.id == bindparam("run_id", type_=String), runs.c.owner == bindparam("b_owner", type_=String),
            runs.c.status == "running",
        ).with_for_update(read=True).exists()
    )
    return prepared(insert_ignore(dialect, step_results).from_select(cols, values))


async def read_runs(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, RunRecord]:
    """The runs of ``ids`` that exist (by key; one id reads with the single-key statement)."""
    if len(ids) == 1:
        rows = (await conn.execute(_GET_RUN, {"b_id": ids[0]})).mappings()
    else:
        rows = (await conn.execute(_RUNS_IN, {"ids": list(ids)})).mappings()
    return {r["id"]: run_record(r) for r in rows}


async def read_suspensions(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, list[SuspensionRecord]]:
    """Each run's suspensions, open and resolved, in the order they were opened."""
    found: dict[str, list[SuspensionRecord]] = {i: [] for i in ids}
    if not ids:
        return found
    if len(ids) == 1:
        rows = (await conn.execute(_SUSPENSIONS_OF, {"b_run_id": ids[0]})).mappings()
    else:
        rows = (await conn.execute(_SUSPENSIONS_IN, {"ids": list(ids)})).mappings()
    for r in rows:
        found[r["run_id"]].append(suspension_record(r))
    return found


async def read_progress(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, RunProgress]:
    """Everything the walk needs to continue each run: its results, suspensions and buffered events."""
    progress = {i: RunProgress(results={}, suspensions={}, signals=[]) for i in ids}
    if not ids:
        return progress
    one = len(ids) == 1
    by_key, by_ids = {"b_run_id": ids[0]}, {"ids": list(ids)}
    for r in (await conn.execute(_RESULTS_OF, by_key) if one else await conn.execute(_RESULTS_IN, by_ids)).mappings():
        progress[r["run_id"]].results[r["path"]] = step_result_record(r)
    for r in (
        await conn.execute(_SUSPENSIONS_OF, by_key) if one else await conn.execute(_SUSPENSIONS_IN, by_ids)
    ).mappings():
        progress[r["run_id"]].suspensions[r["path"]] = suspension_record(r)
    for r in (await conn.execute(_SIGNALS_OF, by_key) if one else await conn.execute(_SIGNALS_IN, by_ids)).mappings():
        progress[r["run_id"]].signals.append(signal_record(r))
    return progress


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert_run = insert_run(self.db.dialect)
        self._insert_result_if_held = insert_result_if_held(self.db.dialect)
        self._insert_suspension = insert_suspension(self.db.dialect)
        # One run's records, read by key: callers in the same loop turn share one query (see coalesce.py).
        # One run's rows are read on the event loop's thread (inline); a shared query for many runs may
        # return thousands of rows, so it runs in a reader thread and the loop stays responsive.
        self._runs: Coalescer[str, RunRecord | None] = Coalescer(self._get_runs, missing=None)
        self._suspensions: Coalescer[str, list[SuspensionRecord]] = Coalescer(self._get_suspensions, missing=[])
        self._run_waits: Coalescer[str, tuple[RunRecord | None, list[SuspensionRecord]]] = Coalescer(
            self._get_run_waits, missing=(None, []))
        self._run_progress: Coalescer[str, tuple[RunRecord | None, RunProgress]] = Coalescer(
            self._get_run_progress, missing=(None, _NO_PROGRESS))
        self._progress: Coalescer[str, RunProgress] = Coalescer(self._get_progress, missing=_NO_PROGRESS)
        self._resolves = ResolveGroups(self._resolve_one, self._resolve_many)
        #: The workflow versions this process executes: claims and timers only consider their runs
        #: (None: every run, for a store that is not an engine's).
        self.serving: Serving | None = None
        #: ``settle(step=...)`` commits the step in the settle's own transaction (SQLite). On PostgreSQL each is one
        #: statement, sent alone without BEGIN/COMMIT: the executor commits the step first, as any step.
        self.settles_with_step = db.dialect == "sqlite"
        #: See _hot (False: this database's statements cannot be planned; SQLAlchemy runs them).
        self._hot_plans: HotPlans | Literal[False] | None = None

    def _mine(self) -> ColumnElement[bool]:
        """Runs this process may execute (``serving``)."""
        return true() if self.serving is None else self.serving.clause()

    def _mine_key(self) -> tuple[str, Serving | None]:
        """What ``_mine()`` stands for: equal keys, equal clauses (``oldest_ready`` keeps its queries by it)."""
        return ("serving", self.serving)

    # -- helpers -------------------------------------------------------------------------------------

    async def _add_events(self, conn: AsyncConnection, run_id: str, new: Iterable[NewEvent], now: float) -> None:
        hot = self._hot(conn)
        if hot is not None:  # (then conn is the batch's SyncConnection, standing in for an AsyncConnection)
            sync: Any = conn
            hot.add_events(sync, run_id, new, now)
            return
        rows = [{"run_id": run_id, "type": e.type, "path": e.path, "data": e.data, "at": e.at or now} for e in new]
        if rows:
            await conn.execute(INSERT_EVENTS, rows)

    # -- runs ----------------------------------------------------------------------------------------

    async def create_run(self, row: dict[str, Any], new_events: Sequence[NewEvent], *, alone: bool = False) -> None:
        """Insert a new run with its events; RunExists if another run has its id.

        Insert-if-absent: if a commit failed with its outcome unknown (a dropped connection) and the write is
        retried, the row already there is this very run (same ``created_at``) and nothing is added twice.
        """

        hot = self._planned_now(alone)
        if hot:  # SQLite, one run at a time: committed straight on the cursor (else as a function, below)
            write = hot.run_write(self._insert_run, row, new_events)
            if write is not None and self.db.commit_planned_now(write):
                return

        async def op(conn: AsyncConnection) -> None:
            if isinstance(conn, PgConnection):
                inserted = await pg_writes.insert_run(conn, row, new_events)  # the run and its events, one statement
            else:
                inserted = (await conn.execute(self._insert_run, row)).rowcount != 0
                if inserted:
                    await self._add_events(conn, row["id"], new_events, row["created_at"])
            if not inserted:
                existing = (await conn.execute(_CREATED_AT, {"b_id": row["id"]})).first()
                if existing is None or existing[0] != row["created_at"]:
                    raise RunExists(row["id"])

        # Its later statement (RunExists or not) only reads.
        await self.db.write(autocommit_safe(op), inline=True, now=alone)

    async def create_rerun(
        self,
        row: dict[str, Any],
        copied: Sequence[StepResultRecord],
        override_path: str | None,
        override_input: Any,
        new_events: Sequence[NewEvent],
        *,
        supersede: tuple[str, NewEvent] | None = None,
    ) -> None:
        """Create a run that starts with another run's earlier results (and optionally new input for a step).

        ``supersede=(run_id, event)``: the new run replaces that unfinished run, which is canceled in the same
        transaction (CompareAndSetFailed, and nothing created, if it finished meanwhile).
        """

        async def op(conn: AsyncConnection, retried: bool) -> None:
            if retried and (await conn.execute(
                select(runs.c.id).where(runs.c.id == row["id"], runs.c.created_at == row["created_at"])
            )).first() is not None:
                return  # this very rerun, committed by an attempt whose outcome was not known (a dropped connection)
            if supersede is not None:
                old_id, event = supersede
                by = (event.data or {}).get("by")
                await self._cancel(conn, old_id, row["created_at"], {
                    "type": "Moved", "message": f"Moved to run {row['id']} by {by or 'a user'}.",
                }, [event])
            await conn.execute(insert(runs).values(**row))
            rows = [r.model_dump() | {"run_id": row["id"]} for r in copied]
            if override_path is not None:
                rows.append({
                    "run_id": row["id"], "path": f"__input__/{override_path}", "step_id": override_path,
                    "kind": "override", "output": override_input, "attempts": 0, "started_at": None,
                    "finished_at": row["created_at"],
                })
            if rows:
                await conn.execute(insert(step_results), rows)
            await self._add_events(conn, row["id"], new_events, row["created_at"])

        await self.db.write(knowing_retries(op))

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._runs.load(run_id)

    async def _get_runs(self, ids: Sequence[str]) -> dict[str, RunRecord]:
        return await self.db.read(lambda conn: read_runs(conn, ids), inline=len(ids) == 1)

    async def run_and_suspensions(self, run_id: str) -> tuple[RunRecord | None, list[SuspensionRecord]]:
        """The run and its suspensions (in the order they were opened), read together: what a resume decides on.

        One read (one snapshot, one thread hop) for both, shared by every resume in the same loop turn: a
        burst of 1,800 resumes reads them in a few ``IN`` queries instead of two rounds of them.
        """
        run, found = await self._run_waits.load(run_id)
        return run, list(found)

    async def _get_run_waits(self, ids: Sequence[str]) -> dict[str, tuple[RunRecord, list[SuspensionRecord]]]:
        async def op(conn: AsyncConnection) -> dict[str, tuple[RunRecord, list[SuspensionRecord]]]:
            found = await read_runs(conn, ids)
            waits = await read_suspensions(conn, list(found))
            return {run_id: (run, waits[run_id]) for run_id, run in found.items()}

        # On the loop's own connection even for a shared read of many runs (at most MAX_KEYS, a few ms): in a
        # burst, eight such reads spread over four reader threads spent their time handing the GIL to and fro
        # with the loop (resume() calls of a 1,800 burst returned after ~250 ms in a thread, ~160 ms inline).
        return await self.db.read(op, inline=True)

    async def run_and_progress(self, run_id: str) -> tuple[RunRecord | None, RunProgress]:
        """The run and everything it has done (its suspensions in the order they were opened), read together: for
        a resume that will execute the run here if it claims it, so the run starts without a second read."""
        return await self._run_progress.load(run_id)

    async def _get_run_progress(self, ids: Sequence[str]) -> dict[str, tuple[RunRecord, RunProgress]]:
        async def op(conn: AsyncConnection) -> dict[str, tuple[RunRecord, RunProgress]]:
            found = await read_runs(conn, ids)
            progress = await read_progress(conn, list(found))
            return {run_id: (run, progress[run_id]) for run_id, run in found.items()}

        return await self.db.read(op, inline=True)  # (inline as run_and_suspensions, for the same reason)

    async def list_runs(
        self, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        async def op(conn: AsyncConnection) -> list[RunRecord]:
            q = select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
            if status:
                q = q.where(runs.c.status == status)
            if workflow_id:
                q = q.where(runs.c.workflow_id == workflow_id)
            return [RunRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def count_runs(self, status: str) -> int:
        async def op(conn: AsyncConnection) -> int:
            return int((await conn.execute(select(func.count()).where(runs.c.status == status))).scalar_one())

        return await self.db.read(op)

    async def load_progress(self, run_id: str) -> RunProgress:
        """Everything the walk needs to continue the run: its results, suspensions and buffered events."""
        return await self._progress.load(run_id)

    async def _get_progress(self, ids: Sequence[str]) -> dict[str, RunProgress]:
        return await self.db.read(lambda conn: read_progress(conn, ids), inline=len(ids) == 1)

    async def _touch_lease(self, conn: AsyncConnection, run_id: str, owner: str, now: float, lease: float) -> None:
        res = await conn.execute(_TOUCH_LEASE, {"b_id": run_id, "b_owner": owner, "b_now": now, "b_expires": now + lease})
        if res.rowcount == 0:
            raise LeaseLost(run_id)

    async def _record_step(
        self, conn: AsyncConnection, result: StepResultRecord, owner: str, lease: float,
        new_events: Sequence[NewEvent], progressed: bool,
    ) -> None:
        """A step's result with its events, fenced: LeaseLost unless this process holds the run."""
        if isinstance(conn, PgConnection):
            # PostgreSQL: fence, result, events (and the reset) in one statement, one round trip.
            if not await pg_writes.record_step(conn, result, owner, new_events, progressed=progressed):
                await self._touch_lease(conn, result.run_id, owner, result.finished_at, lease)  # LeaseLost if not ours
            return
        # One statement both fences and records: the row goes in only while this process holds the run.
        # The lease itself is renewed by the heartbeat, not by every step.
        # The record's own fields (outputs are JSON data already: the step dumped them), without a model_dump.
        hot = self._hot(conn)
        if hot is not None:  # SQLite: the plans resolved once (most of a step's commit was looking them up)
            sync: Any = conn
            inserted = sync.run_plan(hot.result, hot.result_values(result, owner))
            if inserted:
                hot.add_events(sync, result.run_id, new_events, result.finished_at)
        else:
            inserted = (await conn.execute(self._insert_result_if_held, {**result.__dict__, "b_owner": owner})).rowcount
            if inserted:
                await self._add_events(conn, result.run_id, new_events, result.finished_at)
        if inserted == 0:
            await self._touch_lease(conn, result.run_id, owner, result.finished_at, lease)  # LeaseLost if not ours
            return  # already recorded (insert-if-absent): nothing more to say
        if progressed:
            await conn.execute(_RESET_RECOVERIES, {"b_id": result.run_id, "b_owner": owner})

    async def commit_step(
        self, result: StepResultRecord, owner: str, lease: float, new_events: Sequence[NewEvent],
        *, progressed: bool = False, alone: bool = False,
    ) -> None:
        """Record a finished step with its events, if this process still holds the run.

        Patient: retried through database outages until it commits, never turned into a failure (running it
        again after a commit of unknown outcome is harmless: insert-if-absent). ``progressed``: the run was
        recovered from a dead process and this is its first step since, so its count of deaths starts over.
        """

        hot = self._planned_now(alone)
        if hot and not progressed and self.db.commit_planned_now(hot.step_write(result, owner, new_events)):
            return  # SQLite, one run at a time: committed straight on the cursor (else as a function, below)

        async def op(conn: AsyncConnection) -> None:
            await self._record_step(conn, result, owner, lease, new_events, progressed)

        # Alone in a batch, no BEGIN/COMMIT around it: its one statement is atomic, and on the rare path
        # (not inserted) the lease check that follows only reads and touches the lease of a held run.
        await self.db.write(autocommit_safe(op), inline=True, patient=True, now=alone)

    def _planned_now(self, alone: bool) -> HotPlans | None:
        """The resolved plans, if a write made ``alone`` may be committed as a planned write now (see
        ``Database.commits_planned_now``): checked before the write is built, which encodes its JSON."""
        hot = self._hot_plans
        return hot if alone and hot and self.db.commits_planned_now() else None

    def _hot(self, conn: AsyncConnection) -> HotPlans | None:
        """On SQLite's batch connection, the plans of a step's statements (resolved on first use), else None."""
        sync: Any = conn  # (a SyncConnection stands in for an AsyncConnection: see backends.py)
        if type(sync) is not SyncConnection:
            return None
        if self._hot_plans is None:
            self._hot_plans = HotPlans.resolve(sync, self._insert_result_if_held) or False
        return self._hot_plans or None

    def add_events_nowait(self, run_id: str, new_events: Sequence[NewEvent]) -> None:
        """Queue events that describe no state change (step started, retrying): they ride the next commit.

        They are written only while the run is live (one ``INSERT ... SELECT ... WHERE EXISTS``, no extra
        round trip): a holder that has not yet noticed a cancel says nothing after the run's final event.
        """
        now = time.time()
        rows = [{"run_id": run_id, "type": e.type, "path": e.path, "data": e.data, "at": e.at or now} for e in new_events]

        async def op(conn: AsyncConnection) -> None:
            if rows:
                await conn.execute(_INSERT_EVENT_IF_LIVE, rows)

        self.db.write_nowait(op, inline=True, patient=True)

    async def add_events(self, run_id: str, new_events: Sequence[NewEvent]) -> None:
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await self._add_events(conn, run_id, new_events, now)

        await self.db.write(op, inline=True)

    async def open_suspension(
        self, suspension: SuspensionRecord, owner: str, lease: float, new_events: Sequence[NewEvent]
    ) -> None:
        async def op(conn: AsyncConnection) -> None:
            await self._touch_lease(conn, suspension.run_id, owner, suspension.created_at, lease)
            if (await conn.execute(self._insert_suspension, suspension.model_dump())).rowcount:
                await self._add_events(conn, suspension.run_id, new_events, suspension.created_at)

        await self.db.write(op, inline=True, patient=True)

    async def settle(
        self,
        run_id: str,
        owner: str,
        status: str,
        new_events: Sequence[NewEvent],
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        ready_at: float | None = None,
        waiting_for: str | None = None,
        seen: Sequence[str] = (),
        alone: bool = False,
        step: FinishedStep | None = None,
    ) -> dict[str, Any]:
        """Move a run this process holds out of ``running``; return the columns set (``status`` is the one set).

        A resume or an event may arrive while the run is still executing other branches. If one did, a run
        about to become ``suspended``/``waiting`` becomes ``pending`` instead, so it is picked up again.
        ``seen``: paths of decisions the execution had when it started; they did not arrive meanwhile (a
        decision its walk did not reach must not send the run round again, and again).
        ``step``: the run's last step, committed in the same transaction (``commit_step``'s fence and rows; on
        PostgreSQL, where each is one statement, it is committed just before instead).
        """
        now = time.time()
        if step is not None and not self.settles_with_step:
            await self.commit_step(step.result, owner, step.lease, step.events, progressed=step.progressed, alone=alone)
            step = None

        def columns(target: str) -> dict[str, Any]:
            values: dict[str, Any] = {
                "status": target,
                "owner": None,
                "lease_expires_at": None,
                "updated_at": now,
                "ready_at": now if target == "pending" else ready_at,
                "waiting_for": waiting_for if target in ("waiting", "suspended") else None,
            }
            if target in TERMINAL_STATUSES:
                values.update(output=output, error=error, finished_at=now)
            else:
                values["recoveries"] = 0  # it got somewhere: the next process death is counted afresh
            return values

        hot = self._planned_now(alone)
        if hot and status not in ("suspended", "waiting") and not (step is not None and step.progressed):
            # SQLite, one run at a time, nothing to check first: committed straight on the cursor (else as a function)
            values = columns(status)
            write = hot.settle_write(run_id, owner, values, new_events, now, step)
            if write is not None and self.db.commit_planned_now(write):
                return values

        async def op(conn: AsyncConnection) -> dict[str, Any]:
            target = status
            if status in ("suspended", "waiting"):
                # (PostgreSQL: a resume or an event committed from now on waits for this settle, and one committed
                # before is seen by the check below; see locked_status.)
                await locked_status(conn, run_id)
            if status in ("suspended", "waiting") and await self._has_unconsumed_input(conn, run_id, seen):
                target = "pending"
            elif status == "suspended" and ready_at is not None and ready_at <= now:
                target = "waiting"  # the timer beside its approval is due already: claimed at once, walked again
            values = columns(target)
            if step is not None:
                await self._record_step(conn, step.result, owner, step.lease, step.events, step.progressed)
            evs = list(new_events)
            if target == "pending" and status != "pending":
                evs = [e for e in evs if e.type not in ("run.suspended", "run.waiting")]
            if isinstance(conn, PgConnection):
                if not await pg_writes.settle(conn, run_id, owner, values, evs, now):  # the run and its events
                    raise LeaseLost(run_id)
                return values
            res = await conn.execute(_SETTLE, {**values, "b_id": run_id, "b_owner": owner})
            if res.rowcount == 0:
                raise LeaseLost(run_id)
            await self._add_events(conn, run_id, evs, now)
            return values

        # A run that suspends or waits is first checked for input that came meanwhile: those statements
        # share a transaction. Any other settle is its one statement.
        return await self.db.write(op if status in ("suspended", "waiting") or step is not None else autocommit_safe(op),
                                   inline=True, patient=True, now=alone)

    async def _has_unconsumed_input(self, conn: AsyncConnection, run_id: str, seen: Sequence[str] = ()) -> bool:
        by_run = {"b_run_id": run_id}
        waiting_names: list[str] = []
        for r in (await conn.execute(_SUSPENSION_STATES, by_run)).mappings():
            if r["status"] == "resolved" and not r["has_result"] and r["path"] not in seen:
                return True
            if r["status"] == "open" and r["kind"] == "event":
                waiting_names.append(r["event_name"])
        if not waiting_names:
            return False
        return (await conn.execute(_PENDING_SIGNAL, {**by_run, "names": waiting_names})).first() is not None

    # -- resume, events, cancel ---------------------------------------------------------------------

    async def resolve_suspension(
        self, run_id: str, path: str, data: Any, by: str | None, new_events: Sequence[NewEvent],
        *, claim_for: str | None = None, lease: float = 0.0, seen_at: float | None = None, now: float | None = None,
    ) -> bool:
        """The compare-and-set behind resume: raises CompareAndSetFailed(current row) if not open.

        With ``claim_for``, the same transaction also claims the run for that owner if it was suspended or
        waiting (returns True): the resumer executes it at once, without a round through the dispatcher.
        Otherwise (or if the run is still executing elsewhere) the run becomes ready for any dispatcher.
        ``seen_at``: the run's ``updated_at`` as the resumer read it; the run is claimed only if unchanged since
        (nobody executed it meanwhile), so what was read with it is all it has done. ``now``: the moment recorded
        as ``resolved_at`` (default: this call's). On SQLite the resumes of one loop turn commit as one group
        (see resolves.py).
        """
        item = Resolve(run_id, path, data, by, new_events, claim_for, lease, time.time() if now is None else now,
                       seen_at)
        if self.db.is_sqlite:
            return await self._resolves.resolve(item)
        return await self._resolve_one(item)

    async def _resolve_one(self, item: Resolve) -> bool:
        return await self.db.write(lambda conn: resolve_one(conn, item), inline=True)

    async def _resolve_many(self, items: list[Resolve]) -> list[Outcome]:
        return await self.db.write(lambda conn: resolve_many(conn, items), inline=True)

    @staticmethod
    async def _make_ready(conn: AsyncConnection, run_id: str, now: float) -> None:
        await conn.execute(MAKE_READY, {"b_id": run_id, "b_now": now})

    async def send_signal(self, run_id: str, name: str, data: Any, new_events: Sequence[NewEvent]) -> str:
        """Resolve the open wait for ``name`` if there is one, else buffer the event. Returns which."""
        now = time.time()

        async def op(conn: AsyncConnection, retried: bool) -> str:
            if retried and (earlier := await self._signal_sent_at(conn, run_id, name, now)) is not None:
                return earlier  # this very event, committed by an attempt whose outcome was not known (a dropped connection)
            status = await locked_status(conn, run_id)  # (PostgreSQL: a cancel or a settle meanwhile waits for this)
            if status == "-":
                status = (await conn.execute(select(runs.c.status).where(runs.c.id == run_id))).scalar_one_or_none()
            if status is None or status in TERMINAL_STATUSES:
                raise CompareAndSetFailed(status)
            # By the run's key only, the status tested here (see _SUSPENSION_STATES: the index on status would
            # make SQLite read every open suspension).
            waits = await conn.execute(
                select(suspensions.c.path, suspensions.c.status)
                .where(suspensions.c.run_id == run_id, suspensions.c.kind == "event", suspensions.c.event_name == name)
                .order_by(suspensions.c.created_at)
            )
            waiting = next((w for w in waits if w[1] == "open"), None)
            delivered = waiting is not None and (await conn.execute(
                update(suspensions)
                .where(suspensions.c.run_id == run_id, suspensions.c.path == waiting[0], suspensions.c.status == "open")
                .values(status="resolved", resolved_by="event", resolved_at=now, resume_data=data)
            )).rowcount == 1
            if delivered:
                await self._make_ready(conn, run_id, now)
                outcome = "delivered"
            else:
                # Also when the wait was resolved since it was read: two events sent at once from two processes
                # (PostgreSQL: the second's update waits for the first's commit, then matches nothing), or a
                # buffered event the run took. This one waits for the next wait.
                await conn.execute(insert(signals).values(run_id=run_id, name=name, data=data, created_at=now))
                outcome = "buffered"
            await self._add_events(conn, run_id, new_events, now)
            return outcome

        return await self.db.write(knowing_retries(op))

    @staticmethod
    async def _signal_sent_at(conn: AsyncConnection, run_id: str, name: str, now: float) -> str | None:
        """How an event sent at ``now`` was taken, if an earlier attempt of its write committed: "delivered" (it
        resolved the run's wait), "buffered", or None (nothing of it committed)."""
        delivered = (await conn.execute(
            select(suspensions.c.path).where(suspensions.c.run_id == run_id, suspensions.c.kind == "event",
                                             suspensions.c.event_name == name, suspensions.c.resolved_by == "event",
                                             suspensions.c.resolved_at == now)
        )).first()
        if delivered is not None:
            return "delivered"
        buffered = (await conn.execute(
            select(signals.c.id).where(signals.c.run_id == run_id, signals.c.name == name, signals.c.created_at == now)
        )).first()
        return "buffered" if buffered is not None else None

    async def consume_signal(self, run_id: str, signal_id: int, path: str) -> bool:
        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                update(signals)
                .where(signals.c.id == signal_id, or_(signals.c.consumed_path.is_(None), signals.c.consumed_path == path))
                .values(consumed_path=path)
            )
            return bool(res.rowcount)

        return await self.db.write(op, patient=True)

    async def cancel(self, run_id: str, by: str | None, new_events: Sequence[NewEvent]) -> None:
        now = time.time()
        error = {"type": "Canceled", "message": f"Canceled by {by or 'a user'}."}
        await self.db.write(knowing_retries(
            lambda conn, retried: self._cancel(conn, run_id, now, error, new_events, retried=retried)))

    async def _cancel(
        self, conn: AsyncConnection, run_id: str, now: float, error: dict[str, Any], new_events: Sequence[NewEvent],
        *, retried: bool = False,
    ) -> None:
        res = await conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status.not_in(_TERMINAL))
            .values(status="canceled", owner=None, lease_expires_at=None, updated_at=now, finished_at=now, error=error)
        )
        if res.rowcount == 0:
            found = (await conn.execute(select(runs.c.status, runs.c.finished_at).where(runs.c.id == run_id))).first()
            if retried and found is not None and found[0] == "canceled" and found[1] == now:
                return  # this very cancel, committed by an attempt whose outcome was not known (a dropped connection)
            raise CompareAndSetFailed(found[0] if found is not None else None)
        await self._add_events(conn, run_id, new_events, now)

    async def open_suspensions(self, run_id: str) -> list[SuspensionRecord]:
        return [s for s in await self.suspensions_of(run_id) if s.status == "open"]

    async def suspensions_of(self, run_id: str) -> list[SuspensionRecord]:
        """The run's suspensions, open and resolved, in the order they were opened."""
        return list(await self._suspensions.load(run_id))

    async def _get_suspensions(self, ids: Sequence[str]) -> dict[str, list[SuspensionRecord]]:
        return await self.db.read(lambda conn: read_suspensions(conn, ids), inline=len(ids) == 1)

    async def expired_suspensions(self, now: float) -> list[SuspensionRecord]:
        async def op(conn: AsyncConnection) -> list[SuspensionRecord]:
            q = select(suspensions).where(
                suspensions.c.status == "open", suspensions.c.kind == "suspend",
                suspensions.c.expires_at.is_not(None), suspensions.c.expires_at <= now, self._live_run_of_mine(),
            )
            return [SuspensionRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def next_expiry(self) -> float | None:
        async def op(conn: AsyncConnection) -> float | None:
            # Only live runs this process executes: a past expiry it will never act on would keep the
            # dispatcher's timer due, and its loop busy.
            q = select(func.min(suspensions.c.expires_at)).where(
                suspensions.c.status == "open", suspensions.c.kind == "suspend", self._live_run_of_mine()
            )
            value = (await conn.execute(q)).scalar_one_or_none()
            return float(value) if value is not None else None

        return await self.db.read(op)

    def _live_run_of_mine(self) -> ColumnElement[bool]:
        """The suspension's run is unfinished and this process executes it."""
        return exists().where(runs.c.id == suspensions.c.run_id, runs.c.status.not_in(_TERMINAL), self._mine())

    async def read_events(self, run_id: str, after: int = 0, limit: int = 500) -> list[EventRecord]:
        async def op(conn: AsyncConnection) -> list[EventRecord]:
            q = select(events).where(events.c.run_id == run_id, events.c.id > after).order_by(events.c.id).limit(limit)
            return [EventRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    # -- dispatching -------------------------------------------------------------------------------

    async def claim(
        self, owner: str, limit: int, lease: float, only: Sequence[str] | None = None,
        pick: Callable[[list[ClaimCandidate]], list[str]] | None = None,
    ) -> list[str]:
        """Take up to ``limit`` ready runs: new, resumed, woken, or whose holder's lease ran out (oldest first).

        PostgreSQL: ``FOR UPDATE SKIP LOCKED`` picks candidates no other replica is claiming; the update's
        own ``WHERE`` repeats the readiness test, so a claim is a compare-and-set on either database.
        ``pick`` chooses which candidates to take (the engine keeps runs that killed processes apart); the
        others stay ready for any process.
        """
        return [run_id for run_id, _ in await self._claim(owner, limit, lease, only, pick, load=False)]

    async def claim_runs(
        self, owner: str, limit: int, lease: float,
        pick: Callable[[list[ClaimCandidate]], list[str]] | None = None,
    ) -> list[tuple[RunRecord, RunProgress]]:
        """:meth:`claim`, returning each claimed run as claimed and its progress, read in the claim's transaction.

        The executor needs both before its first step; read here, a claim of 200 runs costs three more
        ``IN`` queries in a transaction that is open anyway, instead of two more shared reads (and two turns
        of the event loop) before any of them can start. The run is held from this transaction on, so no other
        process adds to its results; input arriving after it is what a settle checks for, as before.
        """
        return [loaded for _, loaded in await self._claim(owner, limit, lease, None, pick, load=True) if loaded]

    async def _claim(
        self, owner: str, limit: int, lease: float, only: Sequence[str] | None,
        pick: Callable[[list[ClaimCandidate]], list[str]] | None, *, load: bool,
    ) -> list[tuple[str, tuple[RunRecord, RunProgress] | None]]:
        """The claimed ids, oldest first, each with its record and progress if ``load``."""
        now = time.time()
        ready = is_ready(now, by_key=self.db.is_sqlite)

        async def op(conn: AsyncConnection) -> list[tuple[str, tuple[RunRecord, RunProgress] | None]]:
            # Only runs of versions this process has: another replica that has the version takes the rest.
            rows = await oldest_ready(conn, (runs.c.id, runs.c.status, runs.c.owner, runs.c.workflow_id,
                                             runs.c.recoveries), now, limit, self._mine(), only=only,
                                      lock=not self.db.is_sqlite, key=self._mine_key())
            candidates = {r[0]: (r[1], r[2]) for r in rows}
            if pick is not None:
                chosen = pick([ClaimCandidate(r[0], r[3], r[4] + (r[1] == "running")) for r in rows])
                candidates = {run_id: candidates[run_id] for run_id in chosen if run_id in candidates}
            if not candidates:
                return []
            ids = list(candidates)
            records: dict[str, RunRecord] = {}
            if load and self.db.is_sqlite:
                # One writer (this transaction): the candidates just read are still ready. The update as a prepared
                # statement and the claimed rows read back by key cost less than RETURNING through SQLAlchemy's
                # result layer (a whole claim of 200 runs with their progress: ~9.8 -> ~8.4 ms of CPU). Claimed:
                # held by this owner and updated at this moment.
                await conn.execute(_CLAIM_READY, {"ids": ids, "b_now": now, "b_owner": owner,
                                                  "b_expires": now + lease})
                records = {run_id: run for run_id, run in (await read_runs(conn, ids)).items()
                           if run.owner == owner and run.status == "running" and run.updated_at == now}
                claimed = [run_id for run_id in ids if run_id in records]  # oldest first, as chosen
            else:
                take = (
                    update(runs)
                    .where(runs.c.id.in_(ids), ready)
                    .values(status="running", owner=owner, lease_expires_at=now + lease, updated_at=now,
                            waiting_for=None, recoveries=_RECOVERIES_AFTER_CLAIM)
                )
                res = await conn.execute(take.returning(*runs.c) if load else take.returning(runs.c.id))
                returned = {r.id: r for r in res}
                claimed = [run_id for run_id in ids if run_id in returned]  # oldest first, as chosen
                if load:
                    records = {run_id: run_record(returned[run_id]._mapping) for run_id in claimed}
            for run_id in claimed:
                status, previous = candidates[run_id]
                if status == "running":
                    await self._add_events(conn, run_id, [NewEvent(type="run.recovered", data={
                        "previous_owner": previous, "reason": "lease expired"})], now)
            if not load:
                return [(run_id, None) for run_id in claimed]
            progress = await read_progress(conn, claimed)
            return [(run_id, (records[run_id], progress[run_id])) for run_id in claimed]

        return await self.db.write(op, inline=True)

    async def ready_ids(self, limit: int = 1000) -> list[str]:
        """Runs ready to be claimed by a process that has their version: new, resumed, woken, or whose holder's
        lease ran out (what ``claim`` would take), oldest first."""
        now = time.time()

        async def op(conn: AsyncConnection) -> list[str]:
            return [r[0] for r in await oldest_ready(conn, (runs.c.id,), now, limit, self._mine(), key=self._mine_key())]

        return await self.db.read(op)

    async def has_ready(self) -> bool:
        now = time.time()

        async def op(conn: AsyncConnection) -> bool:
            return bool(await oldest_ready(conn, (runs.c.id,), now, 1, self._mine(), key=self._mine_key()))

        return await self.db.read(op, inline=True)

    async def next_wakeup(self) -> float | None:
        """The earliest time a waiting run becomes ready or a held run's lease runs out (of runs this process executes)."""

        async def op(conn: AsyncConnection) -> float | None:
            # One query per status, each a range of ix_runs_status_ready: as one OR, SQLite read every
            # suspended run (100,000 waiting approvals: tens of ms, every poll interval).
            waiting = select(func.min(runs.c.ready_at)).where(
                runs.c.status == "waiting", runs.c.ready_at.is_not(None), self._mine())
            beside = select(func.min(runs.c.ready_at)).where(
                runs.c.status == "suspended", runs.c.ready_at.is_not(None), runs.c.ready_at > runs.c.updated_at,
                self._mine())
            leases = select(func.min(runs.c.lease_expires_at)).where(runs.c.status == "running", self._mine())
            times = [(await conn.execute(q)).scalar_one_or_none() for q in (waiting, beside, leases)]
            present = [float(t) for t in times if t is not None]
            return min(present) if present else None

        return await self.db.read(op)

    async def heartbeat(self, owner: str, run_ids: Sequence[str], lease: float) -> set[str]:
        """Extend this process's leases; return the ids it no longer holds (canceled or taken over)."""
        if not run_ids:
            return set()
        result: set[str] = await self.db.write(renew_leases(owner, run_ids, lease))
        return result

    async def running_owners(self) -> list[str]:
        async def op(conn: AsyncConnection) -> list[str]:
            q = select(runs.c.owner).where(runs.c.status == "running", runs.c.owner.is_not(None)).distinct()
            return [r[0] for r in await conn.execute(q)]

        return await self.db.read(op)

    async def release_owner(self, owner: str, new_events_for: str = "run.recovered") -> list[str]:
        """Hand back every run ``owner`` holds (it shut down, or it is known dead) so any process can claim them.

        ``run.recovered`` (the owner died) counts a recovery on each run; ``run.released`` (it shut down
        cleanly) does not.
        """
        now = time.time()
        died = new_events_for == "run.recovered"
        values: dict[str, Any] = {"status": "pending", "owner": None, "lease_expires_at": None, "ready_at": now,
                                  "updated_at": now}
        if died:
            values["recoveries"] = runs.c.recoveries + 1

        async def op(conn: AsyncConnection) -> list[str]:
            res = await conn.execute(
                update(runs).where(runs.c.owner == owner, runs.c.status == "running").values(**values).returning(runs.c.id)
            )
            ids = [r[0] for r in res]
            data = {"previous_owner": owner, "reason": "process died"} if died else {"previous_owner": owner}
            for run_id in ids:
                await self._add_events(conn, run_id, [NewEvent(type=new_events_for, data=data)], now)
            return ids

        return await self.db.write(op)

    async def release_run(self, run_id: str, owner: str) -> None:
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.owner == owner, runs.c.status == "running")
                .values(status="pending", owner=None, lease_expires_at=None, ready_at=now, updated_at=now)
            )

        await self.db.write(op)


def renew_leases(owner: str, run_ids: Sequence[str], lease: float) -> Any:
    """The database function that extends ``owner``'s leases on ``run_ids`` and returns the ids it lost.

    Shared by the heartbeat on the event loop and the lease keeper's thread (see ``leases.py``).
    """
    ids = list(run_ids)

    async def op(conn: AsyncConnection) -> set[str]:
        now = time.time()
        await conn.execute(
            update(runs)
            .where(runs.c.owner == owner, runs.c.status == "running", runs.c.id.in_(ids))
            .values(lease_expires_at=now + lease)
        )
        held = select(runs.c.id).where(runs.c.id.in_(ids), runs.c.owner == owner, runs.c.status == "running")
        return set(ids) - {r[0] for r in await conn.execute(held)}

    return op
