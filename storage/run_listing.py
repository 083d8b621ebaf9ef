"""A read-only listing of runs for a one-shot command on a SQLite file, without opening a Database.

``threadflow runs`` is a process that reads one page of runs and exits. Opening a
:class:`~storage.database.Database` for it cost most of its start: SQLAlchemy (its async engine and, with
it, the ORM), both dialects, the commit queue, writer and reader threads, the migration check. Here the
query :meth:`RunStore.list_runs <storage.runs.RunStore.list_runs>` runs is sent on one ``sqlite3``
connection, and the rows become the same :class:`RunRecord` s, JSON columns decoded by the same codec.
The statement is written out (SQLAlchemy's import alone was half of what remained); a test holds it to
the ``runs`` table and to ``RunStore.list_runs``'s answers.

It is a shortcut, never a second set of rules: whenever it cannot answer exactly as the Database would, it
answers None and the caller opens the Database as before, which migrates a new or older schema, waits for
locks and says clearly what is wrong. That is the case for PostgreSQL, any URL but a plain
``sqlite:///path`` (options, an in-memory database), a file that does not exist yet, a schema that is
not at head, and any error SQLite raises while reading.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from typing import Any
from urllib.parse import unquote

from . import jsoncodec
from .records import RunRecord
from .schema_head import is_current_sqlite3

log = logging.getLogger("threadflow.storage")

#: The ``runs`` table's columns, in tables.py's order, and those stored as JSON (tests/storage hold both to it).
RUN_COLUMNS = (
    "id", "workflow_id", "status", "input", "output", "error", "thread_id", "resource_id", "started_by",
    "rerun_of", "rerun_from", "owner", "lease_expires_at", "ready_at", "waiting_for", "created_at",
    "updated_at", "finished_at", "workflow_version", "workflow_fingerprint", "stranded_at", "recoveries",
)
JSON_COLUMNS = frozenset({"input", "output", "error"})

#: ``sqlite:///path`` as SQLAlchemy reads it (the path percent-decoded), for the drivers threadflow uses;
#: anything else (a query string, another driver) is left to the Database.
_PLAIN_SQLITE_URL = re.compile(r"sqlite(?:\+aiosqlite|\+pysqlite)?:///([^?]+)")


def sqlite_file(url: str) -> str | None:
    """The absolute path of the SQLite file a plain ``sqlite:///path`` URL names, else None."""
    match = _PLAIN_SQLITE_URL.fullmatch(url)
    if match is None:
        return None
    database = unquote(match.group(1))
    return None if database == ":memory:" else os.path.abspath(database)  # (as SQLAlchemy's pysqlite opens it)


def listing_sql(*, status: str | None, workflow_id: str | None) -> str:
    """``RunStore.list_runs``'s statement: newest first, ties by id; parameters: the filters given, then the limit."""
    where = [f"{column} = ?" for column, value in (("status", status), ("workflow_id", workflow_id)) if value]
    return (f"SELECT {', '.join(RUN_COLUMNS)} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY created_at DESC, id LIMIT ?")


def list_runs_readonly(
    url: str, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50
) -> list[RunRecord] | None:
    """The runs ``RunStore.list_runs`` would return, read without opening a Database; None when this
    shortcut does not apply (see the module docstring) and the caller must open one."""
    path = sqlite_file(url)
    if path is None or not os.path.isfile(path):
        return None  # not a file we may read as it is: the Database creates, migrates or refuses it
    parameters: list[Any] = [value for value in (status, workflow_id) if value] + [limit]
    try:
        conn = sqlite3.connect(path, isolation_level=None)  # (autocommit: a SELECT takes no write lock)
        try:
            if not is_current_sqlite3(conn):
                return None
            rows = conn.execute(listing_sql(status=status, workflow_id=workflow_id), parameters).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:  # locked, unreadable, not a database...: the Database retries or explains it
        log.debug("listing runs without opening the database failed (%s); opening it", exc)
        return None
    return [RunRecord.model_validate({
        column: jsoncodec.loads(value) if column in JSON_COLUMNS and value is not None else value
        for column, value in zip(RUN_COLUMNS, row, strict=True)
    }) for row in rows]
