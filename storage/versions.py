"""Which workflow versions live processes execute, and which runs no live process can continue (stranded).

Every process that executes runs lists the versions it has in ``served_versions`` (one row per version,
``expires_at`` pushed forward with its heartbeat, its rows deleted when it shuts down). A run whose
version (``runs.workflow_fingerprint``) no unexpired row has is **stranded**: nobody will execute it until
a process with that version starts, the run is moved onto another version, or it is canceled. Runs from
before versions were recorded (no fingerprint) count as served by any process that has their workflow id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, false, func, insert, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .database import Database
from .records import TERMINAL_STATUSES, NewEvent, RunRecord, ServedVersion, VersionCount
from .tables import events, runs, served_versions

_TERMINAL = tuple(TERMINAL_STATUSES)
#: How many newly stranded runs one sweep flags (the next sweep takes the rest).
SWEEP_LIMIT = 500


@dataclass(frozen=True)
class Serving:
    """The versions one process has: fingerprints, and workflow ids (for runs recorded without one)."""

    fingerprints: tuple[str, ...] = ()
    workflow_ids: tuple[str, ...] = ()

    def clause(self) -> ColumnElement[bool]:
        """``runs`` rows this process may execute."""
        parts: list[ColumnElement[bool]] = []
        if self.fingerprints:
            parts.append(and_(runs.c.workflow_fingerprint.is_not(None),
                              runs.c.workflow_fingerprint.in_(list(self.fingerprints))))
        if self.workflow_ids:
            parts.append(and_(runs.c.workflow_fingerprint.is_(None), runs.c.workflow_id.in_(list(self.workflow_ids))))
        return or_(*parts) if parts else false()


@dataclass(frozen=True)
class StrandedRun:
    """A run a sweep just found stranded, and the versions of its workflow that live processes do have."""

    run_id: str
    workflow_id: str
    version: str | None
    fingerprint: str | None
    live: list[ServedVersion]


def served_live(now: float) -> ColumnElement[bool]:
    """``runs`` rows whose version some live process has."""
    live = served_versions.c.expires_at > now
    by_fingerprint = exists().where(served_versions.c.fingerprint == runs.c.workflow_fingerprint, live)
    by_id = exists().where(served_versions.c.workflow_id == runs.c.workflow_id, live)
    return or_(
        and_(runs.c.workflow_fingerprint.is_not(None), by_fingerprint),
        and_(runs.c.workflow_fingerprint.is_(None), by_id),
    )


async def find_stranded(
    conn: AsyncConnection, mine: Serving, now: float, limit: int = 100, workflow_id: str | None = None,
) -> list[RunRecord]:
    """Unfinished runs that neither a live process nor the asking one (``mine``) can execute, oldest first.

    Takes a connection so ``threadflow doctor`` can ask without opening (and so migrating) the database.
    """
    q = (
        select(runs)
        .where(runs.c.status.not_in(_TERMINAL), not_(served_live(now)), not_(mine.clause()))
        .order_by(runs.c.created_at, runs.c.id)
        .limit(limit)
    )
    if workflow_id is not None:
        q = q.where(runs.c.workflow_id == workflow_id)
    return [RunRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]


class VersionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def announce(self, owner: str, served: Sequence[tuple[str, str | None, str]], lease: float) -> None:
        """List ``(workflow_id, version, fingerprint)`` as executed by ``owner`` until ``now + lease``.

        Also drops expired rows of processes that are gone (a late heartbeat simply writes its rows again).
        ``now`` is when the write runs, not when it was asked for: a write that waited out a stall of the database
        (a lock held elsewhere, a restart) longer than a lease would otherwise list rows already expired.
        """

        async def op(conn: AsyncConnection) -> None:
            now = time.time()
            rows = [
                {"owner": owner, "workflow_id": wid, "version": version, "fingerprint": fp, "expires_at": now + lease}
                for wid, version, fp in served
            ]
            await conn.execute(delete(served_versions).where(
                or_(served_versions.c.owner == owner, served_versions.c.expires_at < now)
            ))
            if rows:
                await conn.execute(insert(served_versions), rows)

        await self.db.write(op)

    async def withdraw(self, owner: str) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(delete(served_versions).where(served_versions.c.owner == owner))

        await self.db.write(op)

    async def live(self, workflow_id: str | None = None) -> list[ServedVersion]:
        """Versions live processes execute (of one workflow, or all)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> list[ServedVersion]:
            q = select(served_versions).where(served_versions.c.expires_at > now).order_by(
                served_versions.c.workflow_id, served_versions.c.owner
            )
            if workflow_id is not None:
                q = q.where(served_versions.c.workflow_id == workflow_id)
            return [ServedVersion.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def stranded(self, mine: Serving, limit: int = 100, workflow_id: str | None = None) -> list[RunRecord]:
        now = time.time()
        return await self.db.read(lambda conn: find_stranded(conn, mine, now, limit, workflow_id))

    async def open_counts(self) -> list[VersionCount]:
        """Unfinished runs per workflow version."""

        async def op(conn: AsyncConnection) -> list[VersionCount]:
            cols = (runs.c.workflow_id, runs.c.workflow_version, runs.c.workflow_fingerprint)
            q = select(*cols, func.count()).where(runs.c.status.not_in(_TERMINAL)).group_by(*cols)
            return [
                VersionCount(workflow_id=wid, version=version, fingerprint=fp, open_runs=int(n))
                for wid, version, fp, n in await conn.execute(q)
            ]

        return await self.db.read(op)

    async def sweep(self, event_for: Callable[[StrandedRun], NewEvent], mine: Serving = Serving()) -> list[StrandedRun]:
        """Flag unfinished runs no live process can execute, each with one event (``event_for``), once.

        ``mine``: the versions the sweeping process has; its own runs are never stranded (as in ``find_stranded``),
        whatever its rows in ``served_versions`` say (a write of them may have waited out a stall of the database).
        A flagged run whose version is back (a process with it started) is unflagged, so a later stranding
        is said again. The flag is a compare-and-set: of several replicas sweeping at once, one flags a run.
        """

        async def op(conn: AsyncConnection) -> list[StrandedRun]:
            now = time.time()  # (when the write runs: see announce)
            served = or_(served_live(now), mine.clause())
            await conn.execute(
                update(runs)
                .where(runs.c.stranded_at.is_not(None), runs.c.status.not_in(_TERMINAL), served)
                .values(stranded_at=None)
            )
            candidates = (
                select(runs.c.id)
                .where(runs.c.status.not_in(_TERMINAL), runs.c.stranded_at.is_(None), not_(served))
                .limit(SWEEP_LIMIT)
                .scalar_subquery()
            )
            flagged = (await conn.execute(
                update(runs)
                .where(runs.c.id.in_(candidates), runs.c.stranded_at.is_(None), runs.c.status.not_in(_TERMINAL))
                .values(stranded_at=now)
                .returning(runs.c.id, runs.c.workflow_id, runs.c.workflow_version, runs.c.workflow_fingerprint)
            )).all()
            if not flagged:
                return []
            live_rows = (await conn.execute(
                select(served_versions).where(
                    served_versions.c.expires_at > now,
                    served_versions.c.workflow_id.in_(sorted({r[1] for r in flagged})),
                )
            )).mappings()
            live: dict[str, dict[str, ServedVersion]] = {}
            for row in live_rows:
                sv = ServedVersion.model_validate(dict(row))
                live.setdefault(sv.workflow_id, {}).setdefault(sv.fingerprint, sv)
            found = [
                StrandedRun(run_id, wid, version, fp, sorted(live.get(wid, {}).values(), key=_by_version))
                for run_id, wid, version, fp in flagged
            ]
            await conn.execute(insert(events), [_event_row(s.run_id, event_for(s), now) for s in found])
            return found

        return await self.db.write(op)

    async def served_by(self, fingerprint: str) -> list[str]:
        """The live processes that execute this version."""
        now = time.time()

        async def op(conn: AsyncConnection) -> list[str]:
            q = select(served_versions.c.owner).where(
                served_versions.c.fingerprint == fingerprint, served_versions.c.expires_at > now
            ).order_by(served_versions.c.owner)
            return [r[0] for r in await conn.execute(q)]

        return await self.db.read(op)


def _by_version(sv: ServedVersion) -> tuple[str, str]:
    return (sv.version or "", sv.fingerprint)


def _event_row(run_id: str, event: NewEvent, now: float) -> dict[str, Any]:
    return {"run_id": run_id, "type": event.type, "path": event.path, "data": event.data, "at": event.at or now}
