"""The database handle: engines, the commit queue, migrations and the change signal.

Why a commit queue: SQLite has one writer at a time and every statement through aiosqlite costs a thread
hop, so the engine's hot path (one commit per step) is bound by commits, not by work. Writers enqueue an
async function that runs statements on a connection and await its result; one task drains the queue and
runs many writers' functions in a single transaction (group commit). One run at a time still pays one
commit per step; a hundred concurrent runs share commits.

If any function in a batch raises, the batch is rolled back and each function is retried in its own
transaction, so one writer's failure (for example a lost compare-and-set) never fails another's write.

Transient errors (see ``faults.py``: a dropped connection, a server restart or failover, ``database is
locked`` past the busy timeout, a full disk, an I/O error) are retried with backoff and jitter, in order, so
the engine carries on by itself once the database is usable again. A *patient* write (a step's result, a
run settling) is retried until it commits or the database is closed: a step that succeeded is never
recorded as failed because a commit failed. Any other read or write (a start, a resume, a listing) is
retried for ``retry_seconds`` and then raises DatabaseUnavailable. Retries are counted (``on_fault``) and
logged once per outage, not once per attempt.

SQLite transactions begin with ``BEGIN IMMEDIATE`` on the writer engine: with several processes on one
file (the bot and the CLI), a deferred ``BEGIN`` that reads then writes fails with "database is locked";
an immediate one waits for the lock instead (``busy_timeout``). Reads use their own pooled connections in
autocommit mode (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from .backends import AsyncBackend, Backend, PostgresSideWriter, SideWriter, SqliteSideWriter, ThreadBackend
from .errors import DatabaseUnavailable, StorageError
from .faults import describe, transient_kind
from .prepared import PlannedWrite

# Defined in urls.py (cheap to import: a read-only CLI command needs them without this module); still
# importable from here, where callers have always found them.
from .urls import DEFAULT_DATABASE_URL as DEFAULT_DATABASE_URL
from .urls import normalize_url as normalize_url
from .urls import redacted as redacted

T = TypeVar("T")
WriteFn = Callable[[AsyncConnection], Awaitable[T]]
#: A queued write: the function, its caller's future, ``inline``, and the monotonic time after which a
#: transient failure is not retried any more (``inf``: patient, retried until it commits or the database closes).
Queued = tuple[WriteFn[Any], "asyncio.Future[Any]", bool, float]

log = logging.getLogger("threadflow.storage")

#: How many queued writes one transaction may carry. Large enough to share commits between a hundred
#: concurrent runs, small enough that one batch never holds SQLite's write lock for long.
MAX_BATCH = 256
#: How long reads and non-patient writes are retried on transient errors before DatabaseUnavailable.
RETRY_SECONDS = 10.0
#: Backoff between retries: doubling from the first to the last value, with jitter (half to all of it).
RETRY_BACKOFF = (0.05, 2.0)
#: Once the database is closing, patient writes still failing are given up after this long.
CLOSE_GRACE_SECONDS = 5.0


def knowing_retries(op: Callable[[AsyncConnection, bool], Awaitable[T]]) -> WriteFn[T]:
    """A write function for ``Database.write`` that tells ``op`` whether this call is a retry (``retried``).

    A write is run again after a failure whose COMMIT may have gone through (a dropped connection, a failover):
    a retry of a write that is not idempotent looks for its own earlier commit first (by a value it wrote), and a
    first call need not. (A batch that failed as a whole calls its functions again too: they find nothing.)"""
    calls = 0

    async def write(conn: AsyncConnection) -> T:
        nonlocal calls
        calls += 1
        return await op(conn, calls > 1)

    return write


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
        #: Watchers waiting right now: with none (one run at a time, no inspector open), a commit only counts.
        self._waiting = 0

    def notify(self) -> None:
        self.version += 1
        if self._waiting:
            self._event.set()
            self._event = asyncio.Event()

    async def wait(self, since: int, timeout: float | None) -> int:
        """Wait until ``version`` passes ``since`` (or the timeout passes); return the version seen."""
        if self.version != since:
            return self.version
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):  # not wait_for: that starts a task per wait
                await self._event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
        return self.version


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped, with jitter."""
    first, last = RETRY_BACKOFF
    delay = min(last, first * 2 ** (attempt - 1))
    return random.uniform(delay / 2, delay)


class Outage:
    """One episode of transient errors, logged once when it starts and once when it ends."""

    def __init__(self, what: str, kind: str, exc: BaseException) -> None:
        self.what = what
        self.since = time.monotonic()
        self.failures = 0
        log.warning("database %s failed (%s: %s); retrying with backoff until it answers", what, kind, describe(exc))

    def end(self) -> None:
        log.warning("database %s works again after %.1f s (%d failed attempts)", self.what,
                    time.monotonic() - self.since, self.failures)


class Database:
    """One database for runs, memory and the Slack mapping; the only place engines are created."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, echo: bool = False, retry_seconds: float = RETRY_SECONDS) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
        self.retry_seconds = retry_seconds
        self._echo = echo
        self._backend: Backend | None = None
        self._queue: deque[Queued] = deque()
        self._queue_event: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None
        self.changes = ChangeSignal()
        self.commits = 0
        self.batched_writes = 0
        #: of ``commits``, those of planned writes (``commit_planned_now``)
        self.planned_commits = 0
        self._after_commit_hooks: list[Callable[[int], None]] = []
        self._fault_hooks: list[Callable[[str, bool], None]] = []
        self.last_commit_seconds = 0.0
        #: The outage in progress, for reads and for writes (each ends with its own next success).
        self._outages: dict[str, Outage | None] = {"read": None, "write": None, "lease renewal": None}
        self._closing_since: float | None = None
        #: A batch is being committed (its writes come first: a write may not overtake them).
        self._committing = False

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
            try:
                backend: Backend = ThreadBackend(self.url, self._echo) if self.is_sqlite else AsyncBackend(self.url, self._echo)
            except OSError as exc:  # the SQLite file's directory cannot be created
                raise self._unavailable(exc) from exc
            try:
                await backend.migrate()
            except Exception as exc:
                await backend.dispose()
                raise self._unavailable(exc) from exc
            self._closing_since = None
            self._backend = backend
            self._queue_event = asyncio.Event()
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="threadflow-commit-queue")

    def _unavailable(self, exc: BaseException) -> BaseException:
        """What opening the database raises: DatabaseUnavailable when it cannot be reached or written."""
        root = _database_error(exc)
        if root is None:
            return exc if isinstance(exc, StorageError) else DatabaseUnavailable(
                f"Could not open the database {redacted(self.url)}: {describe(exc)}.")
        where = "file" if self.is_sqlite else "server"
        return DatabaseUnavailable(
            f"Could not open the database {redacted(self.url)}: {describe(root)}. Check THREADFLOW_DATABASE_URL "
            f"and that the database {where} is {'writable' if self.is_sqlite else 'running and reachable'}."
        )

    async def close(self) -> None:
        self._closing_since = time.monotonic()
        if self._drainer is not None:
            # Let queued writes finish: they are results a caller is waiting for. The queue is drained in
            # order, so a no-op queued last completes only after every write before it, including a batch
            # already taken off the queue and in flight (an empty queue alone does not mean "committed").
            barrier: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((_noop, barrier, True, float("inf")))
            self._wake_drainer()
            drainer, self._drainer = self._drainer, None
            await asyncio.wait({barrier, drainer}, return_when=asyncio.FIRST_COMPLETED)
            if barrier.done() and not barrier.cancelled() and barrier.exception() is not None:
                log.warning("closing the database: writes still queued were given up (%s)", barrier.exception())
            drainer.cancel()
            try:
                await drainer
            except asyncio.CancelledError:
                pass
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.dispose()

    def side_writer(self, timeout: float) -> SideWriter | None:
        """A writer for a thread of its own (blocking; ``timeout``: how long it waits for a lock or the server).

        None for an in-memory SQLite database, which only its one connection can see.
        """
        if self.is_sqlite:
            database = make_url(self.url).database
            if not database or database == ":memory:":
                return None
            return SqliteSideWriter(self.url, busy_ms=int(timeout * 1000))
        return PostgresSideWriter(self.url, timeout)

    def report_fault(self, what: str, exc: BaseException) -> None:
        """A transient error met outside the queue (the lease keeper): counted and logged like the queue's."""
        self._fault(what, transient_kind(exc) or "unknown", exc)

    def report_recovered(self, what: str) -> None:
        if self._outages.get(what) is not None:
            self._recovered(what)

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
        Transient errors are retried for ``retry_seconds``, then raise DatabaseUnavailable.
        """
        if self._backend is None:
            await self.open()
        deadline: float | None = None
        attempt = 0
        while True:
            try:
                result: T = await self._require_open().read(fn, inline=inline)
            except Exception as exc:
                kind = transient_kind(exc)
                if kind is None:
                    raise
                attempt += 1
                self._fault("read", kind, exc)
                deadline = deadline or time.monotonic() + self.retry_seconds
                if time.monotonic() >= deadline or self._closing_since is not None:
                    raise self._gave_up(exc) from exc
                await asyncio.sleep(backoff(attempt))
                continue
            if self._outages["read"] is not None:
                self._recovered("read")
            return result

    async def write(self, fn: WriteFn[T], *, inline: bool = False, patient: bool = False, now: bool = False) -> T:
        """Run ``fn`` inside a shared write transaction and return its result once committed.

        The write happens even if the caller is cancelled while waiting: a step result that reached the
        queue is committed, so a canceled task never loses (or re-runs) a finished step.

        ``inline=True`` says ``fn`` runs a few small, bounded statements (the engine's hot path). On SQLite
        a batch made only of such writes may run on the event loop's own thread, saving two thread hops;
        anything that may take long (bulk inserts, deletes of many rows) must leave it False.

        ``patient=True``: transient errors are retried until the write commits (or the database closes);
        ``fn`` must then be safe to run again after a commit whose outcome was not known (insert-if-absent,
        a compare-and-set). Otherwise they are retried for ``retry_seconds``, then raise DatabaseUnavailable.

        ``now=True`` says no other writer is likely to join this commit (the engine executes one run): on SQLite an
        inline write then commits right here, on the caller's turn of the loop, if nothing is queued or being
        committed before it and the write lock is free. That saves the queue's two turns of the loop, which one
        run at a time were a third of a step's CPU; anything else (or a failure) goes through the queue as usual.
        """
        if self._backend is None:
            await self.open()
        if now and inline and not self._queue and not self._committing:
            done = self._commit_now(fn)
            if done is not None:
                return done[0]  # type: ignore[no-any-return]
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut, inline, self._deadline(patient)))
        self._wake_drainer()
        # No shield needed: a queued function runs whether or not its future was cancelled meanwhile.
        return await fut

    def _commit_now(self, fn: WriteFn[Any]) -> tuple[Any] | None:
        """``fn`` committed in a transaction of its own right away (see ``write(now=True)``), or None."""
        started = time.perf_counter()
        outcome = self._require_open().commit_now([fn])
        if outcome is None:
            return None
        [(ok, value)], _ = outcome
        if not ok:
            return None
        self._committed_now(started)
        return (value,)

    def _committed_now(self, started: float) -> None:
        """A write committed on the caller's turn (``_commit_now``, ``commit_planned_now``) since ``started``."""
        self._committed(1, time.perf_counter() - started)
        if self._outages["write"] is not None:
            self._recovered("write")

    def commits_planned_now(self) -> bool:
        """Whether ``commit_planned_now`` may commit at all right now: the backend can (SQLite on a file) and no write is
        queued or being committed (they go first)."""
        backend = self._backend
        return backend is not None and backend.plans_now and not self._queue and not self._committing

    def commit_planned_now(self, write: PlannedWrite) -> bool:
        """``write`` committed right here, as ``write(fn, inline=True, now=True)`` would commit a function doing the same
        statements: True. False if it was not (a write is queued or being committed, the backend cannot, or it
        failed; see ``ThreadBackend.commit_planned_now``): nothing was committed, and the caller writes it as a
        function instead."""
        if not self.commits_planned_now():
            return False
        started = time.perf_counter()
        if not self._require_open().commit_planned_now(write):
            return False
        self.planned_commits += 1
        self._committed_now(started)
        return True

    def write_nowait(self, fn: WriteFn[Any], *, inline: bool = False, patient: bool = False) -> asyncio.Future[Any]:
        """Queue a write without waiting for it (events whose loss in a crash is harmless); arguments as in write."""
        self._require_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._queue.append((fn, fut, inline, self._deadline(patient)))
        self._wake_drainer()
        return fut

    def _wake_drainer(self) -> None:
        assert self._queue_event is not None and self._drainer is not None
        self._queue_event.set()
        if self._drainer.done():
            # Cancelled from outside: asyncio.run cancels every task when Ctrl+C stops the loop, and the
            # engine's shutdown still writes (it hands its runs back). A new drainer takes the queue over.
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="threadflow-commit-queue")

    def _deadline(self, patient: bool) -> float:
        return float("inf") if patient else time.monotonic() + self.retry_seconds

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

    def on_fault(self, hook: Callable[[str, bool], None]) -> None:
        """Call ``hook(kind, new_outage)`` after every transient error that will be retried (metrics)."""
        self._fault_hooks.append(hook)

    def failing(self) -> str | None:
        """What is failing now (``"read"``, ``"write"``, ``"lease renewal"``: an outage in progress), else None."""
        return next((what for what, outage in self._outages.items() if outage is not None), None)

    def _fault(self, what: str, kind: str, exc: BaseException) -> None:
        outage = self._outages.get(what)
        new = outage is None
        if outage is None:
            outage = self._outages[what] = Outage(what, kind, exc)
        outage.failures += 1
        for hook in self._fault_hooks:
            hook(kind, new)

    def _recovered(self, what: str) -> None:
        outage, self._outages[what] = self._outages.get(what), None
        if outage is not None:
            outage.end()

    def _gave_up(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"The database {redacted(self.url)} is not usable right now ({describe(exc)}); "
            f"retried for {self.retry_seconds:g} s. Try again once it is back."
        )

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
        try:
            while True:
                await self._queue_event.wait()
                self._queue_event.clear()
                while self._queue:
                    batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                    self._committing = True
                    try:
                        await self._commit_batch(backend, batch)
                    except Exception as exc:  # a bug must not stop every later write: fail this batch's, go on
                        log.exception("commit queue: a batch failed unexpectedly")
                        for entry in batch:
                            if not entry[1].done():
                                entry[1].set_exception(exc)
                    finally:
                        self._committing = False
        except asyncio.CancelledError:
            if self._drainer is asyncio.current_task():
                # Cancelled from outside while the database stays open (asyncio.run cancels every task when
                # Ctrl+C stops the loop): the engine's shutdown still writes, so a new drainer takes over.
                self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="threadflow-commit-queue")
                self._queue_event.set()
            raise

    async def _commit_batch(self, backend: Backend, batch: list[Queued]) -> None:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                inline = all(entry[2] for entry in batch)
                outcomes, commits = await backend.run_batch([entry[0] for entry in batch], inline=inline)
            except asyncio.CancelledError:
                for entry in batch:
                    if not entry[1].done():
                        entry[1].cancel()
                raise
            except Exception as exc:  # the database itself failed (not one writer's function)
                outcomes, commits = [(False, exc)] * len(batch), 0
            if commits:
                self._committed(sum(1 for ok, _ in outcomes if ok), time.perf_counter() - started)
            retry: list[Queued] = []
            failure: BaseException | None = None
            for entry, (ok, value) in zip(batch, outcomes, strict=True):
                if not ok and transient_kind(value) is not None:
                    retry.append(entry)
                    failure = value
                elif entry[1].done():
                    continue
                elif ok:
                    entry[1].set_result(value)
                else:
                    entry[1].set_exception(value)
            if failure is None:
                if self._outages["write"] is not None:
                    self._recovered("write")
                return
            attempt += 1
            self._fault("write", transient_kind(failure) or "unknown", failure)
            if attempt == 1:
                # Retried for ``retry_seconds`` after this first failure, however long it took to come (a statement
                # the server never answered fails only after the command timeout), as reads are.
                retry = [self._retried_until(entry, time.monotonic() + self.retry_seconds) for entry in retry]
            await asyncio.sleep(backoff(attempt))
            batch = self._still_retried(retry, failure)
            self._still_retried_in_queue(failure)
            if not batch:
                return

    @staticmethod
    def _retried_until(entry: Queued, deadline: float) -> Queued:
        fn, fut, inline, until = entry
        return (fn, fut, inline, max(until, deadline))

    def _still_retried(self, entries: list[Queued], failure: BaseException) -> list[Queued]:
        """The entries whose retry deadline has not passed; the others fail with DatabaseUnavailable."""
        now = time.monotonic()
        closing = self._closing_since is not None and now - self._closing_since > CLOSE_GRACE_SECONDS
        kept: list[Queued] = []
        for entry in entries:
            if now < entry[3] and not closing:
                kept.append(entry)
            elif not entry[1].done():
                entry[1].set_exception(self._gave_up(failure))
        return kept

    def _still_retried_in_queue(self, failure: BaseException) -> None:
        """Writes queued behind a batch being retried wait too: fail those whose deadline passed meanwhile."""
        now = time.monotonic()
        if any(entry[3] <= now for entry in self._queue):
            self._queue = deque(self._still_retried(list(self._queue), failure))


async def _noop(conn: AsyncConnection) -> None:
    return None


def _database_error(exc: BaseException) -> BaseException | None:
    """The driver's error (or OS error) behind a failure to open the database, if there is one."""
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if isinstance(item, DBAPIError | sqlite3.Error | OSError):
            return item
        item = item.__cause__ or item.__context__
    return None


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("background write failed: %s", fut.exception())
