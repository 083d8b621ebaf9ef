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
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection

from .backends import AsyncBackend, Backend, ThreadBackend
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


def insert_ignore(db: Database | str, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the database's dialect (``db`` or its name): exactly-once rows."""
    name = db if isinstance(db, str) else db.dialect
    dialect = sqlite_dialect if name == "sqlite" else pg_dialect
    return dialect.insert(table).on_conflict_do_nothing()


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
        self._backend: Backend | None = None
        self._queue: deque[tuple[WriteFn[Any], asyncio.Future[Any], bool]] = deque()
        self._queue_event: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None
        self.changes = ChangeSignal()
        self.commits = 0
        self.batched_writes = 0
        self._after_commit_hooks: list[Callable[[int], None]] = []
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
            if self._backend is not None:
                return
            backend: Backend = ThreadBackend(self.url, self._echo) if self.is_sqlite else AsyncBackend(self.url, self._echo)
            try:
                await backend.migrate()
            except Exception:
                await backend.dispose()
                raise
            self._backend = backend
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
            self._queue.append((_noop, barrier, True))
            self._queue_event.set()
            await asyncio.wait({barrier, drainer}, return_when=asyncio.FIRST_COMPLETED)
            drainer.cancel()
            try:
                await drainer
            except asyncio.CancelledError:
                pass
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.dispose()

    def _require_open(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("Database is not open: call `await database.open()` first.")
        return self._backend

    # -- reads and writes ----------------------------------------------------------------------------

    async def read(self, fn: Callable[[AsyncConnection], Awaitable[T]], *, inline: bool = False) -> T:
        """Run ``fn`` on a reader connection (no write lock, sees everything committed).

        ``fn`` may await only ``conn.execute`` / ``exec_driver_sql`` / ``run_sync`` (on SQLite it runs in a
        reader thread, in one hop). ``inline=True`` says it reads a few rows by key (one run's records):
        on SQLite it then runs on the event loop's thread. Searches and listings must leave it False.
        """
        if self._backend is None:
            await self.open()
        result: T = await self._require_open().read(fn, inline=inline)
        return result

    async def write(self, fn: WriteFn[T], *, inline: bool = False) -> T:
        """Run ``fn`` inside a shared write transaction and return its result once committed.

        The write happens even if the caller is cancelled while waiting: a step result that reached the
        queue is committed, so a canceled task never loses (or re-runs) a finished step.

        ``inline=True`` says ``fn`` runs a few small, bounded statements (the engine's hot path). On SQLite
        a batch made only of such writes may run on the event loop's own thread, saving two thread hops;
        anything that may take long (bulk inserts, deletes of many rows) must leave it False.
        """
        if self._backend is None:
            await self.open()
        assert self._queue_event is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut, inline))
        self._queue_event.set()
        # No shield needed: a queued function runs whether or not its future was cancelled meanwhile.
        return await fut

    def write_nowait(self, fn: WriteFn[Any], *, inline: bool = False) -> asyncio.Future[Any]:
        """Queue a write without waiting for it (events whose loss in a crash is harmless); ``inline`` as in write."""
        self._require_open()
        assert self._queue_event is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._queue.append((fn, fut, inline))
        self._queue_event.set()
        return fut

    async def run_in_transaction(self, fn: WriteFn[T]) -> T:
        """Run ``fn`` in a transaction of its own, bypassing the queue (maintenance like pruning)."""
        if self._backend is None:
            await self.open()
        started = time.perf_counter()
        [(ok, value)], commits = await self._require_open().run_batch([fn])
        if not ok:
            raise value
        self._committed(1, time.perf_counter() - started)
        result: T = value
        return result

    def on_commit(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(batch_size)`` after every commit (metrics; ``last_commit_seconds`` has its latency)."""
        self._after_commit_hooks.append(hook)

    def _committed(self, size: int, seconds: float) -> None:
        self.commits += 1
        self.batched_writes += size
        self.last_commit_seconds = seconds
        for hook in self._after_commit_hooks:
            hook(size)
        self.changes.notify()

    async def _drain(self) -> None:
        assert self._queue_event is not None
        backend = self._require_open()
        while True:
            await self._queue_event.wait()
            self._queue_event.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                await self._commit_batch(backend, batch)

    async def _commit_batch(
        self, backend: Backend, batch: list[tuple[WriteFn[Any], asyncio.Future[Any], bool]]
    ) -> None:
        started = time.perf_counter()
        try:
            inline = all(quick for _, _, quick in batch)
            outcomes, commits = await backend.run_batch([fn for fn, _, _ in batch], inline=inline)
        except asyncio.CancelledError:
            for _, fut, _ in batch:
                if not fut.done():
                    fut.cancel()
            raise
        except Exception as exc:  # the database itself failed (not one writer's function)
            outcomes, commits = [(False, exc)] * len(batch), 0
        if commits:
            self._committed(sum(1 for ok, _ in outcomes if ok), time.perf_counter() - started)
        for (_, fut, _), (ok, value) in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


async def _noop(conn: AsyncConnection) -> None:
    return None


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("background write failed: %s", fut.exception())
