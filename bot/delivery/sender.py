"""Sending a run's outbox to Slack: a delivery is done only when Slack answered ``ok``.

For each message of the run that Slack has not taken yet: posts go out in the order they were planned
(an agent's output before the approval card that follows it), edits of the root and of approval cards at
most once per ``interval`` per message, always with the newest content. What Slack answers decides what
happens next:

Posts planned after an approval card's edit (the final reply after a decision) wait for that edit.

- ``ok``: the version sent is recorded (a newer one planned meanwhile stays pending);
- 429: the row waits for ``Retry-After`` (the pacing scope too, for every replica);
- 5xx, timeouts, dropped connections: backoff with jitter, capped, forever (across restarts);
- a refusal: a shorter version when the message was too long; a repost when the message is gone;
  otherwise the row fails with a log line and a metric (and nothing blocks behind it); a refused approval
  card is also told to whoever started the run, in an ephemeral, where Slack still takes one.

A post that may have reached Slack before its answer was lost (the process died, the answer timed out)
is looked up by its delivery id (message metadata) before it is posted again, so it never shows twice.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from storage.slack_store import OutboxMessage, SlackRun, SlackStore

from .. import blocks
from ..slack import (
    Permanent,
    RateLimited,
    SlackCallError,
    SlackClient,
    Transient,
    delivery_metadata,
    ts_of_delivery,
)
from ..slack.workspace import in_workspace

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .live import LiveSteps

log = logging.getLogger("threadflow.bot.delivery")

#: Refusals that mean the bot cannot post in the channel at all, so an ephemeral there would be refused too.
CHANNEL_UNREACHABLE = frozenset({"not_in_channel", "channel_not_found", "is_archived"})

#: Backoff after transient failures: 0.5 s, 1 s, 2 s, ... capped at five minutes, with jitter.
BACKOFF_CAP = 300.0


def backoff(attempts: int) -> float:
    return min(BACKOFF_CAP, 0.5 * 2.0 ** max(0, attempts - 1)) * (0.5 + random.random() / 2)


class Sender:
    def __init__(self, store: SlackStore, client: SlackClient, *, interval: float, metrics: Metrics | None = None) -> None:
        self.store = store
        self.client = client
        self.interval = interval
        self.metrics = metrics

    async def deliver(self, run: SlackRun, live: LiveSteps | None = None) -> float | None:
        """Send what is due for ``run``; returns when something is due next (None: all delivered).

        ``live``: the run's streamed agent steps; an output post whose step is streaming is delivered by
        ending that stream (see :mod:`bot.delivery.live`). Every call goes out with the token, and within the
        rate limits, of the run's own workspace."""
        with in_workspace(run.team_id, run.enterprise_id):
            return await self._deliver(run, live)

    async def _deliver(self, run: SlackRun, live: LiveSteps | None = None) -> float | None:
        next_due: float | None = None

        def later(at: float) -> None:
            nonlocal next_due
            next_due = at if next_due is None else min(next_due, at)

        posts_blocked = False
        for row in await self.store.pending_messages(run.run_id):
            now = time.time()
            if row.ts is None:
                # A message still to post: in planned order, each after the one before it has landed.
                if posts_blocked:
                    continue
                if row.next_attempt_at > now:
                    later(row.next_attempt_at)
                    posts_blocked = True
                    continue
                if not await self._post(run, row, live):
                    posts_blocked = True
                    latest = await self.store.get_message(row.key)
                    if latest is not None and latest.state == "pending":
                        later(latest.next_attempt_at)
            else:
                due = max(row.next_attempt_at, (row.last_sent_at or 0.0) + self.interval)
                if due > now:
                    later(due)
                    # A card's new state (a decision) shows before the posts planned after it (the final reply).
                    posts_blocked = posts_blocked or row.kind == "approval"
                    continue
                if not await self._update(run, row):
                    latest = await self.store.get_message(row.key)
                    if latest is not None and latest.state == "pending":
                        later(latest.next_attempt_at)
                        # A card Slack did not take its new state for yet (429, 5xx, no answer) holds back the posts
                        # planned after it, as a card waiting for its turn does: no final reply under a card still
                        # showing its buttons. (One Slack refused for good holds back nothing.)
                        posts_blocked = posts_blocked or row.kind == "approval"
                else:
                    latest = await self.store.get_message(row.key)
                    if latest is not None and latest.state == "pending":  # edited again meanwhile
                        later((latest.last_sent_at or now) + self.interval)
        return next_due

    # -- one message -------------------------------------------------------------------------------------

    async def _post(self, run: SlackRun, row: OutboxMessage, live: LiveSteps | None = None) -> bool:
        stream_info = (row.content or {}).get("stream")
        if live is not None and isinstance(stream_info, dict) and row.attempt_started_at is None:
            if await self._end_stream(row, live, stream_info):
                return True
            row = await self.store.get_message(row.key) or row
        previous = row.attempt_started_at
        if previous is not None:
            known, found = await self._find_posted(run, row)
            if not known:
                return False  # could not look yet (rate limited, Slack down): retried later
            if found is not None:
                # Slack has the version that attempt posted, which may be older than this one (a card decided or
                # withdrawn while the answer was lost): the place is recorded, and the message edited to the newest.
                await self.store.record_posted_ts(row.key, found)
                self._count(row, "found")
                return await self._update(run, row)
        await self.client.pacer.wait(self.client.scope_team, "chat.postMessage", row.channel_id)
        current = await self.store.get_message(row.key)  # newest content, after waiting for the slot
        if current is None or current.state != "pending" or current.ts is not None:
            return current is not None and current.state != "failed"
        content = current.content or {}
        if not await self.store.mark_attempt(row.key, previous):
            return False  # another sender is posting it (or died doing so): looked for on the next pass
        try:
            posted = await self.client.call(
                "chat.postMessage", channel=row.channel_id, pace=False, text=str(content.get("text") or " "),
                **_optional(blocks=content.get("blocks"), thread_ts=row.thread_ts),
                metadata=delivery_metadata(row.key),
            )
        except SlackCallError as exc:
            await self._failed(run, row, current, exc)
            return False
        await self.store.mark_sent(row.key, current.version, str(posted["ts"]))
        self._count(row, "sent")
        return True

    async def _end_stream(self, row: OutboxMessage, live: LiveSteps, info: dict[str, Any]) -> bool:
        """Deliver an agent step's output by ending its stream, when Slack shows one: the rest of the answer,
        the feedback buttons and this post's delivery id go with ``chat.stopStream``. False: post as usual
        (nothing on screen, or Slack took none of it; a lost answer is looked up by the delivery id first)."""
        stream = await live.take(str(info.get("path") or ""))  # waits for a call in flight (a stream starting)
        if stream is None:
            return False
        # Claimed like a post (compare-and-set): from here a crash means "maybe delivered", looked for first.
        if not await self.store.mark_attempt(row.key, None):
            return False  # another sender holds this delivery (a lost lease): it posts; Slack ends the stream
        content = row.content or {}
        under = [b for b in content.get("blocks") or [] if b.get("type") == "context_actions"]
        outcome = await stream.finish(str(info.get("answer") or ""), blocks=under, metadata=delivery_metadata(row.key),
                                      fallback_text=str(content.get("text") or ""))
        if outcome == "failed" or stream.ts is None:
            return False
        await self.store.mark_sent(row.key, row.version, stream.ts)
        self._count(row, "streamed" if outcome == "streamed" else "sent")
        return True

    async def _update(self, run: SlackRun, row: OutboxMessage) -> bool:
        await self.client.pacer.wait(self.client.scope_team, "chat.update", row.channel_id)
        current = await self.store.get_message(row.key)
        if current is None or current.state != "pending" or current.ts is None:
            return True
        content = current.content or {}
        try:
            await self.client.call("chat.update", channel=row.channel_id, pace=False, ts=current.ts,
                                   text=str(content.get("text") or " "), **_optional(blocks=content.get("blocks")))
        except SlackCallError as exc:
            await self._failed(run, row, current, exc)
            return False
        await self.store.mark_sent(row.key, current.version, current.ts)
        self._count(row, "sent")
        return True

    async def _failed(self, run: SlackRun, row: OutboxMessage, current: OutboxMessage, exc: SlackCallError) -> None:
        # Posts count their attempts as they start them (mark_attempt); edits count them here.
        count = current.ts is not None
        if isinstance(exc, RateLimited):
            await self.store.mark_retry(row.key, time.time() + max(exc.retry_after, 0.5), str(exc), count=count)
            self._count(row, "ratelimited")
            return
        if isinstance(exc, Transient):
            tries = current.attempts + (1 if count else 0)
            await self.store.mark_retry(row.key, time.time() + backoff(tries), str(exc), count=count,
                                        keep_attempt=exc.maybe_delivered and current.ts is None)
            self._count(row, "retried")
            log.info("Slack delivery %s will be retried: %s", row.key, exc)
            return
        assert isinstance(exc, Permanent)
        code = exc.code
        if code in ("message_not_found", "cant_update_message") and current.ts is not None and row.kind == "approval":
            log.warning("approval card %s is gone from Slack; posting it again", row.key)
            await self.store.forget_ts(row.key)
            self._count(row, "reposted")
            return
        content = current.content or {}
        if exc.too_large and not content.get("shortened"):
            log.warning("Slack refused %s (%s); sending a shorter version", row.key, code)
            await self.store.set_content(row.key, shortened(content))
            self._count(row, "shortened")
            return
        if code == "not_installed":  # (Slack was not called: there is no token for the workspace)
            log.error("dropped %s: the app is not installed in workspace %s (uninstalled, or its tokens revoked); "
                      "reinstall it there to get this run's later messages", row.key, row.team_id or "?")
        else:
            log.error("Slack refused %s for good (%s) in workspace %s: %s", row.key, code, row.team_id or "?",
                      advice(code))
        await self.store.mark_failed(row.key, code)
        self._count(row, "failed")
        if self.metrics is not None:
            self.metrics.slack_delivery_failures.labels(code).inc()
        await self._tell_starter(run, row, current, exc)

    async def _tell_starter(self, run: SlackRun, row: OutboxMessage, current: OutboxMessage, exc: Permanent) -> None:
        """An approval card Slack refused for good: tell whoever started the run, in an ephemeral, once per
        refusal (not again each time the card is retried and refused the same way). Where Slack would refuse
        the ephemeral too (the bot cannot reach the channel, its access is gone), the log line is all there is."""
        if (row.kind != "approval" or current.ts is not None or not run.started_by or exc.access_lost
                or exc.code in CHANNEL_UNREACHABLE or current.last_error == exc.code):
            return
        text = (f":warning: Slack refused the approval card of run `{run.run_id}` ({exc.code}): {advice(exc.code)}. "
                f"I will try again every few minutes while the run waits; `/flow status {run.run_id}` shows "
                "where it stands.")
        try:
            await self.client.post_ephemeral(run.channel_id, run.started_by, text)
        except SlackCallError as tell:
            log.warning("could not tell %s that the approval card of run %s was refused: %s", run.started_by,
                        run.run_id, tell)

    async def _find_posted(self, run: SlackRun, row: OutboxMessage) -> tuple[bool, str | None]:
        """Whether an earlier attempt of this post reached Slack: ``(known, ts)``; ``known`` is False when Slack
        could not be asked yet."""
        if row.thread_ts is None:
            return True, None  # only thread posts go through the outbox
        since = (row.attempt_started_at or time.time()) - 1.0
        try:
            replies = await self.client.thread_replies(row.channel_id, row.thread_ts, oldest=since)
        except Permanent:
            return True, None
        except (RateLimited, Transient) as exc:
            await self.store.mark_retry(row.key, time.time() + backoff(row.attempts + 1), f"lookup: {exc}",
                                        keep_attempt=True)
            return False, None
        return True, ts_of_delivery(replies, row.key)

    def _count(self, row: OutboxMessage, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.slack_deliveries.labels(row.kind, outcome).inc()


def _optional(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def shortened(content: dict[str, Any]) -> dict[str, Any]:
    """A version of a message Slack refused as too long or malformed: its text clipped, its buttons kept."""
    text = blocks.clip(str(content.get("text") or ""), 2000)
    kept = [b for b in content.get("blocks") or [] if b.get("type") in ("actions", "context")]
    return {"text": text, "blocks": [*blocks.text_reply(text), *kept], "shortened": True}


def advice(code: str) -> str:
    """What an operator should do about a refusal."""
    return {
        "not_in_channel": "invite the bot to the channel (/invite @threadflow)",
        "channel_not_found": "the channel is gone or the bot cannot see it",
        "is_archived": "the channel is archived",
        "thread_not_found": "the run's root message was deleted",
        "invalid_auth": "the bot token is invalid; reinstall the app",
        "token_revoked": "the app was uninstalled or its token revoked",
        "token_expired": "the bot token expired and could not be refreshed; check SLACK_CLIENT_SECRET, or reinstall",
        "account_inactive": "the app's token belongs to a deactivated account",
        "missing_scope": "the app lacks a scope; reinstall it from the current manifest",
        "restricted_action": "a workspace setting keeps the bot from posting in this channel",
    }.get(code, "see Slack's documentation of this error")
