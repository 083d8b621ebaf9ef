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
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

DbFn = Callable[[AsyncConnection], Awaitable[Any]]
#: (succeeded, result or exception) for each function of a batch, and how many transactions committed.
Outcomes = tuple[list[tuple[bool, Any]], int]


class Backend:
    async def migrate(self) -> None:
        raise NotImplementedError

    async def read(self, fn: DbFn) -> Any:
        raise NotImplementedError

    async def run_batch(self, fns: Sequence[DbFn]) -> Outcomes:
        """Run ``fns`` in one transaction; if any raises, roll back and give each its own transaction."""
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError


class AsyncBackend(Backend):
    """PostgreSQL through asyncpg: network round trips, not thread hops, are the cost; no batching tricks."""

    def __init__(self, url: str, echo: bool) -> None:
        self.writer: AsyncEngine = create_async_engine(url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.reader: AsyncEngine = create_async_engine(url, echo=echo, pool_size=5, max_overflow=10, pool_pre_ping=True)

    async def migrate(self) -> None:
        from .migrations import upgrade_to_head

        await upgrade_to_head(self.writer, "postgresql")

    async def read(self, fn: DbFn) -> Any:
        async with self.reader.connect() as conn:
            return await fn(conn)

    async def run_batch(self, fns: Sequence[DbFn]) -> Outcomes:
        try:
            async with self.writer.begin() as conn:
                results = [await fn(conn) for fn in fns]
            return [(True, r) for r in results], 1
        except Exception as exc:
            if len(fns) == 1:
                return [(False, exc)], 0
        outcomes: list[tuple[bool, Any]] = []
        commits = 0
        for fn in fns:
            try:
                async with self.writer.begin() as conn:
                    outcomes.append((True, await fn(conn)))
                commits += 1
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes, commits

    async def dispose(self) -> None:
        await self.writer.dispose()
        await self.reader.dispose()


class SyncConnection:
    """Looks like an AsyncConnection to database functions, but executes at once on a sync connection."""

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn

    @property
    def dialect(self) -> Any:
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        return self.sync_connection.execute(statement, parameters, **kwargs)

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **kwargs: Any) -> Any:
        return self.sync_connection.exec_driver_sql(statement, parameters, **kwargs)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)


def drive(fn: DbFn, conn: Connection) -> Any:
    """Run a database function to completion without an event loop (it never really suspends here)."""
    coro = fn(SyncConnection(conn))  # type: ignore[arg-type]
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
            self.writer = create_engine(sync_url, echo=echo, poolclass=StaticPool, connect_args=args)
            self.reader = self.writer
            self.read_threads = self.write_thread = ThreadPoolExecutor(1, thread_name_prefix="threadflow-db")
        else:
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_engine(sync_url, echo=echo, pool_size=1, max_overflow=0, connect_args=args)
            self.reader = create_engine(sync_url, echo=echo, pool_size=4, max_overflow=0, connect_args=args)
            self.write_thread = ThreadPoolExecutor(1, thread_name_prefix="threadflow-db-writer")
            self.read_threads = ThreadPoolExecutor(4, thread_name_prefix="threadflow-db-reader")
        configure_sqlite(self.writer, begin="BEGIN IMMEDIATE")
        if self.reader is not self.writer:
            configure_sqlite(self.reader, begin=None)

    async def _in(self, pool: ThreadPoolExecutor, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def migrate(self) -> None:
        from .migrations import upgrade_sync

        def run() -> None:
            with self.writer.begin() as conn:
                upgrade_sync(conn)

        await self._in(self.write_thread, run)

    async def read(self, fn: DbFn) -> Any:
        def run() -> Any:
            with self.reader.connect() as conn:
                return drive(fn, conn)

        return await self._in(self.read_threads, run)

    async def run_batch(self, fns: Sequence[DbFn]) -> Outcomes:
        return await self._in(self.write_thread, lambda: self._batch(fns))  # type: ignore[no-any-return]

    def _batch(self, fns: Sequence[DbFn]) -> Outcomes:
        try:
            with self.writer.begin() as conn:
                results = [drive(fn, conn) for fn in fns]
            return [(True, r) for r in results], 1
        except Exception as exc:
            if len(fns) == 1:
                return [(False, exc)], 0
        outcomes: list[tuple[bool, Any]] = []
        commits = 0
        for fn in fns:
            try:
                with self.writer.begin() as conn:
                    outcomes.append((True, drive(fn, conn)))
                commits += 1
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes, commits

    async def dispose(self) -> None:
        def run() -> None:
            self.writer.dispose()
            if self.reader is not self.writer:
                self.reader.dispose()

        await self._in(self.write_thread, run)
        self.write_thread.shutdown(wait=True)
        if self.read_threads is not self.write_thread:
            self.read_threads.shutdown(wait=True)


def configure_sqlite(engine: Engine, *, begin: str | None) -> None:
    """WAL, a busy timeout, and explicit transaction control (pysqlite's own is off)."""
    busy_ms = int(os.environ.get("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "30000"))
    synchronous = os.environ.get("THREADFLOW_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        synchronous = "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process (SIGKILL); only a power loss or
        # OS crash may lose the last commits. FULL would fsync every commit, several times slower.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if begin is not None:
            conn.exec_driver_sql(begin)
