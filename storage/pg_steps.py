"""A step's commit on PostgreSQL in one statement: the fence, the result and its events, one round trip.

On SQLite a step's commit is several statements in one local transaction (no network). On PostgreSQL each
statement is a round trip, and so are ``BEGIN`` and ``COMMIT``; this data-modifying CTE does it all:

- the result row goes in only while this process holds the run (owner and ``running``), and only once
  (``ON CONFLICT DO NOTHING`` on ``(run_id, path)``: a commit of unknown outcome retried adds nothing);
- the events go in only if the result row did (``EXISTS (SELECT 1 FROM ins)``), in the order given;
- a run recovered from a dead process gets its count of deaths reset with its first step since.

Sent alone (no ``BEGIN``), it is one implicit transaction: all of it commits or none of it. It returns
whether the result row went in; when it did not, the caller finds out why (already recorded, or the run
is no longer held: ``LeaseLost``) with another statement, on that rare path only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .pgconn import PgConnection
from .records import NewEvent, StepResultRecord
from .tables import events, step_results

RECORD_STEP = """
WITH ins AS (
    INSERT INTO step_results (run_id, path, step_id, kind, output, attempts, started_at, finished_at)
    SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::json, $6::integer, $7::float8, $8::float8
    WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1::varchar AND owner = $9::varchar AND status = 'running')
    ON CONFLICT DO NOTHING
    RETURNING 1
), ev AS (
    INSERT INTO events (run_id, type, path, data, at)
    SELECT $1::varchar, e.type, e.path, e.data::json, e.at
    FROM unnest($10::varchar[], $11::varchar[], $12::text[], $13::float8[]) WITH ORDINALITY AS e(type, path, data, at, n)
    WHERE EXISTS (SELECT 1 FROM ins)
    ORDER BY e.n
), reset AS (
    UPDATE runs SET recoveries = 0
    WHERE $14::boolean AND id = $1::varchar AND owner = $9::varchar AND EXISTS (SELECT 1 FROM ins)
)
SELECT count(*) FROM ins
"""

#: (dialect id) -> the JSON bind processors of step_results.output and events.data: the same text
#: SQLAlchemy would send (its serializer; Python None as JSON null, as the columns are declared).
_PROCESSORS: dict[int, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {}


def _processors(dialect: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    found = _PROCESSORS.get(id(dialect))
    if found is None:
        output = step_results.c.output.type.dialect_impl(dialect).bind_processor(dialect)
        data = events.c.data.type.dialect_impl(dialect).bind_processor(dialect)
        assert output is not None and data is not None
        found = _PROCESSORS[id(dialect)] = (output, data)
    return found


async def record_step(
    conn: PgConnection, result: StepResultRecord, owner: str, new_events: Iterable[NewEvent], *, progressed: bool
) -> bool:
    """Insert the step's result and its events if ``owner`` holds the run; True if the result row went in."""
    output_json, data_json = _processors(conn.dialect)
    now = result.finished_at
    evs = list(new_events)
    inserted = await conn.fetchval(
        RECORD_STEP,
        result.run_id, result.path, result.step_id, result.kind, output_json(result.output), result.attempts,
        result.started_at, result.finished_at, owner,
        [e.type for e in evs], [e.path for e in evs], [data_json(e.data) for e in evs], [e.at or now for e in evs],
        progressed,
    )
    return bool(inserted)
