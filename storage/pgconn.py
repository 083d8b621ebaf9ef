"""The connection PostgreSQL database functions run on: SQLAlchemy as usual, plus the raw asyncpg connection.

A database function (``async def fn(conn)``) on PostgreSQL gets a :class:`PgConnection`. ``execute``,
``exec_driver_sql`` and ``run_sync`` go through SQLAlchemy exactly as on an ``AsyncConnection``. A hot
statement written for PostgreSQL alone (the step commit, see ``pg_writes.py``) may instead use
:meth:`PgConnection.fetchval`: it runs on the asyncpg connection underneath, as a prepared statement that
asyncpg keeps per connection, without SQLAlchemy's execution layer (its compile cache lookup, execution
context and result objects cost more CPU than the statement costs the server). Errors are raised as
SQLAlchemy raises them (``DBAPIError`` around the driver's error), so retries and "the database refused
this value" are told apart exactly as for statements that went through SQLAlchemy.

The commit queue's writer connection is in autocommit mode and its transactions are begun and ended by
the backend (``AsyncBackend``): a batch of one function marked :func:`autocommit_safe` is sent without
``BEGIN``/``COMMIT``, so its one statement is its own transaction, one round trip instead of three.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

F = TypeVar("F", bound=Callable[..., Any])

_AUTOCOMMIT_SAFE = "__threadflow_autocommit_safe__"


def autocommit_safe(fn: F) -> F:
    """Mark a database function whose statements may each commit on their own (no transaction around them).

    True of a function whose first statement does all its writing atomically (a single data-modifying
    statement) and whose later statements, on rare paths, only read or repeat idempotent checks. Alone in
    a batch, it is sent without ``BEGIN``/``COMMIT``; in a batch with others it shares their transaction.
    """
    setattr(fn, _AUTOCOMMIT_SAFE, True)
    return fn


def is_autocommit_safe(fn: Callable[..., Any]) -> bool:
    return bool(getattr(fn, _AUTOCOMMIT_SAFE, False))


class PgConnection:
    """Looks like an AsyncConnection to database functions; ``raw`` is the asyncpg connection beneath it."""

    def __init__(self, conn: AsyncConnection, raw: Any, adapted: Any) -> None:
        self.conn = conn
        #: asyncpg's Connection (its statement cache makes a repeated statement one round trip)
        self.raw = raw
        #: SQLAlchemy's adapter around it (it translates asyncpg's errors into DBAPI errors)
        self._adapted = adapted

    @property
    def dialect(self) -> Any:
        return self.conn.dialect

    async def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        return await self.conn.execute(statement, parameters, **kwargs)

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **kwargs: Any) -> Any:
        return await self.conn.exec_driver_sql(statement, parameters, **kwargs)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.conn.run_sync(fn, *args, **kwargs)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of ``sql`` run on the asyncpg connection (``$n`` parameters)."""
        try:
            return await self.raw.fetchval(sql, *args)
        except Exception as exc:
            raise translate(self.conn.dialect, self._adapted, sql, args, exc) from exc


def translate(dialect: Any, adapted: Any, sql: str, args: Any, exc: Exception) -> Exception:
    """The error SQLAlchemy would have raised for ``exc`` (the driver's error, or a value it could not send)."""
    try:
        adapted._handle_exception(exc)  # raises the DBAPI error SQLAlchemy's asyncpg adapter maps it to
    except Exception as mapped:
        orig = mapped
    else:  # pragma: no cover - _handle_exception always raises
        orig = exc
    base = dialect.loaded_dbapi.Error
    invalidated = isinstance(orig, base) and dialect.is_disconnect(orig, adapted, None)
    return DBAPIError.instance(sql, args, orig, base, connection_invalidated=invalidated, dialect=dialect)
