"""Read-only queries for browsing runs (the run inspector): filtered pages, counts, and the event feed.

Pages use keyset pagination on ``(created_at, id)``, never ``OFFSET``: page 2,000 of 100,000 runs costs
what page 1 costs (an index range scan of ``limit`` rows), and a run started while someone pages does not
shift the pages under them. The indexes are ``ix_runs_created`` and ``ix_runs_status_created``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .database import Database
from .records import EventRecord, RunRecord
from .tables import events, runs, slack_runs


class Visibility(BaseModel):
    """A person sees runs started in the Slack channels they belong to, and runs they started themselves."""

    model_config = ConfigDict(frozen=True)

    channels: frozenset[str]
    user: str | None = None
    #: The person's workspace: channels of other workspaces never count (None: any, for single-workspace use).
    team: str | None = None


class RunFilter(BaseModel):
    """Which runs a listing shows. ``visible_to`` limits it to what one person may see (None: everything)."""

    model_config = ConfigDict(frozen=True)

    status: str | None = None
    workflow_id: str | None = None
    #: Runs whose id starts with this (run ids are lowercase hex).
    id_prefix: str | None = None
    visible_to: Visibility | None = None


class RunCursor(BaseModel):
    """A position in the newest-first order; ``token`` is its opaque form for a URL."""

    model_config = ConfigDict(frozen=True)

    created_at: float
    id: str

    @property
    def token(self) -> str:
        return f"{self.created_at!r}~{self.id}"

    @classmethod
    def parse(cls, token: str) -> RunCursor | None:
        """The cursor in ``token``, or None when it is malformed (a hand-edited URL starts over)."""
        at, sep, run_id = token.partition("~")
        if not sep or not run_id:
            return None
        try:
            return cls(created_at=float(at), id=run_id)
        except ValueError:
            return None

    @classmethod
    def of(cls, run: RunRecord) -> RunCursor:
        return cls(created_at=run.created_at, id=run.id)


class RunPage(BaseModel):
    """One page of runs, newest first, with cursors to the pages on either side (None at the ends)."""

    runs: list[RunRecord]
    older: RunCursor | None = None
    newer: RunCursor | None = None


class RunQueries:
    """Listings for people browsing runs; the engine's hot path never uses these."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self, where: RunFilter, *, before: RunCursor | None = None, after: RunCursor | None = None, limit: int = 50
    ) -> RunPage:
        """Up to ``limit`` runs older than ``before`` (or newer than ``after``; else the newest), newest first.

        A page reached with ``after`` that comes back empty means nothing is newer: show the newest page.
        """

        async def op(conn: AsyncConnection) -> RunPage:
            q = _filtered(select(runs), where)
            if after is not None:
                q = q.where(_newer_than(after)).order_by(runs.c.created_at.asc(), runs.c.id.asc())
            else:
                if before is not None:
                    q = q.where(_older_than(before))
                q = q.order_by(runs.c.created_at.desc(), runs.c.id.desc())
            rows = [RunRecord.model_validate(dict(r)) for r in (await conn.execute(q.limit(limit + 1))).mappings()]
            more = len(rows) > limit
            rows = rows[:limit]
            if after is not None:
                rows.reverse()
                older = RunCursor.of(rows[-1]) if rows else None
                newer = RunCursor.of(rows[0]) if rows and more else None
                return RunPage(runs=rows, older=older, newer=newer)
            return RunPage(
                runs=rows,
                older=RunCursor.of(rows[-1]) if rows and more else None,
                newer=RunCursor.of(rows[0]) if rows and before is not None else None,
            )

        return await self.db.read(op)

    async def count(self, where: RunFilter) -> int:
        async def op(conn: AsyncConnection) -> int:
            q = _filtered(select(func.count()).select_from(runs), where)
            return int((await conn.execute(q)).scalar_one())

        return await self.db.read(op)

    async def events_after(self, after: int, limit: int = 500) -> list[EventRecord]:
        """Every run's events after offset ``after``, in commit order (the runs page follows this feed)."""

        async def op(conn: AsyncConnection) -> list[EventRecord]:
            q = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
            return [EventRecord.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def last_event_id(self) -> int:
        async def op(conn: AsyncConnection) -> int:
            value = (await conn.execute(select(func.max(events.c.id)))).scalar_one_or_none()
            return int(value or 0)

        return await self.db.read(op)

    async def channels_of(self, run_ids: Iterable[str]) -> dict[str, str]:
        """The Slack channel each of these runs was started in (runs started elsewhere are absent)."""
        ids = list(run_ids)
        if not ids:
            return {}

        async def op(conn: AsyncConnection) -> dict[str, str]:
            q = select(slack_runs.c.run_id, slack_runs.c.channel_id).where(slack_runs.c.run_id.in_(ids))
            return {r[0]: r[1] for r in await conn.execute(q)}

        return await self.db.read(op)

    async def places_of(self, run_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """The Slack workspace and channel each of these runs was started in (others are absent)."""
        ids = list(run_ids)
        if not ids:
            return {}

        async def op(conn: AsyncConnection) -> dict[str, tuple[str, str]]:
            q = select(slack_runs.c.run_id, slack_runs.c.team_id, slack_runs.c.channel_id).where(
                slack_runs.c.run_id.in_(ids))
            return {r[0]: (r[1], r[2]) for r in await conn.execute(q)}

        return await self.db.read(op)


def _filtered(q: Select[Any], where: RunFilter) -> Select[Any]:
    if where.status:
        q = q.where(runs.c.status == where.status)
    if where.workflow_id:
        q = q.where(runs.c.workflow_id == where.workflow_id)
    if where.id_prefix:
        # A range, not LIKE: it uses the primary key on both databases (SQLite's LIKE ignores case and so
        # cannot). Ids are lowercase hex, so the next string after every id with this prefix is prefix + "~".
        q = q.where(runs.c.id >= where.id_prefix, runs.c.id < where.id_prefix + "~")
    if where.visible_to is not None:
        seen = where.visible_to
        where_channel: ColumnElement[bool] = slack_runs.c.channel_id.in_(sorted(seen.channels))
        if seen.team:
            where_channel = and_(where_channel, slack_runs.c.team_id == seen.team)
        in_channels = runs.c.id.in_(select(slack_runs.c.run_id).where(where_channel))
        clauses: list[ColumnElement[bool]] = [in_channels]
        if seen.user:
            clauses.append(runs.c.started_by == seen.user)
        q = q.where(or_(*clauses))
    return q


def _older_than(c: RunCursor) -> ColumnElement[bool]:
    # The bare range on created_at comes first so both databases seek the index to the cursor.
    return and_(runs.c.created_at <= c.created_at,
                or_(runs.c.created_at < c.created_at, runs.c.id < c.id))


def _newer_than(c: RunCursor) -> ColumnElement[bool]:
    return and_(runs.c.created_at >= c.created_at,
                or_(runs.c.created_at > c.created_at, runs.c.id > c.id))
