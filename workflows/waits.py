"""Waiting for an ``asyncio.Event`` with a timeout, in a way that never loses a cancellation.

On Python 3.11, ``asyncio.wait_for(event.wait(), timeout)`` runs the wait in a task of its own. When the event is
set and the waiting task is cancelled in the same turn of the loop (a wake-up racing a shutdown), ``wait_for``
sees the inner wait done and *returns its result*: the cancellation is swallowed (CPython gh-86296, fixed by the
rewrite of ``wait_for`` in 3.12). A background loop written as ``while True: ...; await wait_for(...)`` then
carries on, and whoever cancelled it and awaits it (``Engine.close``, ``DeliveryService.close``,
``Scheduler.stop``) waits forever. ``asyncio.timeout`` waits in the caller's own task, so a cancellation always
reaches it.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass (None: no limit); True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


__all__ = ["wait_set"]
