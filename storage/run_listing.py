"""Listing runs: the query, and a read-only shortcut for a one-shot command on a SQLite file.

``threadflow runs`` is a process that reads one page of runs and exits. Opening a
:class:`~storage.database.Database` for it cost most of its start: the async engine (and with it the ORM),
both dialects, the commit queue, writer and reader threads, the migration check. Here the same query runs
on one pysqlite connection through SQLAlchemy Core, and the rows become the same :class:`RunRecord` s the
run repository returns (``RunStore.list_runs`` builds its query with :func:`runs_query` too).

It is a shortcut, never a second set of rules: whenever it cannot answer exactly as the Database would, it
answers None and the caller opens the Database as before, which migrates a new or older schema, waits for
locks and says clearly what is wrong. That is the case for PostgreSQL, an in-memory database, a file that
does not exist yet, a schema that is not at head, and any error SQLite raises while reading.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from . import jsoncodec
from .records import RunRecord
from .schema_head import is_current_sync
from .tables import runs
from .urls import normalize_url

log = logging.getLogger("threadflow.storage")


def runs_query(*, status: str | None = None, workflow_id: str | None = None, limit: int = 50) -> Select[Any]:
    """Recent runs, newest first (ties by id), optionally of one status and one workflow."""
    q = select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
    if status:
        q = q.where(runs.c.status == status)
    if workflow_id:
        q = q.where(runs.c.workflow_id == workflow_id)
    return q


def list_runs_readonly(
    url: str, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50
) -> list[RunRecord] | None:
    """The runs :meth:`RunStore.list_runs` would return, read without opening a Database; None when this
    shortcut does not apply (see the module docstring) and the caller must open one.

    A malformed URL raises :class:`~storage.errors.DatabaseURLError`, as opening a Database would.
    """
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.query:  # (query: URI filenames and options; leave them to the Database)
        return None
    database = parsed.database
    if not database or database == ":memory:" or not Path(database).is_file():
        return None  # nothing to read: the Database creates and migrates it
    engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), poolclass=NullPool, **jsoncodec.ENGINE_ARGS)
    try:
        with engine.connect() as conn:
            if not is_current_sync(conn):
                return None
            rows = conn.execute(runs_query(status=status, workflow_id=workflow_id, limit=limit)).mappings()
            return [RunRecord.model_validate(dict(r)) for r in rows]
    except DBAPIError as exc:  # locked, unreadable, not a database...: the Database retries or explains it
        log.debug("listing runs without opening the database failed (%s); opening it", exc.orig)
        return None
    finally:
        engine.dispose()
