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

from collections.abc import Hashable, Sequence
from typing import Any

from sqlalchemy import Float, Integer, Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ColumnElement, UnaryExpression
from sqlalchemy.sql.operators import custom_op

from .prepared import prepared
from .tables import runs

#: (columns, the caller's key for ``mine``, lock) -> the four queries of :func:`oldest_ready`, prepared statements.
#: Kept for good, as every prepared statement is: a key stands for a set of versions a process serves, which changes
#: only when workflows are registered (equal sets, one entry).
_QUERIES: dict[tuple[Any, ...], tuple[Select[Any], ...]] = {}


def ready_kinds(now: float | BindParameter[float], status: ColumnElement[str] = runs.c.status) -> list[ColumnElement[bool]]:
    """The four ways a run is ready at ``now`` (a moment, or a parameter of a prepared statement); each is a range
    of ``ix_runs_status_ready``."""
    return [
        status == "pending",
        and_(status == "waiting", runs.c.ready_at.is_not(None), runs.c.ready_at <= now),
        # A suspended run has a ``ready_at`` only when a branch beside its open approval sleeps: ``settle``
        # sets it to that timer, later than the moment it settled (``updated_at``).
        and_(status == "suspended", runs.c.ready_at.is_not(None), runs.c.ready_at <= now,
             runs.c.ready_at > runs.c.updated_at),
        and_(status == "running", runs.c.lease_expires_at < now),
    ]


def is_ready(now: float | BindParameter[float], *, by_key: bool = False) -> ColumnElement[bool]:
    """Any of :func:`ready_kinds` (for a test of rows already picked by id, as a claim's compare-and-set).

    ``by_key`` (SQLite only): the rows are picked by their ids, so the status is kept off the indexes (SQLite's unary
    ``+``). SQLite keeps no statistics here and otherwise reads the four kinds from ``ix_runs_status_*`` (every
    pending run) rather than the ids from the primary key once about ten ids are given: a claim of 200 runs took
    24.5 ms with 100,000 runs pending (2.4 ms by key).
    """
    status = UnaryExpression(runs.c.status, operator=custom_op("+"), type_=runs.c.status.type) if by_key else runs.c.status
    return or_(*ready_kinds(now, status))


async def oldest_ready(
    conn: AsyncConnection,
    columns: Sequence[Any],
    now: float,
    limit: int,
    mine: ColumnElement[bool],
    *,
    only: Sequence[str] | None = None,
    lock: bool = False,
    key: Hashable = None,
) -> list[Any]:
    """Up to ``limit`` ready runs this process executes (``mine``), oldest ``ready_at`` first: rows of ``columns``.

    ``lock`` (PostgreSQL): ``FOR UPDATE SKIP LOCKED`` on each query, so replicas claiming at the same moment
    take different runs. Rows read but not among the oldest ``limit`` stay locked until the caller's
    transaction ends (a claim's: milliseconds), and are simply skipped by other replicas meanwhile.

    ``key``: what ``mine`` stands for (the same key, the same clause; None: not known). With a key and no ``only``,
    the four queries are built once and run as prepared statements (on SQLite straight on the cursor): built and run
    through SQLAlchemy's execution layer each time, they were 5% of a burst of 1,800 resumes.
    """
    if limit <= 0:
        return []
    n = len(columns)
    queries: Sequence[Select[Any]]
    params: dict[str, Any] | None = None
    if key is not None and only is None:
        queries, params = _prepared_queries(columns, mine, lock, key), {"b_now": now, "b_limit": limit}
    else:
        queries = [_query(columns, kind, mine, lock, limit) for kind in ready_kinds(now)]
        if only is not None:
            queries = [q.where(runs.c.id.in_(list(only))) for q in queries]
    found: list[list[Any]] = []
    for q in queries:
        kind_rows = list(await conn.execute(q, params))
        if kind_rows:
            found.append(kind_rows)
    if len(found) == 1 and found[0][0][n] is not None and found[0][-1][n] is not None:
        rows = found[0]  # one kind's rows, in order already (none without ready_at: databases place NULLs differently)
    else:
        rows = [r for kind_rows in found for r in kind_rows]
        # (A row without ready_at sorts first, as SQLite orders NULLs; this engine always sets it on ready runs.)
        rows.sort(key=lambda r: (r[n] is not None, r[n] or 0.0, r[n + 1]))
    return [tuple(r[:n]) for r in rows[:limit]]


def _query(columns: Sequence[Any], kind: ColumnElement[bool], mine: ColumnElement[bool], lock: bool,
           limit: int | BindParameter[int]) -> Select[Any]:
    """One kind's ready runs (with ``ready_at`` and ``created_at`` after ``columns``, to merge the kinds by)."""
    q: Select[Any] = (select(*columns, runs.c.ready_at, runs.c.created_at).where(kind, mine)
                      .order_by(runs.c.ready_at, runs.c.created_at).limit(limit))
    return q.with_for_update(skip_locked=True) if lock else q


def _prepared_queries(columns: Sequence[Any], mine: ColumnElement[bool], lock: bool, key: Hashable
                      ) -> tuple[Select[Any], ...]:
    """The four queries for ``columns`` and the ``mine`` of ``key``, with ``now`` and ``limit`` as parameters."""
    cache_key = (tuple(columns), key, lock)
    queries = _QUERIES.get(cache_key)
    if queries is None:
        now, limit = bindparam("b_now", type_=Float), bindparam("b_limit", type_=Integer)
        queries = _QUERIES[cache_key] = tuple(
            prepared(_query(columns, kind, mine, lock, limit)) for kind in ready_kinds(now))
    return queries
