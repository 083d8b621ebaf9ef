"""How a batch of database functions reaches the database: the two dialects' hot paths.

Database functions are ``async def fn(conn)`` that await only ``conn.execute`` (and ``exec_driver_sql`` /
``run_sync``). On PostgreSQL they run on an asyncpg connection as written. On SQLite the cost is not the
disk but the thread hops: aiosqlite pays about three per statement, so recording one step took 14 hops. Here
SQLite runs on plain pysqlite connections owned by threads: the whole batch of functions, each driven to
completion on a connection whose ``execute`` never suspends, crosses into the writer thread once. That is
one hop per commit, as the design asks, whatever the number of statements in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from . import jsoncodec
from .errors import DatabaseSettingError
from .failure_log import FailureLog
from .faults import connection_dropped, transient_kind
from .pgconn import PgConnection, is_autocommit_safe
from .prepared import Plan, PlannedWrite, PreparedResult, plan_for
from .urls import postgres_url_settings

DbFn = Callable[[AsyncConnection], Awaitable[Any]]

log = logging.getLogger("threadflow.storage")

#: WAL pages between two checkpoints: about 8 MB at PAGE_SIZE, four times SQLite's own default (``wal_autocheckpoint=1000``;
#: 2,000 with 4 KB pages before: with 2 KB pages, 4,000 keeps the bytes and saves ~4 us a step one run at a time).
#: A checkpoint costs about 3 ms however small (it syncs the database file) plus about 6 us a page, and
#: holds the write lock meanwhile: fewer, larger ones cost less, and fewer commits wait behind one.
CHECKPOINT_PAGES = 4000
#: The page size of a new SQLite file. A step's commit appends each page it changes to the WAL (four: the result,
#: its key, the events, their index), so smaller pages are less to copy and checksum: one run at a time, a step
#: took ~6 us less (~7%) with 2,048 than with SQLite's default 4,096 (1,024 gained no more; it would split a long
#: message or step output over overflow pages). A file created before keeps its own (WAL mode cannot change it).
PAGE_SIZE = 2048
#: How many WAL pages a commit of the engine's small writes adds, measured on its hot path: a commit
#: rewrites the pages it touched (about 4 for one step: a table and an index leaf or two), and each write
#: in it adds about 0.6 more (100 runs' steps in one commit add about 30 pages, not 400). Counting pages
#: rather than writes keeps checkpoints as rare for one run at a time as for 100 runs sharing commits.
PAGES_PER_COMMIT = 4.0
PAGES_PER_WRITE = 0.6
#: How every engine reads and writes JSON columns (orjson; see jsoncodec.py).
JSON_CODEC: dict[str, Any] = {"json_serializer": jsoncodec.dumps, "json_deserializer": jsoncodec.loads}
#: Seconds to wait for a PostgreSQL server to accept a connection.
CONNECT_TIMEOUT = 10.0
#: Seconds a PostgreSQL connection's graceful close waits for the server to end it; then it is dropped.
CLOSE_TIMEOUT = 0.25
#: (succeeded, result or exception) for each function of a batch, and how many transactions committed.
Outcomes = tuple[list[tuple[bool, Any]], int]


class Backend:
    async def migrate(self) -> None:
        raise NotImplementedError

    async def read(self, fn: DbFn, *, inline: bool = False) -> Any:
        """Run ``fn`` on a reader connection; ``inline``: a small, bounded read the backend may run in place."""
        raise NotImplementedError

    def commit_now(self, fns: Sequence[DbFn]) -> Outcomes | None:
        """The batch committed at once on the calling thread, or None: the queue runs it (the default)."""
        return None

    #: whether ``commit_planned_now`` can commit at all (the default cannot)
    plans_now = False

    def commit_planned_now(self, write: PlannedWrite) -> bool:
        """``write`` committed at once on the calling thread: True; False if nothing was committed (the default)."""
        return False

    async def run_batch(self, fns: Sequence[DbFn], *, inline: bool = False) -> Outcomes:
        """Run ``fns`` in one transaction; if any raises, roll back and give each its own transaction.

        ``inline``: the caller is the commit queue, and a backend may run a small batch on its own thread.
        """
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError


class AsyncBackend(Backend):
    """PostgreSQL through asyncpg: network round trips, not thread hops, are the cost.

    The commit queue writes on one connection kept open (as SQLite's writer is), in autocommit mode, its
    transactions begun and ended here: no pool checkout and no pre-ping per batch (that ping alone was
    three round trips: ``BEGIN``, ``;``, ``ROLLBACK``). A batch is ``BEGIN``, its functions, ``COMMIT``; a
    batch of one function marked :func:`~storage.pgconn.autocommit_safe` (a step's commit) is sent as it
    is, its one statement its own transaction. After an error that leaves the connection in doubt (it
    dropped, or a ``ROLLBACK``/``COMMIT`` failed) it is discarded, and the next batch opens a new one; the
    queue's retries see the error exactly as before. A write that comes while the kept connection is busy
    (maintenance bypassing the queue) takes a pooled connection, as every write did before.
    """

    def __init__(self, url: str, echo: bool) -> None:
        # A server that does not answer is an error after CONNECT_TIMEOUT, not after asyncpg's default minute.
        # A statement the server does not answer within the command timeout (the connection went silent: a failover
        # whose old primary died without closing it) fails with TimeoutError, which the queue and reads retry on a new
        # connection, instead of waiting for the kernel's TCP timeout (about 15 minutes on Linux).
        url, server_settings = postgres_url_settings(url)
        timeout = command_timeout()
        args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT, "command_timeout": timeout,
                                "connection_class": _briefly_closing_connection()}
        if server_settings:
            args["server_settings"] = server_settings
        self._url, self._connect_args = url, args
        self.writer: AsyncEngine = create_async_engine(url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True, **JSON_CODEC,
                                                       connect_args=args)
        # Reads run in autocommit: under READ COMMITTED every statement takes its own snapshot anyway, so a
        # BEGIN/ROLLBACK around a read bought nothing but two round trips. No pre-ping either (three more:
        # BEGIN, ``;``, ROLLBACK): a pooled connection the server dropped fails its read once, SQLAlchemy
        # then discards the pool's connections, and Database.read retries the read (a transient error).
        self.reader: AsyncEngine = create_async_engine(url, echo=echo, pool_size=5, max_overflow=10, isolation_level="AUTOCOMMIT",
                                                       **JSON_CODEC, connect_args=args)
        for engine in (self.writer, self.reader):
            event.listen(engine.sync_engine, "handle_error", _timeout_invalidates_the_pool)
        self._kept: AsyncConnection | None = None
        self._kept_lock = asyncio.Lock()
        # The kept connection's transactions end themselves on the server if this process stops talking to it
        # mid-batch (the network went silent, not the server): its session would hold the rows it locked until the
        # server's TCP keepalive noticed (hours), and the batch retried on a new connection would wait for them, time
        # out, and again. (Set once per connection: no cost per batch.)
        self._session_setup = None if timeout is None else (
            f"SET idle_in_transaction_session_timeout = {max(1, round(timeout * 1000))}")

    async def migrate(self) -> None:
        from .schema_head import is_current

        async with self.writer.connect() as conn:
            if await is_current(conn):  # the usual case: no alembic import, no advisory lock
                return
        from .migrations import upgrade_to_head

        # Without the command timeout: a migration may rewrite a large table, or wait for another process's.
        migrator = create_async_engine(self._url, poolclass=NullPool, **JSON_CODEC,
                                       connect_args={**self._connect_args, "command_timeout": None})
        try:
            await upgrade_to_head(migrator, "postgresql")
        finally:
            await migrator.dispose()

    async def read(self, fn: DbFn, *, inline: bool = False) -> Any:
        async with self.reader.connect() as conn:
            return await fn(conn)

    async def run_batch(self, fns: Sequence[DbFn], *, inline: bool = False) -> Outcomes:
        if self._kept_lock.locked():
            return await self._pooled_batch(fns)
        async with self._kept_lock:
            return await _together_else_each(fns, self._kept_transaction)

    async def _kept_connection(self) -> PgConnection:
        """The commit queue's connection, opened once and kept (callers hold ``_kept_lock``)."""
        if self._kept is None:
            conn = await self.writer.connect()
            try:
                # The backend sends BEGIN/COMMIT itself; SQLAlchemy's adapter must not begin one of its own.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                if self._session_setup is not None:
                    await conn.exec_driver_sql(self._session_setup)
            except BaseException:
                await conn.close()
                raise
            self._kept = conn
        adapted: Any = self._kept.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
        return PgConnection(self._kept, adapted.driver_connection, adapted)

    async def _kept_transaction(self, fns: Sequence[DbFn]) -> list[Any]:
        """The functions in one transaction on the kept connection (or none, for one autocommit-safe function)."""
        pg = await self._kept_connection()
        conn: Any = pg  # database functions are typed for AsyncConnection; PgConnection looks like one
        bare = len(fns) == 1 and is_autocommit_safe(fns[0])
        try:
            if bare:
                return [await fns[0](conn)]
            await pg.raw.execute("BEGIN")
            try:
                results = [await fn(conn) for fn in fns]
            except Exception as exc:
                # (Not after a timeout: a ROLLBACK would wait as long again for a server that does not answer.)
                if not pg.raw.is_closed() and not isinstance(exc, TimeoutError):
                    try:
                        await pg.raw.execute("ROLLBACK")
                    except Exception as failed:  # the connection is in doubt: discarded below
                        log.debug("rolling back a failed batch failed: %s", type(failed).__name__)
                raise
            await pg.raw.execute("COMMIT")
            return results
        except BaseException as exc:
            # Cancelled mid-statement, dropped, or left in a transaction nobody can end: not reused.
            if (isinstance(exc, asyncio.CancelledError) or transient_kind(exc) == "connection" or pg.raw.is_closed()
                    or pg.raw.is_in_transaction()):
                await self._discard_kept()
            raise
        finally:
            if self._kept is not None and self._kept.in_transaction():
                await self._kept.commit()  # SQLAlchemy's own bookkeeping only: the connection is in autocommit

    async def _discard_kept(self) -> None:
        """Drop the kept connection (broken, or in a transaction nobody can end): the next batch opens another."""
        conn, self._kept = self._kept, None
        if conn is None:
            return
        try:
            await conn.invalidate()
            await conn.close()
        except Exception as exc:  # it is gone either way
            log.debug("closing a broken writer connection failed: %s", type(exc).__name__)

    async def _pooled_batch(self, fns: Sequence[DbFn]) -> Outcomes:
        return await _together_else_each(fns, self._pooled_transaction)

    async def _pooled_transaction(self, fns: Sequence[DbFn]) -> list[Any]:
        async with self.writer.begin() as conn:
            return [await fn(conn) for fn in fns]

    async def dispose(self) -> None:
        async with self._kept_lock:
            if self._kept is not None:
                conn, self._kept = self._kept, None
                try:
                    await conn.close()
                except Exception as exc:
                    log.debug("closing the writer connection failed: %s", type(exc).__name__)
        await asyncio.gather(self.writer.dispose(), self.reader.dispose())


def _timeout_invalidates_the_pool(context: ExceptionContext) -> None:
    """A statement unanswered within the command timeout: SQLAlchemy drops its connection (as after any timeout) and
    here also replaces every connection the pool opened before it, on its next checkout. After a failover that left
    them silent, each would otherwise cost a read the whole command timeout before it failed."""
    if isinstance(context.original_exception, TimeoutError):
        context.invalidate_pool_on_disconnect = True


@functools.cache
def _briefly_closing_connection() -> type:
    """asyncpg's connection, closed gracefully within CLOSE_TIMEOUT or else dropped (asyncpg would wait for the
    command timeout): pooled connections are closed one after another, and after a failover that left them silent,
    waiting that long for each would hold up a shutdown for minutes."""
    import asyncpg

    class BrieflyClosingConnection(asyncpg.Connection):  # type: ignore[misc]
        async def close(self, *, timeout: float | None = None) -> None:
            try:
                await super().close(timeout=CLOSE_TIMEOUT if timeout is None else min(timeout, CLOSE_TIMEOUT))
            except TimeoutError:  # asyncpg dropped it (the server did not answer the goodbye)
                log.debug("a PostgreSQL connection did not close within %g s; dropped", CLOSE_TIMEOUT)

    return BrieflyClosingConnection


async def _together_else_each(fns: Sequence[DbFn], transaction: Callable[[Sequence[DbFn]], Awaitable[list[Any]]]) -> Outcomes:
    """``fns`` in one transaction; if it fails, each in a transaction of its own, so one failure fails only its writer.

    A function counts as committed only once its own transaction's COMMIT went through (a COMMIT that fails, the
    connection dropped, is that function's failure).
    """
    try:
        return [(True, r) for r in await transaction(fns)], 1
    except Exception as exc:
        if len(fns) == 1:
            return [(False, exc)], 0
    outcomes: list[tuple[bool, Any]] = []
    commits = 0
    for fn in fns:
        try:
            [value] = await transaction([fn])
            outcomes.append((True, value))
            commits += 1
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes, commits


class SyncConnection:
    """Looks like an AsyncConnection to database functions, but executes at once on a sync connection.

    Statements marked :func:`~storage.prepared.prepared` skip SQLAlchemy's execution layer and run on the
    DBAPI cursor (inside the same transaction); everything else goes through SQLAlchemy as usual.

    With ``defer`` (a batch's write transaction), rows of a deferrable INSERT (the events outbox) are held
    back and executed as one ``executemany`` for the whole batch: before any statement that touches the
    same table, before any statement this module cannot see into, and at the latest by :meth:`flush`
    before the commit. Every writer's events still commit in its transaction, in the order they were
    added; a hundred runs' steps in one commit cost one events statement instead of a hundred.
    """

    def __init__(self, conn: Connection, *, defer: bool = False, cursor: Any = None) -> None:
        self.sync_connection = conn
        #: the DBAPI cursor prepared statements run on (made on first use if not given)
        self._cursor: Any = cursor
        self._defer = defer
        self._pending: tuple[Plan, list[tuple[Any, ...]]] | None = None

    @property
    def dialect(self) -> Any:
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        if not kwargs:
            plan = plan_for(statement, parameters, self.sync_connection.dialect)
            if plan is not None:
                pending = self._pending
                if pending is not None and plan is not pending[0] and (plan.deferrable or plan.tables & pending[0].tables):
                    self.flush()
                if self._defer and plan.deferrable:
                    rows = plan.rows(parameters)
                    if self._pending is None:
                        self._pending = (plan, rows)
                    else:
                        self._pending[1].extend(rows)
                    return PreparedResult(len(rows))
                return plan.run(self._raw_cursor(), parameters)
        self.flush()
        return self.sync_connection.execute(statement, parameters, **kwargs)

    def run_plan(self, plan: Plan, values: tuple[Any, ...]) -> int:
        """Execute a plan the caller resolved once (``plan_for``) with its positional values; the row count.

        What ``execute`` does for a prepared statement, without looking the plan up or binding a dict on every
        call: the engine's few hot statements (a step's result and events) resolve their plans once per store.
        """
        pending = self._pending
        if pending is not None and (plan is pending[0] or plan.deferrable or plan.tables & pending[0].tables):
            self.flush()  # rows held back go first (the same plan's included: its rows keep their order)
        cursor = self._cursor if self._cursor is not None else self._raw_cursor()
        cursor.execute(plan.sql, values)
        return int(cursor.rowcount)

    def add_rows(self, plan: Plan, rows: list[tuple[Any, ...]]) -> None:
        """Rows of a resolved plan's INSERT, positional: held for the batch's one ``executemany`` when the plan is
        deferrable (see the class docstring), else executed now."""
        if not rows:
            return
        pending = self._pending
        if pending is not None and plan is not pending[0]:
            self.flush()
            pending = None
        if self._defer and plan.deferrable:
            if pending is None:
                self._pending = (plan, list(rows))
            else:
                pending[1].extend(rows)
            return
        (self._cursor if self._cursor is not None else self._raw_cursor()).executemany(plan.sql, rows)

    def flush(self) -> None:
        """Execute the rows held back so far (the transaction goes on)."""
        if self._pending is None:
            return
        (plan, rows), self._pending = self._pending, None
        self._raw_cursor().executemany(plan.sql, rows)

    def _raw_cursor(self) -> Any:
        if self._cursor is None:
            self._cursor = self.sync_connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        return self._cursor

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **kwargs: Any) -> Any:
        self.flush()
        return self.sync_connection.exec_driver_sql(statement, parameters, **kwargs)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return fn(self.sync_connection, *args, **kwargs)


def drive(fn: DbFn, conn: Connection | SyncConnection) -> Any:
    """Run a database function to completion without an event loop (it never really suspends here)."""
    coro = fn(conn if isinstance(conn, SyncConnection) else SyncConnection(conn))  # type: ignore[arg-type]
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration as stop:
        return stop.value
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError(
        f"Database function {getattr(fn, '__qualname__', fn)!r} awaited something other than the connection; "
        "database functions may only await conn.execute / exec_driver_sql / run_sync."
    )


class ThreadBackend(Backend):
    """SQLite on pysqlite connections owned by threads: one writer thread, a few reader threads."""

    def __init__(self, url: str, echo: bool) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        database = sync_url.database
        args = {"check_same_thread": False}
        if not database or database == ":memory:":
            # One connection, one thread: separate connections would each see their own empty database.
            self.writer = create_engine(sync_url, echo=echo, poolclass=StaticPool, connect_args=args, **JSON_CODEC)
            self.reader = self.writer
            self.read_threads = self.write_thread = ThreadPoolExecutor(1, thread_name_prefix="threadflow-db")
        else:
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_engine(sync_url, echo=echo, pool_size=1, max_overflow=0, connect_args=args, **JSON_CODEC)
            # Four reader threads and the event loop's own reader connection.
            self.reader = create_engine(sync_url, echo=echo, pool_size=5, max_overflow=0, connect_args=args, **JSON_CODEC)
            self.write_thread = ThreadPoolExecutor(1, thread_name_prefix="threadflow-db-writer")
            self.read_threads = ThreadPoolExecutor(4, thread_name_prefix="threadflow-db-reader")
        self._local = threading.local()
        self._opened: list[Connection] = []
        self._opened_lock = threading.Lock()
        self._writer_conn: Connection | None = None
        #: The writer connection's DBAPI connection and a cursor on it, kept with it (one of each per commit before).
        self._writer_raw: tuple[Any, Any] = (None, None)
        self._write_lock = threading.Lock()
        self._busy_ms = busy_timeout_ms()
        self._wal_pages = 0.0
        self._checkpointing = False
        #: The file (None in memory) and the checkpoints' own connection (see _maybe_checkpoint).
        # (A ``file:`` URI or a URL with options is left to SQLAlchemy: its checkpoints all run under the lock.)
        plain = database is not None and database not in ("", ":memory:") and not database.startswith("file:")
        self._path: str | None = str(Path(database).expanduser().resolve()) if plain and database and not sync_url.query else None
        self._disposed = False
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_failures = FailureLog(log, "WAL checkpoint")
        # In memory, reads and writes share one connection and one thread: writes stay in that thread too.
        self._inline = self.reader is not self.writer
        self.plans_now = self._inline
        configure_sqlite(self.writer, begin="BEGIN IMMEDIATE")
        if self.reader is not self.writer:
            configure_sqlite(self.reader, begin=None)

    async def _in(self, pool: ThreadPoolExecutor, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def migrate(self) -> None:
        from .schema_head import is_current_sync

        def run() -> None:
            with self.writer.begin() as conn:
                if is_current_sync(conn):  # the usual case: alembic is not even imported
                    return
                from .migrations import upgrade_sync

                upgrade_sync(conn)

        await self._in(self.write_thread, run)

    def _connection(self, engine: Engine) -> Connection:
        """This thread's connection to ``engine``, opened once and kept: a checkout costs more than a statement."""
        conns: dict[int, Connection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(id(engine))
        if conn is None or conn.closed:
            conn = conns[id(engine)] = engine.connect()
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    async def read(self, fn: DbFn, *, inline: bool = False) -> Any:
        """Run ``fn`` in a reader thread or, ``inline``, on the event loop's own reader connection.

        A small read (one run's rows) costs less than the hop, and reader threads running Python beside
        the loop make every SQLite call on the loop wait for the GIL. SQLite in WAL mode does not block
        readers; in the rare case it reports busy, the read is repeated in a reader thread, which waits.
        """
        if inline and self._inline:
            conn = self._connection(self.reader)
            if not conn.info.get("threadflow_nowait"):
                conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
                conn.info["threadflow_nowait"] = True
            try:
                return drive(fn, conn)
            except Exception as exc:
                if not _is_busy(exc):
                    raise
            finally:
                conn.rollback()  # end the read transaction: the next read sees newer commits

        def run() -> Any:
            conn = self._connection(self.reader)
            try:
                return drive(fn, conn)
            finally:
                conn.rollback()

        return await self._in(self.read_threads, run)

    async def run_batch(self, fns: Sequence[DbFn], *, inline: bool = False) -> Outcomes:
        """Run the batch; ``inline`` (the commit queue) tries it on the event loop's thread first.

        A small batch costs less than the two thread hops it would take to run it elsewhere, and running
        it here avoids handing the GIL back and forth with the writer thread after every statement. It is
        only tried when the write lock is free at once (no waiting on the loop): if another process holds
        SQLite's lock, or maintenance holds the connection, or a function fails, the batch runs in the
        writer thread instead, which waits up to the busy timeout as before.
        """
        outcome: Outcomes | None = None
        if inline and self._inline and self._write_lock.acquire(blocking=False):
            try:
                outcome = self._try_inline(fns)
            finally:
                self._write_lock.release()
        if outcome is None:
            outcome = await self._in(self.write_thread, lambda: self._batch(fns))
        if self._inline:
            # The engine's small writes add a few pages each (a batch that failed as a whole was committed
            # again one function at a time: each of those commits counts); any other batch may be a bulk
            # insert or delete, so a checkpoint follows it.
            commits = max(1, outcome[1])
            self._maybe_checkpoint(PAGES_PER_COMMIT * commits + PAGES_PER_WRITE * len(fns) if inline else CHECKPOINT_PAGES)
        return outcome

    def commit_now(self, fns: Sequence[DbFn]) -> Outcomes | None:
        """The batch committed at once on the calling (event loop's) thread, or None if it must be queued.

        Only when the inline path is open and the write lock is free without waiting; a batch that fails in
        any way commits nothing here and returns None, for the queue to run (and sort out) as usual.
        """
        if not self._inline or not self._write_lock.acquire(blocking=False):
            return None
        try:
            outcome = self._try_inline(fns)
        finally:
            self._write_lock.release()
        if outcome is not None:
            self._maybe_checkpoint(PAGES_PER_COMMIT + PAGES_PER_WRITE * len(fns))
        return outcome

    def commit_planned_now(self, write: PlannedWrite) -> bool:
        """``write`` committed at once on the calling (event loop's) thread: True. False if nothing was committed: the
        writer is busy (this process's write lock) or SQLite's lock is held by another connection, a fenced statement
        changed no row (rolled back), or any other error (rolled back); the caller then writes it as a database
        function, whose path sorts each case out (waits, LeaseLost, outages). A KeyboardInterrupt or SystemExit on
        the way rolls back and goes on up.

        The same transaction ``commit_now`` makes of a function's statements, run straight on the kept cursor: one
        run at a time, driving the function (its coroutine, the SyncConnection, the plan look-ups, the events held
        back for one ``executemany``) cost about 4 us of a 50 us step.
        """
        if not self._inline or not self._write_lock.acquire(blocking=False):
            return False
        try:
            try:
                conn = self._writer_connection()
            except Exception:
                return False
            cursor = self._writer_raw[1]
            try:
                cursor.execute("BEGIN IMMEDIATE")
                for plan, values in write.fenced:
                    cursor.execute(plan.sql, values)
                    if cursor.rowcount != 1:
                        cursor.execute("ROLLBACK")
                        return False
                for plan, rows in write.then:
                    if rows:
                        cursor.executemany(plan.sql, rows)
                cursor.execute("COMMIT")
            except BaseException as exc:
                _discard_transaction(conn)
                if not isinstance(exc, Exception):
                    raise
                return False
        finally:
            self._write_lock.release()
        self._maybe_checkpoint(PAGES_PER_COMMIT + PAGES_PER_WRITE)
        return True

    def _writer_connection(self) -> Connection:
        """The one writer connection, kept open (callers hold ``_write_lock``).

        Its busy timeout is 0 at rest (the writer thread raises it while it waits), and it never checkpoints
        the WAL on commit: a checkpoint syncs the database file, which would stall the commit that triggers
        it (on the event loop's thread). The writer thread checkpoints instead, see ``_maybe_checkpoint``.
        """
        if self._writer_conn is not None and self._writer_conn.invalidated:
            self._writer_conn.close()  # see _discard_transaction: replaced, with this method's pragmas
        if self._writer_conn is None or self._writer_conn.closed:
            self._writer_conn = self.writer.connect()
        raw: Any = self._writer_conn.connection.dbapi_connection
        if raw is not self._writer_raw[0]:
            # A new DBAPI connection: ours just opened, or one SQLAlchemy put in place of an invalidated one on its own
            # (it reconnects on the next use). Either way it gets this connection's pragmas and a cursor of its own.
            raw.execute("PRAGMA busy_timeout=0")
            if self._inline:
                raw.execute("PRAGMA wal_autocheckpoint=0")
            self._writer_raw = (raw, raw.cursor())
        return self._writer_conn

    def _maybe_checkpoint(self, pages: float) -> None:
        """Every CHECKPOINT_PAGES pages (estimated), a checkpoint in the writer thread, off the event loop.

        Two passes. The first copies the WAL into the database while commits go on (SQLite lets a writer
        append to the WAL while a checkpoint copies earlier frames); it is most of the work, about 4 us a page
        (10 ms for 2,000), and the engine's commits no longer wait for it. The second holds the write lock and
        copies only what was committed meanwhile, so it completes and the next commit starts the WAL over
        instead of growing it: under a steady stream of commits a checkpoint without the lock never catches up.
        Commits tried during the second pass find the lock taken and queue behind it in the writer thread; the
        event loop never waits.
        """
        self._wal_pages += pages
        if self._wal_pages < CHECKPOINT_PAGES or self._checkpointing:
            return
        self._wal_pages = 0.0
        self._checkpointing = True

        def checkpoint() -> None:
            try:
                if self._disposed:
                    return  # queued behind a last write of a closing database: its connections are closed
                try:
                    checkpointer = self._checkpoint_connection()
                    if checkpointer is not None:
                        checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception as exc:  # the pass under the lock below does all the work this time
                    log.debug("WAL checkpoint beside the commits failed: %s", exc)
                    self._close_checkpoint_connection()
                with self._write_lock:
                    raw: Any = self._writer_connection().connection.dbapi_connection
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as exc:  # a later checkpoint tries again; the WAL only grows meanwhile
                self._checkpoint_failures.failed(exc)
            else:
                self._checkpoint_failures.worked()
            finally:
                self._checkpointing = False

        self.write_thread.submit(checkpoint)

    def _checkpoint_connection(self) -> sqlite3.Connection | None:
        """A plain connection of the writer thread's own, for checkpoints that run beside the engine's commits
        (None for a URL this module does not open itself, e.g. ``file:`` URIs: the pass under the lock does it all)."""
        if self._path is None:
            return None
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_autocheckpoint=0")
        return self._checkpointer

    def _close_checkpoint_connection(self) -> None:
        conn, self._checkpointer = self._checkpointer, None
        if conn is not None:
            conn.close()

    def _try_inline(self, fns: Sequence[DbFn]) -> Outcomes | None:
        """One transaction for the whole batch without waiting for any lock, or None if that did not work."""
        try:
            # (Reopening the kept connection may fail too, after an I/O error: the queue retries that as well.)
            conn = self._writer_connection()
            return [(True, r) for r in self._transaction(conn, fns, *self._writer_raw)], 1
        except Exception:
            return None  # nothing was committed: the writer thread takes the batch (and sorts out failures)

    def _batch(self, fns: Sequence[DbFn]) -> Outcomes:
        with self._write_lock:
            return self._batch_waiting(fns)

    def _batch_waiting(self, fns: Sequence[DbFn]) -> Outcomes:
        try:
            return [(True, r) for r in self._transaction_waiting(fns)], 1
        except Exception as exc:
            if len(fns) == 1:
                return [(False, exc)], 0
        outcomes: list[tuple[bool, Any]] = []
        commits = 0
        for fn in fns:
            try:
                [value] = self._transaction_waiting([fn])
                outcomes.append((True, value))
                commits += 1
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes, commits

    def _transaction_waiting(self, fns: Sequence[DbFn]) -> list[Any]:
        """A transaction on the writer connection (the caller holds ``_write_lock``) that waits up to the busy timeout
        for SQLite's lock. The connection is taken afresh each time: a failed transaction may have replaced it."""
        conn = self._writer_connection()
        raw, cursor = self._writer_raw
        raw.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        try:
            return self._transaction(conn, fns, raw, cursor)
        finally:
            # (If the transaction's failure closed the connection, the next _writer_connection replaces it, at 0.)
            with contextlib.suppress(Exception):
                raw.execute("PRAGMA busy_timeout=0")

    @staticmethod
    def _transaction(conn: Connection, fns: Sequence[DbFn], raw: Any = None, cursor: Any = None) -> list[Any]:
        """``BEGIN IMMEDIATE``, the functions, ``COMMIT`` (or ``ROLLBACK`` if one raises), on the kept connection.

        The transaction is begun on the DBAPI connection (``raw``, with ``cursor`` on it, when the caller keeps
        them); a statement that goes through SQLAlchemy makes it begin its own bookkeeping on top (the ``begin``
        listener sees the open transaction and adds nothing), so the end goes through SQLAlchemy in that case.
        """
        if raw is None:
            raw = conn.connection.dbapi_connection
        sync = SyncConnection(conn, defer=True, cursor=cursor)
        (cursor if cursor is not None else raw).execute("BEGIN IMMEDIATE")
        commit = False
        try:
            results = [drive(fn, sync) for fn in fns]
            sync.flush()
            commit = True
            return results
        finally:
            try:
                if conn.in_transaction():
                    conn.commit() if commit else conn.rollback()
                elif not commit:
                    raw.rollback()
                elif cursor is not None and raw.in_transaction:
                    cursor.execute("COMMIT")  # a cached statement (raw.commit() prepares its COMMIT anew each time)
                else:
                    raw.commit()
            except BaseException:
                _discard_transaction(conn)
                raise

    async def dispose(self) -> None:
        def run() -> None:
            if self.read_threads is not self.write_thread:
                self.read_threads.shutdown(wait=True)  # reads in flight finish before their connections close
            with self._opened_lock:
                opened, self._opened = self._opened, []
            with self._write_lock:
                if self._writer_conn is not None:
                    opened.append(self._writer_conn)
                    self._writer_conn, self._writer_raw = None, (None, None)
            for conn in opened:
                conn.close()
            self._disposed = True
            self._close_checkpoint_connection()
            self.writer.dispose()
            if self.reader is not self.writer:
                self.reader.dispose()

        await self._in(self.write_thread, run)
        self.write_thread.shutdown(wait=True)
        if self.read_threads is not self.write_thread:
            self.read_threads.shutdown(wait=True)


class SideWriter:
    """A connection of its own for one thread that is not the event loop's (the lease keeper).

    It commits whatever the event loop is doing: a step that blocks the loop, a long batch in the writer
    thread. ``run(fn)`` runs a database function in a transaction of its own and blocks until it committed;
    after any failure the connection is dropped and the next call opens a new one. ``fn`` must be safe to run
    again: a kept connection found dropped is replaced and ``fn`` tried once more on the new one (PostgreSQL).
    """

    def run(self, fn: DbFn) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteSideWriter(SideWriter):
    def __init__(self, url: str, busy_ms: int) -> None:
        self._engine = create_engine(make_url(url).set(drivername="sqlite+pysqlite"), poolclass=NullPool, **JSON_CODEC,
                                     connect_args={"check_same_thread": False})
        configure_sqlite(self._engine, begin="BEGIN IMMEDIATE", busy_ms=busy_ms)
        self._conn: Connection | None = None

    def run(self, fn: DbFn) -> Any:
        if self._conn is None:
            self._conn = self._engine.connect()
        try:
            return ThreadBackend._transaction(self._conn, [fn])[0]
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.invalidate()  # the DBAPI connection is dropped, whatever state a failure left it in
            conn.close()


class PostgresSideWriter(SideWriter):
    """asyncpg on an event loop private to the calling thread (PostgreSQL has no sync driver here).

    One connection is kept between calls (a renewal every few seconds need not log in each time). A kept connection
    the server or the network dropped meanwhile fails the next call at once: that call is tried again, once, on a
    new connection (``fn`` must be safe to run again), so a restart of the server between two renewals costs no
    renewal. Any other failure (a statement that timed out on a live connection included), or one on a new
    connection, is the caller's (an outage: the lease keeper reports it and tries again at its next interval).
    """

    def __init__(self, url: str, timeout: float) -> None:
        self._loop = asyncio.new_event_loop()
        url, server_settings = postgres_url_settings(url)
        args: dict[str, Any] = {"timeout": timeout, "command_timeout": timeout}
        if server_settings:
            args["server_settings"] = server_settings
        self._engine = create_async_engine(url, poolclass=NullPool, **JSON_CODEC, connect_args=args)
        self._conn: AsyncConnection | None = None

    def run(self, fn: DbFn) -> Any:
        return self._loop.run_until_complete(self._run(fn))

    async def _run(self, fn: DbFn) -> Any:
        kept = self._conn is not None
        try:
            return await self._once(fn)
        except Exception as exc:
            await self._drop()
            if not kept or not connection_dropped(exc):
                raise
        # The kept connection was gone (the lease keeper's renewal is safe to run again: it only extends leases).
        try:
            return await self._once(fn)
        except Exception:
            await self._drop()
            raise

    async def _once(self, fn: DbFn) -> Any:
        if self._conn is None:
            self._conn = await self._engine.connect()
        async with self._conn.begin():
            return await fn(self._conn)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # whatever state the failure left it in, it is not used again
            with contextlib.suppress(Exception):
                await conn.close()

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._drop())
            self._loop.run_until_complete(self._engine.dispose())
        finally:
            self._loop.close()


def _discard_transaction(conn: Connection) -> None:
    """After a failed transaction (a COMMIT that failed on a full disk or an I/O error, a statement that failed), leave
    the kept connection usable for the next batch.

    A COMMIT that fails may leave SQLite's transaction open and SQLAlchemy's marked invalid; without a full
    rollback of both, every later statement on the connection fails with PendingRollbackError, for good.
    If even that fails, the connection is invalidated: the next checkout opens a fresh one.
    """
    raw: Any = conn.connection.dbapi_connection
    try:
        if raw is not None and raw.in_transaction:
            raw.rollback()
        conn.rollback()
    except Exception as exc:  # the connection itself is unusable: replace it
        log.warning("rolling back a failed transaction failed (%s); opening a new connection", type(exc).__name__)
        conn.invalidate()


def _is_busy(exc: BaseException) -> bool:
    """SQLite said another connection holds a lock it needs (SQLITE_BUSY / SQLITE_LOCKED)."""
    orig = getattr(exc, "orig", exc)
    name = str(getattr(orig, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(orig)


SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: Seconds a PostgreSQL statement may go unanswered before it fails as a timeout (and is retried on a new connection).
DEFAULT_COMMAND_TIMEOUT = 30.0


def command_timeout() -> float | None:
    """How long the engine waits for PostgreSQL to answer one statement: ``THREADFLOW_DB_COMMAND_TIMEOUT`` in seconds,
    default 30; ``0`` waits without limit. Past it the connection is given up for a new one (a failover that left the
    old one silent). A malformed value is a :class:`DatabaseSettingError` that names the setting."""
    text = os.environ.get("THREADFLOW_DB_COMMAND_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_COMMAND_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise DatabaseSettingError(f"THREADFLOW_DB_COMMAND_TIMEOUT must be a number of seconds, 0 (no limit) or more, "
                                   f"like 30; got {text!r}.")
    return value or None


def busy_timeout_ms() -> int:
    """How long a SQLite connection waits for another connection's lock before "database is locked":
    ``THREADFLOW_SQLITE_BUSY_TIMEOUT_MS``, default 30000. A malformed value is a :class:`DatabaseSettingError`
    that names the setting (``threadflow doctor`` calls this too), not a traceback from ``int()``."""
    text = os.environ.get("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "").strip()
    if not text:
        return 30000
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise DatabaseSettingError(f"THREADFLOW_SQLITE_BUSY_TIMEOUT_MS must be a whole number of milliseconds, "
                                   f"0 or more, like 30000; got {text!r}.")
    return value


def sqlite_synchronous() -> str:
    """``THREADFLOW_SQLITE_SYNCHRONOUS`` (default NORMAL); a typo is an error rather than a silent NORMAL,
    since whoever set FULL wanted every commit to survive a power loss."""
    text = os.environ.get("THREADFLOW_SQLITE_SYNCHRONOUS", "").strip()
    if not text:
        return "NORMAL"
    if text.upper() not in SQLITE_SYNCHRONOUS:
        raise DatabaseSettingError(f"THREADFLOW_SQLITE_SYNCHRONOUS must be one of {', '.join(SQLITE_SYNCHRONOUS)}; "
                                   f"got {text!r}.")
    return text.upper()


def _enable_wal(cursor: Any, busy_ms: int) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection is creating the same new file.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers "database is locked" at
    once (without its busy handler) when two processes open the same new file at the same moment.
    """
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except Exception as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def configure_sqlite(engine: Engine, *, begin: str | None, busy_ms: int | None = None) -> None:
    """WAL, a busy timeout, and explicit transaction control (pysqlite's own is off)."""
    busy_ms = busy_timeout_ms() if busy_ms is None else busy_ms
    synchronous = sqlite_synchronous()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file only (before WAL creates it); else a no-op
        _enable_wal(cursor, busy_ms)
        # NORMAL in WAL mode: a commit survives a crash of the process (SIGKILL); only a power loss or
        # OS crash may lose the last commits. FULL would fsync every commit, several times slower.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A batch begins its transaction on the DBAPI connection itself; only begin one if none is open.
        if begin is not None and not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql(begin)
