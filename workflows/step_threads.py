"""The threads plain ``def`` steps run in: daemon threads, so a step that never returns cannot keep the process
from exiting.

A thread cannot be stopped. A step that runs past its timeout fails (StepTimeout) and its thread is *abandoned*:
left to finish on its own, its result dropped, counted here (``abandoned``) and logged. The standard library's
``ThreadPoolExecutor`` joins its threads when the interpreter exits, so one hung ``time.sleep`` or socket read
would hold a stopping worker for ever; these threads are daemons and nothing waits for them at exit. Abandoned
threads do not count toward the pool's size, so hung steps do not starve the steps that come after them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger("threadflow.engine")

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class StepThreads(Executor):
    """A pool of up to ``max_workers`` busy daemon threads (plus the abandoned ones), started as needed."""

    def __init__(self, max_workers: int, name_prefix: str = "threadflow-step") -> None:
        self._max_workers = max_workers
        self._name_prefix = name_prefix
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[Future[Any]] = set()
        self._names = itertools.count(1)
        self._shutdown = False

    @property
    def abandoned(self) -> int:
        """Threads of steps that timed out and are still running."""
        with self._lock:
            return len(self._abandoned)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the engine's step threads are shut down; no step can start now")
            self._queue.put((future, fn, args, kwargs))
            busy_limit = self._max_workers + len(self._abandoned)
            if not self._idle.acquire(blocking=False) and len(self._threads) < busy_limit:
                thread = threading.Thread(target=self._work, name=f"{self._name_prefix}_{next(self._names)}",
                                          daemon=True)
                self._threads.add(thread)
                thread.start()
        return future

    def abandon(self, future: Future[Any], what: str) -> int:
        """The step running in ``future`` timed out: stop waiting for it; returns how many are abandoned now."""
        with self._lock:
            if future.done():
                return len(self._abandoned)
            self._abandoned.add(future)
            count = len(self._abandoned)
        future.add_done_callback(self._finished_late)
        log.warning("%s: its thread cannot be stopped and is left to finish on its own (%d abandoned step "
                    "thread%s in this process; they do not keep it from exiting)", what, count,
                    "" if count == 1 else "s")
        return count

    def _finished_late(self, future: Future[Any]) -> None:
        with self._lock:
            self._abandoned.discard(future)

    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    # Idle only now, about to wait: a thread that goes straight on to a queued step is not free for
                    # the next one (were it counted so, that step would wait behind it, should it hang).
                    self._idle.release()
                    item = self._queue.get()
                if item is None:
                    return
                future, fn, args, kwargs = item
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:  # noqa: BLE001 (handed to the awaiting step call, which sorts it out)
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                del item, future, fn, args, kwargs
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking steps; ``wait``: wait for the busy threads, unless some are abandoned (they may never return)."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
            abandoned = len(self._abandoned)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if abandoned:
            log.warning("stopping with %d abandoned step thread%s still running (steps that timed out); they end "
                        "with the process", abandoned, "" if abandoned == 1 else "s")
        if wait and not abandoned:  # (an abandoned step may never return: then nothing is waited for)
            for thread in threads:
                thread.join()
