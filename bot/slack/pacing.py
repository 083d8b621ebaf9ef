"""Staying within Slack's rate limits before Slack has to say so.

Slack limits each app per workspace and method ("tiers": Tier 2 about 20 calls a minute, Tier 3 about 50,
Tier 4 about 100) and ``chat.postMessage`` to about one message per second per channel. The bot paces
every call it makes to a little under those limits, with a reservation per scope kept in the database
(:meth:`storage.slack_store.SlackStore.reserve`), so replicas sharing a channel share its budget and a
burst of runs queues up instead of collecting 429s. A 429 that still comes (another app on the same
token, a stricter limit) pushes the scope's next slot past its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from storage.slack_store import SlackStore


@dataclass(frozen=True)
class Pace:
    """At most one call per ``interval`` seconds on average, with bursts of up to ``burst`` calls."""

    interval: float
    burst: int = 1
    per_channel: bool = False


def per_minute(calls: float, burst: int) -> Pace:
    return Pace(60.0 / calls, burst)


#: Slack's documented limits, paced a little under them (https://api.slack.com/apis/rate-limits).
TIER_2 = per_minute(18, 2)
TIER_3 = per_minute(45, 4)
TIER_4 = per_minute(90, 8)

PACES: dict[str, Pace] = {
    # "Special": about 1 message per second per channel (short bursts allowed; we don't use them).
    "chat.postMessage": Pace(1.05, 1, per_channel=True),
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.postEphemeral": TIER_4,
    "views.open": TIER_4,
    "views.update": TIER_4,
    # Tier 3 on paper; apps outside the Marketplace get about one call a minute since 2025 (both).
    "conversations.replies": Pace(60.0, 1),
    "conversations.history": Pace(60.0, 1),
    "conversations.info": TIER_3,
    "conversations.members": TIER_4,
    "users.info": TIER_4,
    "auth.test": TIER_4,
    # Streamed answers: a stream starts and stops on Tier 2, and is appended to on Tier 4, per workspace.
    "chat.startStream": TIER_2,
    "chat.appendStream": TIER_4,
    "chat.stopStream": TIER_2,
    # The assistant container ("special" for setStatus; paced like Tier 4, as its siblings are).
    "assistant.threads.setStatus": TIER_4,
    "assistant.threads.setSuggestedPrompts": TIER_4,
    "assistant.threads.setTitle": TIER_4,
}
DEFAULT_PACE = TIER_3


def pace_of(method: str) -> Pace:
    return PACES.get(method, DEFAULT_PACE)


def scope_of(team_id: str, method: str, channel: str | None) -> str:
    pace = pace_of(method)
    if pace.per_channel and channel:
        return f"{team_id}:{method}:{channel}"
    return f"{team_id}:{method}"


class Pacer:
    """Waits for a call's slot; shared by every call the bot makes to Slack."""

    def __init__(self, store: SlackStore, *, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled

    async def wait(self, team_id: str, method: str, channel: str | None = None) -> float:
        """Reserve the call's slot and sleep until it; returns the seconds waited."""
        if not self.enabled:
            return 0.0
        pace = pace_of(method)
        send_at = await self.store.reserve(scope_of(team_id, method, channel), pace.interval, pace.burst)
        delay = send_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
            return delay
        return 0.0

    async def hold(self, team_id: str, method: str, channel: str | None, retry_after: float) -> None:
        """Slack answered 429: nothing in this scope goes out before ``Retry-After`` has passed."""
        if not self.enabled:
            return
        pace = pace_of(method)
        await self.store.hold(scope_of(team_id, method, channel), time.time() + retry_after, pace.interval, pace.burst)
