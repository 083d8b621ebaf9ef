"""Which runs are ready to be claimed, oldest first, read with queries whose cost does not grow with the backlog.

A run is ready when it is new or resumed (``pending``), when its timer is due (``waiting``, or ``suspended``
with a sleeping branch beside its approval), or when its holder's lease ran out (``running``). Asked as one
``WHERE <any of the four> ORDER BY ready_at, created_at LIMIT n``, SQLite (and PostgreSQL) collect every
ready row and sort them all before taking ``n``: with 100,000 pending runs every claim sorted 100,000 rows
(about 10 ms per 10,000, on the event loop, holding the write lock), so a large backlog drained ever slower.
Asked as one query per kind, each reads ``ix_runs_status_ready`` (``status, ready_at``) in order and stops
after ``n`` rows; the oldest ``n`` of the merged results are the oldest ``n`` of the union.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from .tables import runs


def ready_kinds(now: float | BindParameter[float]) -> list[ColumnElement[bool]]:
    """The four ways a run is ready at ``now`` (a moment, or a parameter of a prepared statement); each is a range
    of ``ix_runs_status_ready``."""
    return [
        runs.c.status == "pending",
        and_(runs.c.status == "waiting", runs.c.ready_at.is_not(None), runs.c.ready_at <= now),
        # A suspended run has a ``ready_at`` only when a branch beside its open approval sleeps: ``settle``
        # sets it to that timer, later than the moment it settled (``updated_at``).
        and_(runs.c.status == "suspended", runs.c.ready_at.is_not(None), runs.c.ready_at <= now,
             runs.c.ready_at > runs.c.updated_at),
        and_(runs.c.status == "running", runs.c.lease_expires_at < now),
    ]


def is_ready(now: float | BindParameter[float]) -> ColumnElement[bool]:
    """Any of :func:`ready_kinds` (for a test of rows already picked by id, as a claim's compare-and-set)."""
    return or_(*ready_kinds(now))


async def oldest_ready(
    conn: AsyncConnection,
    columns: Sequence[Any],
    now: float,
    limit: int,
    mine: ColumnElement[bool],
    *,
    only: Sequence[str] | None = None,
    lock: bool = False,
) -> list[Any]:
    """Up to ``limit`` ready runs this process executes (``mine``), oldest ``ready_at`` first: rows of ``columns``.

    ``lock`` (PostgreSQL): ``FOR UPDATE SKIP LOCKED`` on each query, so replicas claiming at the same moment
    take different runs. Rows read but not among the oldest ``limit`` stay locked until the caller's
    transaction ends (a claim's: milliseconds), and are simply skipped by other replicas meanwhile.
    """
    if limit <= 0:
        return []
    rows: list[Any] = []
    for kind in ready_kinds(now):
        q: Select[Any] = select(*columns, runs.c.ready_at, runs.c.created_at).where(kind, mine)
        if only is not None:
            q = q.where(runs.c.id.in_(list(only)))
        q = q.order_by(runs.c.ready_at, runs.c.created_at).limit(limit)
        if lock:
            q = q.with_for_update(skip_locked=True)
        rows.extend(await conn.execute(q))
    n = len(columns)
    # (A row without ready_at sorts first, as SQLite orders NULLs; this engine always sets it on ready runs.)
    rows.sort(key=lambda r: (r[n] is not None, r[n] or 0.0, r[n + 1]))
    return [tuple(r[:n]) for r in rows[:limit]]
