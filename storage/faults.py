"""Which database errors are worth waiting out, and how to describe any of them without SQL text.

A transient error says nothing about the statement: the server went away (a restart, a failover, a proxy
dropping connections, ``pg_terminate_backend``), another process held SQLite's lock past the busy timeout,
the disk filled up or failed to write. The same statement can succeed once the database is usable again,
so the commit queue retries it (see ``database.py``) instead of failing the run that wrote it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, PendingRollbackError, StatementError

#: SQLSTATE classes and codes (PostgreSQL) after which the same statement may well succeed.
_TRANSIENT_SQLSTATES = {
    "08": "connection",  # connection exception (the class)
    "57P01": "connection",  # admin_shutdown (a restart, pg_terminate_backend)
    "57P02": "connection",  # crash_shutdown
    "57P03": "connection",  # cannot_connect_now (starting up, or in recovery)
    "53": "resources",  # insufficient_resources: disk full, out of memory, too many connections
    "40001": "conflict",  # serialization_failure
    "40P01": "conflict",  # deadlock_detected
    "25006": "connection",  # read_only_sql_transaction: connected to a standby during a failover
    # The statement was cancelled and rolled back, nothing of it done: a ``lock_timeout`` (another session held a
    # lock a moment too long), a ``statement_timeout``, a DBA's ``pg_cancel_backend``. Running it again is safe.
    "55P03": "locked",  # lock_not_available
    "57014": "conflict",  # query_canceled
}
#: SQLSTATE classes (PostgreSQL) of a statement refused for its data: 22 data exception (a value out of range, a NUL
#: in text, a value of the wrong type), 23 integrity constraint violation.
_DATA_SQLSTATE_CLASSES = ("22", "23")
#: SQLite result codes (``sqlite_errorname``) after which the same statement may well succeed.
_TRANSIENT_SQLITE = {
    "SQLITE_BUSY": "locked",
    "SQLITE_LOCKED": "locked",
    "SQLITE_FULL": "disk_full",
    "SQLITE_IOERR": "io_error",
    "SQLITE_PROTOCOL": "locked",
}
#: Class names of asyncpg's errors that mean the connection is gone (matched by name: no import needed).
#: (InternalClientError: a connection left mid-operation by a dropped socket, "another operation is in progress".)
_CONNECTION_ERRORS = {"ConnectionDoesNotExistError", "ConnectionFailureError", "PostgresConnectionError",
                      "InterfaceError", "ConnectionRejectionError", "TooManyConnectionsError", "InternalClientError"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error, the driver's error inside it, and their causes (each once)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)
        todo.extend([orig if isinstance(orig, BaseException) else None, item.__cause__, item.__context__])


def transient_kind(exc: BaseException) -> str | None:
    """``"connection"``, ``"locked"``, ``"disk_full"``, ``"io_error"``, ``"resources"`` or ``"conflict"`` when
    retrying may succeed; None for errors that would fail again (a bad statement, a constraint, bad data)."""
    for item in _chain(exc):
        if isinstance(item, PendingRollbackError):
            return "connection"  # a connection left mid-transaction: a fresh one fixes it
        if isinstance(item, DBAPIError) and item.connection_invalidated:
            return "connection"
        if isinstance(item, sqlite3.Error):
            name = str(getattr(item, "sqlite_errorname", ""))
            for prefix, kind in _TRANSIENT_SQLITE.items():
                if name.startswith(prefix):
                    return kind
            text = str(item)
            if "database is locked" in text:
                return "locked"
            if "database or disk is full" in text:
                return "disk_full"
            if "disk I/O error" in text:
                return "io_error"
            continue
        code = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(code, str) and code:
            by_code = _TRANSIENT_SQLSTATES.get(code) or _TRANSIENT_SQLSTATES.get(code[:2])
            if by_code is not None:
                return by_code
            continue
        if type(item).__name__ in _CONNECTION_ERRORS and type(item).__module__.startswith("asyncpg"):
            return "connection"
        if isinstance(item, ConnectionError | TimeoutError | EOFError):
            return "connection"
        if isinstance(item, OSError) and not isinstance(item, FileNotFoundError | PermissionError):
            return "connection"
    return None


def connection_dropped(exc: BaseException) -> bool:
    """The connection itself is gone (closed by the server or the network), not merely slow: a statement that timed
    out on a live connection is not this (its function may have run; running it again is not the same)."""
    return transient_kind(exc) == "connection" and not any(isinstance(item, TimeoutError) for item in _chain(exc))


def refused_data(exc: BaseException) -> bool:
    """The database refused a statement for its data (a value or type it cannot store), not for being unwell.

    Only errors that say so: PostgreSQL's SQLSTATE classes 22 and 23, SQLite's data and integrity errors and its
    refusal to bind a value, or a value SQLAlchemy could not turn into a parameter at all. Anything else the
    database answered (a missing table, a permission, a timeout not retried) is about the database, not the data.
    """
    if transient_kind(exc) is not None:
        return False
    for item in _chain(exc):
        if isinstance(item, sqlite3.DataError | sqlite3.IntegrityError):
            return True
        if isinstance(item, sqlite3.Error):
            return isinstance(item, sqlite3.InterfaceError | sqlite3.ProgrammingError) and "binding" in str(item)
        code = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(code, str) and code:
            return code[:2] in _DATA_SQLSTATE_CLASSES
    # No driver error: SQLAlchemy failed to make a parameter of a value (its JSON or type processing) before sending.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def describe(exc: BaseException) -> str:
    """One line about a database error for people and logs: the driver's message, never the SQL."""
    inner: BaseException = exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        inner = exc.orig
        cause = inner.__cause__ or inner.__context__
        # SQLAlchemy's asyncpg adapter wraps the driver's error; the driver's own message is the clear one.
        if cause is not None and type(cause).__module__.startswith("asyncpg"):
            inner = cause
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    if "[SQL:" in text:
        text = text.split("[SQL:")[0].strip()
    name = type(inner).__name__
    return f"{name}: {text}" if text else name
