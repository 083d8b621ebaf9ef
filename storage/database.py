"""The database handle: engines, the commit queue, migrations and the change signal.

Why a commit queue: SQLite has one writer at a time and every statement through aiosqlite costs a thread
hop, so the engine's hot path (one commit per step) is bound by commits, not by work. Writers enqueue an
async function that runs statements on a connection and await its result; one task drains the queue and
runs many writers' functions in a single transaction (group commit). One run at a time still pays one
commit per step; a hundred concurrent runs share commits.

If any function in a batch raises, the batch is rolled back and each function is retried in its own
transaction, so one writer's failure (for example a lost compare-and-set) never fails another's write.

SQLite transactions begin with ``BEGIN IMMEDIATE`` on the writer engine: with several processes on one
file (the bot and the CLI), a deferred ``BEGIN`` that reads then writes fails with "database is locked";
an immediate one waits for the lock instead (``busy_timeout``). Reads use their own pooled connections in
autocommit mode (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from .errors import DatabaseURLError

T = TypeVar("T")
WriteFn = Callable[[AsyncConnection], Awaitable[T]]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///threadflow.db"

log = logging.getLogger("threadflow.storage")

#: How many queued writes one transaction may carry. Large enough to share commits between a hundred
#: concurrent runs, small enough that one batch never holds SQLite's write lock for long.
MAX_BATCH = 256


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``sqlite:///x.db``, ``postgresql://...``) and pick the async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(
            f"Database URL {url!r} is not a valid SQLAlchemy URL. "
            "Use sqlite+aiosqlite:///path/to/threadflow.db or postgresql+asyncpg://user@host/db."
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise DatabaseURLError(
            f"Database URL {url!r} uses {backend!r}; threadflow supports SQLite (sqlite+aiosqlite://) "
            "and PostgreSQL (postgresql+asyncpg://)."
        )
    return parsed.render_as_string(hide_password=False)


class ChangeSignal:
    """An in-process broadcast that something committed; watchers re-read the database when woken."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.version = 0

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, since: int, timeout: float | None) -> int:
        """Wait until ``version`` passes ``since`` (or the timeout passes); return the version seen."""
        if self.version != since:
            return self.version
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        return self.version


class Database:
    """One database for runs, memory and the Slack mapping; the only place engines are created."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
        self._echo = echo
        self._writer: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None
        self._queue: deque[tuple[WriteFn[Any], asyncio.Future[Any]]] = deque()
        self._queue_event: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None
        self.changes = ChangeSignal()
        self.commits = 0
        self.batched_writes = 0
        self._after_commit_hooks: list[Callable[[int], None]] = []
        self._batch_started = time.perf_counter()
        self.last_commit_seconds = 0.0

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the engines and apply migrations; safe to call more than once (reads and writes call it)."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._writer is not None:
                return
            writer, reader = self._create_engines()
            from .migrations import upgrade_to_head

            await upgrade_to_head(writer, self.dialect)
            self._writer, self._reader = writer, reader
            self._queue_event = asyncio.Event()
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="threadflow-commit-queue")

    async def close(self) -> None:
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            # Let queued writes finish: they are results a caller is waiting for. The queue is drained in
            # order, so a no-op queued last completes only after every write before it, including a batch
            # already taken off the queue and in flight (an empty queue alone does not mean "committed").
            assert self._queue_event is not None
            barrier: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((_noop, barrier))
            self._queue_event.set()
            await asyncio.wait({barrier, drainer}, return_when=asyncio.FIRST_COMPLETED)
            drainer.cancel()
            try:
                await drainer
            except asyncio.CancelledError:
                pass
        for eng in {id(e): e for e in (self._writer, self._reader) if e is not None}.values():
            await eng.dispose()
        self._writer = self._reader = None

    def _create_engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        if not self.is_sqlite:
            writer = create_async_engine(self.url, echo=self._echo, pool_size=5, max_overflow=5, pool_pre_ping=True)
            reader = create_async_engine(self.url, echo=self._echo, pool_size=5, max_overflow=10, pool_pre_ping=True)
            return writer, reader
        database = make_url(self.url).database
        if not database or database == ":memory:":
            # One shared connection: separate connections would each see their own empty database.
            single = create_async_engine(self.url, echo=self._echo, poolclass=StaticPool)
            _configure_sqlite(single, begin="BEGIN IMMEDIATE")
            return single, single
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        writer = create_async_engine(self.url, echo=self._echo, pool_size=1, max_overflow=0)
        reader = create_async_engine(self.url, echo=self._echo, pool_size=4, max_overflow=4)
        _configure_sqlite(writer, begin="BEGIN IMMEDIATE")
        _configure_sqlite(reader, begin=None)
        return writer, reader

    def _require_open(self) -> tuple[AsyncEngine, AsyncEngine]:
        if self._writer is None or self._reader is None:
            raise RuntimeError("Database is not open: call `await database.open()` first.")
        return self._writer, self._reader

    # -- reads and writes ----------------------------------------------------------------------------

    async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn`` on a reader connection (no write lock, sees everything committed)."""
        if self._reader is None:
            await self.open()
        _, reader = self._require_open()
        async with reader.connect() as conn:
            return await fn(conn)

    async def write(self, fn: WriteFn[T]) -> T:
        """Run ``fn`` inside a shared write transaction and return its result once committed.

        The write happens even if the caller is cancelled while waiting: a step result that reached the
        queue is committed, so a canceled task never loses (or re-runs) a finished step.
        """
        if self._writer is None:
            await self.open()
        assert self._queue_event is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut))
        self._queue_event.set()
        return await asyncio.shield(fut)

    def write_nowait(self, fn: WriteFn[Any]) -> asyncio.Future[Any]:
        """Queue a write without waiting for it (events whose loss in a crash is harmless)."""
        self._require_open()
        assert self._queue_event is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._queue.append((fn, fut))
        self._queue_event.set()
        return fut

    async def run_in_transaction(self, fn: WriteFn[T]) -> T:
        """Run ``fn`` in a transaction of its own, bypassing the queue (migrations, maintenance)."""
        if self._writer is None:
            await self.open()
        writer, _ = self._require_open()
        async with writer.begin() as conn:
            result = await fn(conn)
        self._committed()
        return result

    def on_commit(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(batch_size)`` after every commit (metrics; ``last_commit_seconds`` has its latency)."""
        self._after_commit_hooks.append(hook)

    def _committed(self, size: int = 1) -> None:
        self.commits += 1
        self.batched_writes += size
        self.last_commit_seconds = time.perf_counter() - self._batch_started
        for hook in self._after_commit_hooks:
            hook(size)
        self.changes.notify()

    async def _drain(self) -> None:
        assert self._queue_event is not None
        writer, _ = self._require_open()
        while True:
            await self._queue_event.wait()
            self._queue_event.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                await self._commit_batch(writer, batch)

    async def _commit_batch(self, writer: AsyncEngine, batch: list[tuple[WriteFn[Any], asyncio.Future[Any]]]) -> None:
        results: list[Any] = []
        self._batch_started = time.perf_counter()
        try:
            async with writer.begin() as conn:
                for fn, _ in batch:
                    results.append(await fn(conn))
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.cancel()
            raise
        except Exception:
            if len(batch) == 1:
                fn, fut = batch[0]
                await self._commit_one(writer, fn, fut)
                return
            # Someone's write failed: roll back and give every writer its own transaction.
            for fn, fut in batch:
                await self._commit_one(writer, fn, fut)
            return
        self._committed(len(batch))
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _commit_one(self, writer: AsyncEngine, fn: WriteFn[Any], fut: asyncio.Future[Any]) -> None:
        self._batch_started = time.perf_counter()
        try:
            async with writer.begin() as conn:
                result = await fn(conn)
        except Exception as exc:  # handed to the writer who queued it
            if not fut.done():
                fut.set_exception(exc)
            return
        self._committed()
        if not fut.done():
            fut.set_result(result)


async def _noop(conn: AsyncConnection) -> None:
    return None


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("background write failed: %s", fut.exception())


def _configure_sqlite(engine: AsyncEngine, *, begin: str | None) -> None:
    """WAL, a busy timeout, and explicit transaction control (pysqlite's own is off)."""
    busy_ms = int(os.environ.get("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "30000"))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process (SIGKILL); only a power loss or
        # OS crash may lose the last commits. FULL would fsync every commit, several times slower.
        cursor.execute(f"PRAGMA synchronous={os.environ.get('THREADFLOW_SQLITE_SYNCHRONOUS', 'NORMAL')}")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if begin is not None:
            conn.exec_driver_sql(begin)
