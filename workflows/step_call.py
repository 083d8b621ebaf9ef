"""Calling a step's function once: on the event loop or in a thread, within its timeout, and telling the step's
own failures apart from the process stopping.

``async def`` steps run on the event loop; plain ``def`` steps run in the engine's step threads, so blocking code
cannot stall the other runs. A timeout (the step's, its workflow's, or ``THREADFLOW_STEP_TIMEOUT``) fails the
attempt with StepTimeout, and the step's retry policy decides what comes next.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from storage.faults import describe

from . import interrupts
from .errors import StepTimeout, UsageError
from .secrets import redact
from .step import Step

if TYPE_CHECKING:
    from .context import StepContext
    from .step_threads import StepThreads
    from .workflow import CommittedWorkflow

log = logging.getLogger("threadflow.engine")


def default_step_timeout() -> float | None:
    """``THREADFLOW_STEP_TIMEOUT`` (seconds); unset, empty or ``none``: no timeout."""
    text = os.environ.get("THREADFLOW_STEP_TIMEOUT", "").strip()
    if not text or text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"THREADFLOW_STEP_TIMEOUT must be a number of seconds or 'none', got {text!r}.") from None


def timeout_of(step: Step[Any, Any], wf: CommittedWorkflow, top: CommittedWorkflow, default: float | None) -> float | None:
    """The step's own timeout, else its workflow's (or the run's top workflow's), else the engine's."""
    for value in (step.timeout, wf.options.step_timeout, top.options.step_timeout):
        if value is not None:
            return value
    return default


async def call_step(
    step: Step[Any, Any], ctx: StepContext[Any], timeout: float | None, threads: Callable[[], StepThreads]
) -> Any:
    """One attempt: an ``async def`` on the event loop, a plain ``def`` in one of ``threads()``; within ``timeout``.

    The watchdog (``watchdog.py``) finds this frame on the loop's stack to name a step that blocks the loop.
    """
    if not step.is_async:
        return await _call_in_thread(step, ctx, timeout, threads())
    if timeout is None:
        return await step.fn(ctx)
    return await _call_with_timeout(step, ctx, timeout, threads)


#: How long a step told to stop (past its timeout, or its run canceled) may take to end before it is abandoned.
STOP_GRACE = 1.0
#: Tasks of ``async def`` steps told to stop that have not ended (referenced here, so they are not collected).
_stopping: set[asyncio.Task[Any]] = set()


def abandoned_steps() -> int:
    """``async def`` steps told to stop (timed out, or their run stopped) that have not ended yet."""
    return len(_stopping)


async def _call_with_timeout(
    step: Step[Any, Any], ctx: StepContext[Any], timeout: float, threads: Callable[[], StepThreads]
) -> Any:
    """An ``async def`` step with a timeout runs in a task of its own: one that swallows its cancel (a bare
    ``except:`` around an ``await``, a retry decorator catching BaseException) cannot hold its run. Past the
    timeout, or when the run stops, it is canceled and given STOP_GRACE to end; then it is abandoned as a thread
    is (left to run on, logged, its result dropped). Steps without a timeout stay inline (no task: the fast path)."""
    begun = time.monotonic()
    attempt = asyncio.ensure_future(_attempt(step, ctx, threads))
    try:
        done, _ = await asyncio.wait((attempt,), timeout=timeout)
    except asyncio.CancelledError:
        await _stop(attempt, ctx, f"run {ctx.run_id}: step {ctx.path!r} was stopped while it ran")
        raise
    if not done:
        await _stop(attempt, ctx, f"run {ctx.run_id}: step {ctx.path!r} ran past its timeout of {timeout:g} s")
        from .context import Halt

        if attempt.done() and not attempt.cancelled() and not attempt.result()[0] \
                and isinstance(attempt.result()[1], Halt):
            raise attempt.result()[1]  # it let the cancel go and asked a person as it ended: it suspended, as inline
        raise StepTimeout(ctx.path, timeout)
    returned, value = attempt.result()
    if not returned:
        raise value
    if time.monotonic() - begun > timeout:
        # It blocked the event loop past its deadline, so the timeout could not interrupt it: it is late all the same.
        raise StepTimeout(ctx.path, timeout)
    return value


async def _attempt(step: Step[Any, Any], ctx: StepContext[Any], threads: Callable[[], StepThreads]) -> tuple[bool, Any]:
    """The step in its task; what it raises is handed back as a value (in a task's own frame SystemExit or
    KeyboardInterrupt would stop the event loop, and an abandoned step's error would be logged as never retrieved).
    Through ``call_step``, whose frame the watchdog looks for."""
    try:
        return True, await call_step(step, ctx, None, threads)
    except BaseException as exc:  # noqa: BLE001 (sorted out by the caller, as an inline step's error is)
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise  # told to stop (see _stop)
        return False, exc


async def _stop(attempt: asyncio.Task[Any], ctx: StepContext[Any], what: str) -> None:
    """Cancel the step's task and wait up to STOP_GRACE for it to end; if it does not, it is abandoned (its ``ctx``
    says so: it can no longer suspend the run)."""
    attempt.cancel()
    _stopping.add(attempt)
    attempt.add_done_callback(_stopping.discard)
    await asyncio.wait((attempt,), timeout=STOP_GRACE)
    if not attempt.done():
        ctx.abandoned = True
        count = len(_stopping)
        log.warning("%s: it ignored its cancel for %g s and is left to finish on its own, its result dropped (%d "
                    "such step%s in this process); let CancelledError through (no bare `except:`)", what, STOP_GRACE,
                    count, "" if count == 1 else "s")


async def _call_in_thread(step: Step[Any, Any], ctx: StepContext[Any], timeout: float | None,
                          threads: StepThreads) -> Any:
    """A thread cannot be stopped: one that times out is abandoned (left to finish on its own, counted and
    logged; a daemon thread, so it does not hold the process at exit), and its result is dropped."""
    running = threads.submit(contextvars.copy_context().run, step.fn, ctx)
    future = asyncio.wrap_future(running)
    try:
        result = await asyncio.wait_for(future, timeout)
    except TimeoutError:
        if future.cancelled():
            threads.abandon(running, f"run {ctx.run_id}: step {ctx.path!r} ran past its timeout of {timeout:g} s")
            raise StepTimeout(ctx.path, timeout or 0.0) from None
        raise
    except asyncio.CancelledError:
        # The run was canceled (or the engine is closing) while the step ran: the thread goes on regardless.
        threads.abandon(running, f"run {ctx.run_id}: step {ctx.path!r} was stopped while it ran")
        raise
    if inspect.isawaitable(result):  # a callable object whose __call__ is async
        result = await result
    return result


def failure_message(exc: BaseException) -> str:
    """What a failure says, for people: never SQL text, never an empty string, never a token or key.

    The one source of a failed step's error text (its events, the run's error, the Slack thread, the inspector):
    a library's error may repeat a secret it was given (httpx names the URL, and Slack's Web API takes
    ``?token=``), so it is masked here as the traceback is."""
    return redact(_unmasked_message(exc))


def _unmasked_message(exc: BaseException) -> str:
    if type(exc).__module__.startswith(("sqlalchemy", "sqlite3", "asyncpg")):
        return describe(exc)
    try:
        text = str(exc)
    except Exception as failed:  # noqa: BLE001 (its own __str__ is broken: an API error formatting a field it lacks)
        text = f"(its message could not be read: str() raised {type(failed).__name__})"
    if isinstance(exc, asyncio.CancelledError):
        return text or "the step was not canceled, but something it awaited was (a task or future canceled elsewhere)"
    if isinstance(exc, SystemExit):
        return f"the step called sys.exit({exc.code!r})" if exc.code is not None else "the step called sys.exit()"
    return text or f"the step raised {type(exc).__name__}"


def is_shutdown(exc: BaseException) -> bool:
    """Whether ``exc`` stops this process's work (let it through) rather than failing a step or run.

    A CancelledError is a real cancel only if this task was asked to cancel (a cancel, a lease lost, the engine
    closing); one a step raises by itself is its failure. KeyboardInterrupt and SystemExit are real only after
    a signal reached the process (see ``interrupts.py``); a step's own ``sys.exit()`` is its failure.
    """
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return interrupts.from_signal(exc)
    return False
