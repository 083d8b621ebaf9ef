"""Slack at its worst, on demand: latency, rate limits, outages, slow and dropped answers.

Real Slack answers in 0.1–0.3 s, limits every app per workspace and method (Tier 2 about 20 calls a
minute, Tier 3 about 50, Tier 4 about 100; ``chat.postMessage`` about one per second per channel, with
short bursts) and answers 429 with ``Retry-After`` past them. A fake that answers instantly and never says
no hides every bug that depends on those, so the emulator can behave the same way:

- :class:`Latency`: each call of a method waits a random time in ``[low, high]`` before answering;
- :class:`RateLimits`: token buckets per workspace and method (per channel for ``chat.postMessage``) that
  answer 429 with ``Retry-After`` when empty;
- faults (see ``SlackWebApi.fail_next``): N consecutive 429s or 5xx, an error code, an answer slower than
  the client waits (applied or not), a connection dropped without an answer.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bucket:
    """``rate`` calls per second on average, at most ``capacity`` at once."""

    rate: float
    capacity: float


def per_minute(calls: float, capacity: float) -> Bucket:
    return Bucket(calls / 60.0, capacity)


TIER_1 = per_minute(1, 1)
TIER_2 = per_minute(20, 5)
TIER_3 = per_minute(50, 10)
TIER_4 = per_minute(100, 20)

#: Slack's documented limits (https://api.slack.com/apis/rate-limits and each method's page).
SLACK_LIMITS: dict[str, Bucket] = {
    "chat.postMessage": Bucket(1.0, 3),  # per channel; "short bursts" allowed
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.postEphemeral": TIER_4,
    "conversations.history": TIER_3,
    # Apps outside the Marketplace: 1 request a minute since 2025 (Tier 3 for Marketplace apps).
    "conversations.replies": TIER_1,
    "conversations.info": TIER_3,
    "conversations.members": TIER_4,
    "users.info": TIER_4,
    "users.conversations": TIER_3,
    "views.open": TIER_4,
    "views.update": TIER_4,
    "auth.test": per_minute(600, 100),
    # Streamed answers (each method's page): a stream starts and stops on Tier 2, is appended to on Tier 4.
    "chat.startStream": TIER_2,
    "chat.appendStream": TIER_4,
    "chat.stopStream": TIER_2,
    # The assistant container: setSuggestedPrompts and setTitle are Tier 4; setStatus has "special" limits
    # (not published; counted here like Tier 4).
    "assistant.threads.setStatus": TIER_4,
    "assistant.threads.setSuggestedPrompts": TIER_4,
    "assistant.threads.setTitle": TIER_4,
}
PER_CHANNEL = frozenset({"chat.postMessage"})


@dataclass
class _State:
    tokens: float
    at: float


@dataclass
class RateLimits:
    """Token buckets per (workspace, method[, channel]); ``check`` says how long to wait, or 0 to go."""

    limits: dict[str, Bucket] = field(default_factory=lambda: dict(SLACK_LIMITS))
    enabled: bool = False
    _buckets: dict[tuple[str, str, str], _State] = field(default_factory=dict)
    limited: int = 0

    def check(self, team: str, method: str, channel: str | None, now: float | None = None) -> float:
        """Take a token for this call; returns 0.0 when it may go, else the seconds until one is free."""
        bucket = self.limits.get(method)
        if not self.enabled or bucket is None:
            return 0.0
        now = time.monotonic() if now is None else now
        key = (team, method, (channel or "") if method in PER_CHANNEL else "")
        state = self._buckets.get(key)
        if state is None:
            state = self._buckets[key] = _State(bucket.capacity, now)
        state.tokens = min(bucket.capacity, state.tokens + (now - state.at) * bucket.rate)
        state.at = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return 0.0
        self.limited += 1
        return (1.0 - state.tokens) / bucket.rate

    @staticmethod
    def retry_after(wait: float) -> int:
        """Slack's ``Retry-After`` is whole seconds."""
        return max(1, math.ceil(wait))


@dataclass
class Latency:
    """How long each method takes to answer: ``(low, high)`` seconds, per method or ``"*"`` for all."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def set(self, method: str, low: float, high: float | None = None) -> None:
        self.ranges[method] = (low, low if high is None else high)

    def of(self, method: str) -> float:
        low, high = self.ranges.get(method) or self.ranges.get("*") or (0.0, 0.0)
        return random.uniform(low, high) if high > low else low


#: What ``threadflow dev --realistic-slack`` and the realistic tests switch on.
REALISTIC_LATENCY = (0.1, 0.3)
