"""The engine's hot writes on PostgreSQL, each one statement: a state change and its events, one round trip.

On SQLite a write is several statements in one local transaction (no network). On PostgreSQL each
statement is a round trip, and so are ``BEGIN`` and ``COMMIT``; each of these is one data-modifying CTE
instead, sent on the asyncpg connection (see ``pgconn.py``), and alone in a batch without ``BEGIN``: an
implicit transaction of one statement, all of it committed or none of it.

- :func:`record_step`: the step's result goes in only while this process holds the run (owner and
  ``running``) and only once (``ON CONFLICT DO NOTHING`` on ``(run_id, path)``: a commit of unknown
  outcome retried adds nothing); its events only if it did; a recovered run's count of deaths is reset
  with its first step since.
- :func:`insert_run`: a new run and its events, insert-if-absent on its id.
- :func:`settle`: a held run leaves ``running`` (the compare-and-set on owner and status) with its events.

Each returns whether its row was written; when it was not, the caller finds out why with further
statements, on that rare path only. Events go in in the order given (``WITH ORDINALITY``: their ids are
the replay offsets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Float, Integer, String, Table

from .pgconn import PgConnection
from .records import NewEvent, StepResultRecord
from .tables import events, runs, step_results

#: The events of the change, from arrays (types, paths, JSON texts, times) given as the last parameters
#: ``$n..$n+3``, inserted only if the CTE ``{written}`` wrote its row.
_EVENTS = """
    INSERT INTO events (run_id, type, path, data, at)
    SELECT {run_id}, e.type, e.path, e.data::json, e.at
    FROM unnest(${n}::varchar[], ${n1}::varchar[], ${n2}::text[], ${n3}::float8[]) WITH ORDINALITY AS e(type, path, data, at, i)
    WHERE EXISTS (SELECT 1 FROM {written})
    ORDER BY e.i
"""


def _events_sql(first: int, run_id: str, written: str) -> str:
    return _EVENTS.format(n=first, n1=first + 1, n2=first + 2, n3=first + 3, run_id=run_id, written=written)


RECORD_STEP = f"""
WITH ins AS (
    INSERT INTO step_results (run_id, path, step_id, kind, output, attempts, started_at, finished_at)
    SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::json, $6::integer, $7::float8, $8::float8
    -- FOR SHARE: a claim of the run by another process, under way, is waited for and then seen (a plain read
    -- would see the last committed owner, this one, and record a result the new holder never reads).
    WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1::varchar AND owner = $9::varchar AND status = 'running' FOR SHARE)
    ON CONFLICT DO NOTHING
    RETURNING 1
), ev AS ({_events_sql(10, "$1::varchar", "ins")}), reset AS (
    UPDATE runs SET recoveries = 0
    WHERE $14::boolean AND id = $1::varchar AND owner = $9::varchar AND EXISTS (SELECT 1 FROM ins)
)
SELECT count(*) FROM ins
"""


def _cast(column: Column[Any]) -> str:
    """The PostgreSQL type a parameter for ``column`` is sent as (unbounded: a cast to varchar(n) would cut)."""
    kind = column.type
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, Float):
        return "float8"
    if isinstance(kind, Boolean):
        return "boolean"
    if isinstance(kind, Integer):
        return "integer"
    if isinstance(kind, String):
        return "text"
    raise TypeError(f"no one-statement write for column {column.name!r} of type {kind!r}")


@cache
def _insert_run_sql(names: tuple[str, ...]) -> str:
    values = ", ".join(f"${i}::{_cast(runs.c[name])}" for i, name in enumerate(names, 1))
    run_id = f"${names.index('id') + 1}::varchar"
    return f"""
WITH ins AS (
    INSERT INTO runs ({", ".join(names)}) VALUES ({values})
    ON CONFLICT DO NOTHING
    RETURNING 1
), ev AS ({_events_sql(len(names) + 1, run_id, "ins")})
SELECT count(*) FROM ins
"""


@cache
def _settle_sql(names: tuple[str, ...]) -> str:
    sets = ", ".join(f"{name} = ${i}::{_cast(runs.c[name])}" for i, name in enumerate(names, 3))
    return f"""
WITH upd AS (
    UPDATE runs SET {sets}
    WHERE id = $1::varchar AND owner = $2::varchar AND status = 'running'
    RETURNING 1
), ev AS ({_events_sql(len(names) + 3, "$1::varchar", "upd")})
SELECT count(*) FROM upd
"""


#: (dialect id, table, column) -> the bind processor SQLAlchemy would apply (JSON: its serializer, with
#: Python None as JSON null, as the columns are declared), or None.
_PROCESSORS: dict[tuple[int, str, str], Callable[[Any], Any] | None] = {}


def _processor(dialect: Any, table: Table, name: str) -> Callable[[Any], Any] | None:
    key = (id(dialect), table.name, name)
    try:
        return _PROCESSORS[key]
    except KeyError:
        found = _PROCESSORS[key] = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        return found


def _values(dialect: Any, table: Table, row: Mapping[str, Any], names: Sequence[str]) -> list[Any]:
    out = []
    for name in names:
        process = _processor(dialect, table, name)
        value = row[name]
        out.append(process(value) if process is not None else value)
    return out


def _event_arrays(dialect: Any, new_events: Iterable[NewEvent], now: float) -> list[list[Any]]:
    data_json = _processor(dialect, events, "data")
    assert data_json is not None
    evs = list(new_events)
    return [[e.type for e in evs], [e.path for e in evs], [data_json(e.data) for e in evs], [e.at or now for e in evs]]


async def record_step(
    conn: PgConnection, result: StepResultRecord, owner: str, new_events: Iterable[NewEvent], *, progressed: bool
) -> bool:
    """Insert the step's result and its events if ``owner`` holds the run; True if the result row went in."""
    output = _processor(conn.dialect, step_results, "output")
    assert output is not None
    inserted = await conn.fetchval(
        RECORD_STEP,
        result.run_id, result.path, result.step_id, result.kind, output(result.output), result.attempts,
        result.started_at, result.finished_at, owner,
        *_event_arrays(conn.dialect, new_events, result.finished_at),
        progressed,
    )
    return bool(inserted)


async def insert_run(conn: PgConnection, row: Mapping[str, Any], new_events: Iterable[NewEvent]) -> bool:
    """Insert the run ``row`` and its events unless a run with its id exists; True if it went in."""
    names = tuple(row)
    inserted = await conn.fetchval(
        _insert_run_sql(names), *_values(conn.dialect, runs, row, names),
        *_event_arrays(conn.dialect, new_events, row["created_at"]),
    )
    return bool(inserted)


async def settle(
    conn: PgConnection, run_id: str, owner: str, values: Mapping[str, Any], new_events: Iterable[NewEvent], now: float
) -> bool:
    """Set ``values`` on the run if ``owner`` holds it (and it is ``running``), with its events; True if it did."""
    names = tuple(values)
    updated = await conn.fetchval(
        _settle_sql(names), run_id, owner, *_values(conn.dialect, runs, values, names),
        *_event_arrays(conn.dialect, new_events, now),
    )
    return bool(updated)
