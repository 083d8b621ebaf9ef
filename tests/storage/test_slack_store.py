"""The Slack outbox's shared pacing (replicas on one database share each scope's budget of calls), and render leases.

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
from storage.slack_store import SlackRun, SlackStore, WantedMessage

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


async def test_the_render_leases_of_holders_that_are_gone_are_handed_back_and_no_others(
    replicas: tuple[SlackStore, SlackStore],
) -> None:
    """A process that died held its runs' render leases; whoever may tell it is gone (a process on its host) hands
    them back at once, so the runs are rendered without waiting for the leases to run out. A live holder keeps its."""
    store, _ = replicas
    for run_id in ("r-dead-1", "r-dead-2", "r-live"):
        await store.add_run(SlackRun(run_id=run_id, team_id="T0TEAM", channel_id="C0GENERAL", root_ts=None,
                                     thread_id=f"slack:T0TEAM:C0GENERAL:{run_id}", started_by=None, created_at=NOW))
    assert await store.claim_render("r-dead-1", "host:1:dead", 300)
    assert await store.claim_render("r-dead-2", "host:1:dead", 300)
    assert await store.claim_render("r-live", "host:2:live", 300)
    assert not await store.claim_render("r-dead-1", "host:3:new", 300)  # held: before, the new one had to wait

    assert await store.release_renders_of(lambda owner: owner == "host:1:dead") == {"host:1:dead": 2}
    assert await store.claim_render("r-dead-1", "host:3:new", 300)
    assert await store.claim_render("r-dead-2", "host:3:new", 300)
    assert not await store.claim_render("r-live", "host:3:new", 300)
    assert await store.release_renders_of(lambda owner: owner == "host:1:dead") == {}


async def test_a_cards_place_learned_from_a_click_is_recorded_once_and_leaves_it_to_be_edited(
    replicas: tuple[SlackStore, SlackStore],
) -> None:
    """``record_posted_ts``: the place of a card whose post was attempted and not recorded. The card stays pending (its
    sender edits it to the newest content); a place recorded first, by its sender, is kept and returned."""
    store, _ = replicas
    run = SlackRun(run_id="r1", team_id="T0TEAM", channel_id="C0GENERAL", root_ts="100.000001",
                   thread_id="slack:T0TEAM:C0GENERAL:100.000001", started_by=None, created_at=NOW)
    await store.add_run(run)
    await store.record(run, 1, [WantedMessage(key="approval:r1:go", kind="approval", channel_id="C0GENERAL",
                                              thread_ts="100.000001", content={"text": "Approval needed"})])
    assert await store.mark_attempt("approval:r1:go")  # posted; the answer was never recorded

    assert await store.record_posted_ts("approval:r1:go", "100.000002") == "100.000002"
    card = await store.approval_message("r1", "go")
    assert card is not None and card.ts == "100.000002" and card.state == "pending" and card.sent_version == 0
    assert card.attempt_started_at is None
    assert await store.record_posted_ts("approval:r1:go", "100.000003") == "100.000002"  # the first place stays
