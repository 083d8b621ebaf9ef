"""Reads of one key each, made at the same moment by many callers, coalesced into one query.

Why: a burst of resumes (a channel approving a batch, 1,800 runs resumed at once in the benchmark) or a
commit that lets 256 runs continue makes each caller read its own run's rows. Each such read costs far
more in call overhead (a query plan, a cursor round, a read transaction, row objects) than in the rows it
returns. The first call in a turn of the event loop reads at once; the calls made after it in the
same turn wait one turn and share one ``WHERE key IN (...)`` query (the DataLoader pattern).

Nothing is cached between batches: a batch is read after every call in it was made, so a caller always
sees at least what was committed before it called. A lone caller reads by key, at once, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: The most keys one query carries (SQLite allows 32,766 parameters; a query this size takes a few ms).
MAX_KEYS = 256


class Coalescer(Generic[K, V]):
    """``await loader.load(key)``: concurrent loads in one loop turn become one ``load_many(keys)`` call.

    ``load_many`` returns a value per key it found; ``load`` returns ``missing`` for the others. If a
    shared ``load_many`` raises, each key is read again on its own, so an error reaches only the callers
    of the key that caused it.
    """

    def __init__(
        self,
        load_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        missing: V,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._load_many = load_many
        self._missing = missing
        self._max_keys = max_keys
        #: Calls waiting for the batch of this loop turn (None: no call yet this turn).
        self._waiting: dict[K, list[asyncio.Future[V]]] | None = None
        #: The loop whose turn that is (a store outliving a loop, as in tests, never joins a dead turn).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opener: asyncio.Task[object] | None = None
        #: Batches being read: kept so they are not garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if self._waiting is None or self._loop is not loop or task is self._opener:
            # The first call in this turn reads at once (a lone caller waits for nothing) and opens a batch
            # for the other tasks calling in the same turn. call_soon runs after every callback already due
            # in this turn, so the calls made alongside this one (a gather of resumes, the runs one commit
            # released) are all in the batch when it is read. The opening task's own later calls (code
            # reading one run after another without yielding) read at once too.
            if self._waiting is None or self._loop is not loop:
                self._waiting, self._loop, self._opener = {}, loop, task
                # In a context of its own: a shared read belongs to no one caller's run (log fields, spans).
                loop.call_soon(self._dispatch, context=contextvars.Context())
            found = await self._load_many([key])
            return found.get(key, self._missing)
        fut: asyncio.Future[V] = loop.create_future()
        self._waiting.setdefault(key, []).append(fut)
        return await fut

    def _dispatch(self) -> None:
        waiting, self._waiting, self._opener = self._waiting or {}, None, None
        keys = list(waiting)
        for start in range(0, len(keys), self._max_keys):
            chunk = {k: waiting[k] for k in keys[start:start + self._max_keys]}
            task = asyncio.get_running_loop().create_task(self._read(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, waiting: dict[K, list[asyncio.Future[V]]]) -> None:
        try:
            try:
                found = await self._load_many(list(waiting))
            except Exception:
                if len(waiting) == 1:
                    raise
                # One bad row must not fail everyone who shared its query: read each key on its own.
                for key, futures in waiting.items():
                    try:
                        value = (await self._load_many([key])).get(key, self._missing)
                    except Exception as exc:
                        _fail(futures, exc)
                    else:
                        _resolve(futures, value)
                return
            for key, futures in waiting.items():
                _resolve(futures, found.get(key, self._missing))
        except Exception as exc:
            for futures in waiting.values():
                _fail(futures, exc)
        finally:
            # Whatever ended the read (the loop shutting down cancels this task), no caller waits forever.
            for futures in waiting.values():
                _fail(futures, RuntimeError("The shared read was interrupted before it finished; try again."))


def _resolve(futures: list[asyncio.Future[V]], value: V) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(value)


def _fail(futures: list[asyncio.Future[V]], exc: Exception) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(exc)
