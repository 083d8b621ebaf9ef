"""The Slack outbox's shared pacing: replicas on one database share each scope's budget of calls.

Slack limits an app per workspace (and ``chat.postMessage`` per channel), not per process; two replicas
that paced themselves alone would together send twice the rate and collect 429s. ``SlackStore.reserve``
hands out slots from one row per scope, so the slots every replica gets are spaced as if one process had
asked for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from storage import Database
from storage.slack_store import SlackStore

NOW = 1_800_000_000.0
SCOPE = "T0TEAM:chat.postMessage:C0GENERAL"


@pytest.fixture
async def replicas(db_url: str) -> AsyncIterator[tuple[SlackStore, SlackStore]]:
    first, second = Database(db_url), Database(db_url)
    await first.open()
    await second.open()
    yield SlackStore(first), SlackStore(second)
    await first.close()
    await second.close()


async def test_two_replicas_reserving_at_once_share_one_channels_pace(replicas: tuple[SlackStore, SlackStore]) -> None:
    a, b = replicas
    slots = await asyncio.gather(*(store.reserve(SCOPE, 1.05, 1, now=NOW) for _ in range(6) for store in (a, b)))
    ordered = sorted(slots)
    assert ordered[0] == NOW  # the first goes at once
    assert [round(later - earlier, 6) for earlier, later in zip(ordered, ordered[1:], strict=False)] == [1.05] * 11
    # another channel, or another method, has a budget of its own
    assert await a.reserve("T0TEAM:chat.postMessage:C0OTHER", 1.05, 1, now=NOW) == NOW
    assert await b.reserve("T0TEAM:chat.update", 60 / 45, 4, now=NOW) == NOW


async def test_a_burst_goes_at_once_then_the_pace_holds(replicas: tuple[SlackStore, SlackStore]) -> None:
    a, b = replicas
    interval = 60 / 45  # Tier 3, paced a little under Slack's 50 a minute, bursts of 4
    slots = sorted(await asyncio.gather(*(store.reserve("T0TEAM:chat.update", interval, 4, now=NOW)
                                          for _ in range(3) for store in (a, b))))
    assert slots[:4] == [NOW] * 4 and slots[4] == pytest.approx(NOW + interval)
    assert slots[5] == pytest.approx(NOW + 2 * interval)


async def test_a_retry_after_one_replica_got_holds_the_scope_for_the_other(
        replicas: tuple[SlackStore, SlackStore]) -> None:
    a, b = replicas
    assert await a.reserve(SCOPE, 1.05, 1, now=NOW) == NOW
    await a.hold(SCOPE, NOW + 30, 1.05, 1)  # Slack answered 429 with Retry-After: 30
    assert await b.reserve(SCOPE, 1.05, 1, now=NOW + 1) == NOW + 30
    assert await a.reserve(SCOPE, 1.05, 1, now=NOW + 1) == pytest.approx(NOW + 31.05)
