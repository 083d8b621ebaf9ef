"""wait_set: an event wait with a timeout that a cancellation always reaches (unlike wait_for on Python 3.11)."""

from __future__ import annotations

import asyncio

import pytest

from workflows.waits import wait_set


async def test_returns_true_when_set_and_false_after_the_timeout() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5.0) is True
    assert await wait_set(event, 0) is True  # already set: no wait at all
    assert await wait_set(event, None) is True


async def test_a_cancel_in_the_same_turn_as_the_wake_up_is_not_lost() -> None:
    """The race behind the shutdown hangs: the event is set, and the waiter cancelled, before the waiter runs.
    ``asyncio.wait_for(event.wait(), 5)`` returns True here on Python 3.11 and the loop it sits in goes on."""
    event = asyncio.Event()
    woken = []

    async def background_loop() -> None:
        while True:
            woken.append(await wait_set(event, 5.0))
            event.clear()

    task = asyncio.get_running_loop().create_task(background_loop())
    await asyncio.sleep(0.01)  # waiting, with a timeout
    event.set()
    await asyncio.sleep(0)  # the wait inside has seen the event...
    task.cancel()  # ...and the shutdown cancels the loop before it runs again
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert task.cancelled()
