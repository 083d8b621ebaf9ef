"""What the bot shows in Slack, as data: which run lives in which thread, the outbox of messages, and pacing.

The outbox (``slack_messages``) holds one row per message the bot shows for a run: the root checklist, one
approval card per suspension, one row per thread post. A row says what the message should say now
(``content``, ``version``) and how much of that Slack has taken (``sent_version``, ``ts``). Deliveries are
planned from the run's events and recorded together with the render offset, so a restarted or another
replica carries on where the last one stopped; a delivery counts as done only when Slack answered ``ok``.

``slack_pacing`` keeps Slack's rate limits as reservations every replica shares (GCRA: one "theoretical
arrival time" per scope), so two replicas posting in one channel still stay within its limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, insert_ignore, knowing_retries
from .tables import events, runs, slack_features, slack_messages, slack_pacing, slack_runs, slack_seen_events

MessageKind = Literal["root", "approval", "post"]
MessageState = Literal["pending", "sent", "failed"]


class SlackRun(BaseModel):
    run_id: str
    team_id: str
    channel_id: str
    root_ts: str | None
    thread_id: str
    started_by: str | None
    last_event_id: int = 0
    created_at: float
    renderer: str | None = None
    renderer_expires_at: float | None = None
    #: Where the run's replies go when not in its root message's thread (a run started in an assistant thread).
    thread_ts: str | None = None
    #: The Enterprise Grid org of the run's workspace (None outside Grid).
    enterprise_id: str | None = None

    @property
    def reply_ts(self) -> str | None:
        """The thread the run's posts and approval cards go to."""
        return self.thread_ts or self.root_ts


class SlackFeature(BaseModel):
    """What the bot learnt about one Slack feature in one workspace (``slack_features``)."""

    team_id: str
    feature: str
    state: str
    detail: str | None = None
    updated_at: float


class WantedMessage(BaseModel):
    """What one message of a run should say now (the planner's output; recorded with the render offset).

    ``root`` and ``approval`` messages are edited in place (latest content wins); a ``post`` is posted once.
    """

    key: str
    kind: MessageKind
    channel_id: str
    thread_ts: str | None = None
    seq: int = 0
    content: dict[str, Any]


class OutboxMessage(BaseModel):
    """One outbox row as stored."""

    key: str
    run_id: str | None
    team_id: str
    channel_id: str
    thread_ts: str | None
    kind: MessageKind
    seq: int
    content: dict[str, Any] | None
    version: int
    sent_version: int
    ts: str | None
    state: MessageState
    attempts: int
    next_attempt_at: float
    attempt_started_at: float | None
    last_sent_at: float | None
    last_error: str | None
    created_at: float
    updated_at: float

    @property
    def posted(self) -> bool:
        return self.ts is not None


def approval_key(run_id: str, path: str) -> str:
    return f"approval:{run_id}:{path}"


def root_key(run_id: str) -> str:
    return f"root:{run_id}"


class SlackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- runs shown in Slack -----------------------------------------------------------------------------

    async def add_run(self, run: SlackRun, root_content: dict[str, Any] | None = None) -> None:
        """Record a run shown in Slack and, when its root message is already posted, that message."""
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert(slack_runs).values(**run.model_dump()))
            if run.root_ts is not None:
                await conn.execute(insert(slack_messages).values(
                    key=root_key(run.run_id), run_id=run.run_id, team_id=run.team_id, channel_id=run.channel_id,
                    thread_ts=None, kind="root", seq=0, content=root_content, version=1, sent_version=1,
                    ts=run.root_ts, state="sent", attempts=1, next_attempt_at=0.0, last_sent_at=now,
                    created_at=now, updated_at=now,
                ))

        await self.db.write(op)

    async def get_run(self, run_id: str) -> SlackRun | None:
        async def op(conn: AsyncConnection) -> SlackRun | None:
            row = (await conn.execute(select(slack_runs).where(slack_runs.c.run_id == run_id))).mappings().first()
            return SlackRun.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def recent_runs(self, team_id: str, enterprise_id: str | None = None, *, limit: int = 200) -> list[SlackRun]:
        """The newest runs shown in one workspace (an org-wide install: in the org), newest first."""

        async def op(conn: AsyncConnection) -> list[SlackRun]:
            where = (slack_runs.c.enterprise_id == enterprise_id if enterprise_id
                     else slack_runs.c.team_id == team_id)
            q = select(slack_runs).where(where).order_by(slack_runs.c.created_at.desc()).limit(limit)
            return [SlackRun.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def run_for_thread(self, thread_id: str) -> SlackRun | None:
        """The most recent run whose root message starts this Slack thread."""

        async def op(conn: AsyncConnection) -> SlackRun | None:
            q = select(slack_runs).where(slack_runs.c.thread_id == thread_id).order_by(slack_runs.c.created_at.desc())
            row = (await conn.execute(q.limit(1))).mappings().first()
            return SlackRun.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def runs_needing_render(self, now: float | None = None) -> list[SlackRun]:
        """Runs shown in Slack that nobody live renders although they need it: the run goes on, events are not
        planned yet, or messages are not delivered yet (after a restart, a crash, or a long Slack outage)."""
        now = time.time() if now is None else now
        latest = select(func.max(events.c.id)).where(events.c.run_id == slack_runs.c.run_id).scalar_subquery()
        undelivered = exists().where(slack_messages.c.run_id == slack_runs.c.run_id, slack_messages.c.state == "pending")

        async def op(conn: AsyncConnection) -> list[SlackRun]:
            q = (
                select(slack_runs)
                .join(runs, runs.c.id == slack_runs.c.run_id)
                .where(
                    or_(slack_runs.c.renderer.is_(None), slack_runs.c.renderer_expires_at < now),
                    or_(runs.c.status.not_in(("success", "failed", "canceled")), slack_runs.c.last_event_id < latest,
                        undelivered),
                )
            )
            return [SlackRun.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def claim_render(self, run_id: str, owner: str, lease: float) -> bool:
        """Become the one process rendering this run (compare-and-set on the render lease)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                update(slack_runs)
                .where(
                    slack_runs.c.run_id == run_id,
                    or_(slack_runs.c.renderer.is_(None), slack_runs.c.renderer == owner,
                        slack_runs.c.renderer_expires_at < now),
                )
                .values(renderer=owner, renderer_expires_at=now + lease)
            )
            return bool(res.rowcount)

        return await self.db.write(op)

    async def renew_renders(self, owner: str, run_ids: list[str], lease: float) -> None:
        if not run_ids:
            return
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id.in_(run_ids), slack_runs.c.renderer == owner)
                .values(renderer_expires_at=now + lease)
            )

        await self.db.write(op)

    async def release_renders_of(self, is_gone: Callable[[str], bool]) -> dict[str, int]:
        """Hand back the render leases of every holder ``is_gone`` says no longer exists (a process on this host that
        died): the runs they rendered are rendered by whoever claims them next, without waiting for the leases to
        run out. Returns how many runs each such holder held."""

        async def op(conn: AsyncConnection) -> dict[str, int]:
            held = (await conn.execute(
                select(slack_runs.c.renderer, func.count()).where(slack_runs.c.renderer.is_not(None))
                .group_by(slack_runs.c.renderer)
            )).all()
            gone = {owner: count for owner, count in held if is_gone(owner)}
            if gone:
                await conn.execute(
                    update(slack_runs).where(slack_runs.c.renderer.in_(list(gone)))
                    .values(renderer=None, renderer_expires_at=None)
                )
            return gone

        return await self.db.write(op)

    async def release_render(self, run_id: str, owner: str) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id == run_id, slack_runs.c.renderer == owner)
                .values(renderer=None, renderer_expires_at=None)
            )

        await self.db.write(op)

    # -- the outbox --------------------------------------------------------------------------------------

    async def record(self, run: SlackRun, upto_event_id: int, wanted: list[WantedMessage]) -> None:
        """Record what the run's messages should say after the events up to ``upto_event_id``, and that offset,
        in one transaction: a crash leaves either both or neither, so nothing is planned twice or lost.

        Posts are inserted once; root and approval messages get the new content as a new version when it
        differs from what they hold (an update that arrives while an older version is being sent is kept).
        """
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            keys = [w.key for w in wanted]
            current = {
                r["key"]: r for r in (await conn.execute(
                    select(slack_messages.c.key, slack_messages.c.content, slack_messages.c.version,
                           slack_messages.c.state).where(slack_messages.c.key.in_(keys))
                )).mappings()
            } if keys else {}
            for w in wanted:
                row = current.get(w.key)
                if row is None:
                    await conn.execute(insert_ignore(self.db, slack_messages).values(
                        key=w.key, run_id=run.run_id, team_id=run.team_id, channel_id=w.channel_id,
                        thread_ts=w.thread_ts, kind=w.kind, seq=w.seq, content=w.content, version=1,
                        sent_version=0, ts=None, state="pending", attempts=0, next_attempt_at=0.0,
                        created_at=now, updated_at=now,
                    ))
                elif w.kind != "post" and row["content"] != w.content:
                    await conn.execute(
                        update(slack_messages).where(slack_messages.c.key == w.key).values(
                            content=w.content, version=slack_messages.c.version + 1, updated_at=now,
                            # a failed message gets another chance with the new content (a shorter one, say)
                            state="pending", next_attempt_at=0.0,
                        )
                    )
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id == run.run_id, slack_runs.c.last_event_id < upto_event_id)
                .values(last_event_id=upto_event_id)
            )

        await self.db.write(op)

    async def pending_messages(self, run_id: str) -> list[OutboxMessage]:
        """The run's messages Slack has not taken yet, in the order they were planned."""

        async def op(conn: AsyncConnection) -> list[OutboxMessage]:
            q = (select(slack_messages)
                 .where(slack_messages.c.run_id == run_id, slack_messages.c.state == "pending")
                 .order_by(slack_messages.c.seq, slack_messages.c.created_at, slack_messages.c.key))
            return [OutboxMessage.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def messages_of(self, run_id: str) -> list[OutboxMessage]:
        async def op(conn: AsyncConnection) -> list[OutboxMessage]:
            q = select(slack_messages).where(slack_messages.c.run_id == run_id).order_by(
                slack_messages.c.seq, slack_messages.c.created_at, slack_messages.c.key)
            return [OutboxMessage.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def get_message(self, key: str) -> OutboxMessage | None:
        async def op(conn: AsyncConnection) -> OutboxMessage | None:
            row = (await conn.execute(select(slack_messages).where(slack_messages.c.key == key))).mappings().first()
            return OutboxMessage.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def message_at(self, channel_id: str, ts: str) -> OutboxMessage | None:
        """The outbox row of the message Slack shows at ``ts`` in ``channel_id``, if the bot posted it."""

        async def op(conn: AsyncConnection) -> OutboxMessage | None:
            q = select(slack_messages).where(slack_messages.c.channel_id == channel_id, slack_messages.c.ts == ts)
            row = (await conn.execute(q.limit(1))).mappings().first()
            return OutboxMessage.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def approval_message(self, run_id: str, path: str) -> OutboxMessage | None:
        """The approval card of a suspension, once planned (its ``ts`` once Slack took it)."""
        return await self.get_message(approval_key(run_id, path))

    async def mark_attempt(self, key: str, previous: float | None = None) -> bool:
        """Claim the next post of this message (compare-and-set on the last attempt's mark, ``previous``: None,
        or the mark of an attempt that was looked for in Slack and not found): False when another sender holds
        an attempt.

        The mark also tells the next sender, if this process dies before Slack's answer is recorded, that the
        post may exist: it looks for it by its delivery id instead of posting twice."""
        now = time.time()
        column = slack_messages.c.attempt_started_at
        unclaimed = column.is_(None) if previous is None else column == previous

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(update(slack_messages).where(
                slack_messages.c.key == key, unclaimed, slack_messages.c.ts.is_(None),
            ).values(attempt_started_at=now, attempts=slack_messages.c.attempts + 1, updated_at=now))
            return bool(res.rowcount)

        return await self.db.write(op)

    async def mark_sent(self, key: str, version: int, ts: str) -> bool:
        """Slack took ``version`` of the message (``ts`` is where it lives). True when that is the latest."""
        now = time.time()

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                update(slack_messages)
                .where(slack_messages.c.key == key, slack_messages.c.sent_version < version)
                .values(sent_version=version, ts=func.coalesce(slack_messages.c.ts, ts), last_sent_at=now,
                        attempt_started_at=None, last_error=None, updated_at=now, next_attempt_at=0.0, attempts=0)
            )
            await conn.execute(
                update(slack_messages)
                .where(slack_messages.c.key == key, slack_messages.c.sent_version >= slack_messages.c.version)
                .values(state="sent")
            )
            return bool(res.rowcount)

        return await self.db.write(op)

    async def record_posted_ts(self, key: str, ts: str) -> str | None:
        """Where a post that Slack took lives, learned from elsewhere than Slack's answer to it (a click on it, or a
        lookup by its delivery id), if none is recorded yet; the ts recorded afterwards (another one if a sender
        recorded its own first).

        Only the place is recorded, not which version Slack took: the message stays pending, so its sender edits
        it to the newest content (one ``chat.update`` more if it was the newest already)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> str | None:
            await conn.execute(
                update(slack_messages).where(slack_messages.c.key == key, slack_messages.c.ts.is_(None))
                .values(ts=ts, attempt_started_at=None, next_attempt_at=0.0, attempts=0, updated_at=now)
            )
            row = (await conn.execute(select(slack_messages.c.ts).where(slack_messages.c.key == key))).first()
            return None if row is None else row[0]

        return await self.db.write(op)

    async def mark_retry(self, key: str, at: float, error: str, *, keep_attempt: bool = False,
                         count: bool = False) -> None:
        """Try again at ``at``; ``keep_attempt`` when the last try may have reached Slack (a timeout);
        ``count`` adds the failed try to ``attempts`` (posts count theirs when they start)."""
        now = time.time()
        values: dict[str, Any] = {"next_attempt_at": at, "last_error": error[:500], "updated_at": now}
        if not keep_attempt:
            values["attempt_started_at"] = None
        if count:
            values["attempts"] = slack_messages.c.attempts + 1

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(slack_messages).where(slack_messages.c.key == key).values(**values))

        await self.db.write(op)

    async def mark_failed(self, key: str, error: str) -> None:
        """Slack refused the message for good (``channel_not_found``, ``is_archived``, ...)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(slack_messages).where(slack_messages.c.key == key).values(
                state="failed", last_error=error[:500], attempt_started_at=None, updated_at=now))

        await self.db.write(op)

    async def forget_ts(self, key: str) -> None:
        """The message is gone from Slack (deleted): post it again."""
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(slack_messages).where(slack_messages.c.key == key).values(
                ts=None, sent_version=0, state="pending", next_attempt_at=0.0, attempt_started_at=None,
                updated_at=now))

        await self.db.write(op)

    async def set_content(self, key: str, content: dict[str, Any]) -> None:
        """Replace a message's wanted content (a shorter version of one Slack refused as too long)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(slack_messages).where(slack_messages.c.key == key).values(
                content=content, version=slack_messages.c.version + 1, state="pending", next_attempt_at=0.0,
                attempt_started_at=None, updated_at=now))

        await self.db.write(op)

    async def retry_refused_cards(self, after: float) -> int:
        """Approval cards Slack refused for good more than ``after`` seconds ago go back in the queue while their
        run still waits (the bot may have been invited since, the channel unarchived): a suspended run must
        end up with a card someone can click."""
        now = time.time()
        waiting = select(runs.c.id).where(runs.c.status == "suspended")

        async def op(conn: AsyncConnection) -> int:
            res = await conn.execute(
                update(slack_messages)
                .where(slack_messages.c.kind == "approval", slack_messages.c.state == "failed",
                       slack_messages.c.updated_at < now - after, slack_messages.c.run_id.in_(waiting))
                .values(state="pending", next_attempt_at=0.0, updated_at=now)
            )
            return int(res.rowcount or 0)

        return await self.db.write(op)

    async def delivery_counts(self) -> dict[str, int]:
        """Outbox rows by state (for ``/metrics``)."""

        async def op(conn: AsyncConnection) -> dict[str, int]:
            q = select(slack_messages.c.state, func.count()).group_by(slack_messages.c.state)
            return {str(state): int(n) for state, n in (await conn.execute(q)).all()}

        return await self.db.read(op)

    # -- pacing ------------------------------------------------------------------------------------------

    async def reserve(self, scope: str, interval: float, burst: int, now: float | None = None) -> float:
        """Reserve the next slot of ``scope`` (one call per ``interval`` seconds, bursts of ``burst``): returns
        the time the call may go out. Atomic across replicas (GCRA on a shared row)."""
        now = time.time() if now is None else now
        tolerance = max(0, burst - 1) * interval

        async def op(conn: AsyncConnection) -> float:
            await conn.execute(insert_ignore(self.db, slack_pacing).values(scope=scope, tat=now))
            q = select(slack_pacing.c.tat).where(slack_pacing.c.scope == scope)
            if not self.db.is_sqlite:
                q = q.with_for_update()
            tat = float((await conn.execute(q)).scalar_one())
            send_at = max(now, tat - tolerance)
            await conn.execute(update(slack_pacing).where(slack_pacing.c.scope == scope).values(
                tat=max(tat, send_at) + interval))
            return send_at

        return await self.db.write(op)

    async def hold(self, scope: str, until: float, interval: float, burst: int) -> None:
        """Slack said wait (``Retry-After``): no call in ``scope`` goes out before ``until``."""
        tolerance = max(0, burst - 1) * interval
        target = until + tolerance

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert_ignore(self.db, slack_pacing).values(scope=scope, tat=target))
            await conn.execute(update(slack_pacing).where(slack_pacing.c.scope == scope, slack_pacing.c.tat < target)
                               .values(tat=target))

        await self.db.write(op)

    # -- workspace features ------------------------------------------------------------------------------

    async def set_feature(self, team_id: str, feature: str, state: str, detail: str | None = None) -> None:
        """Record what Slack said about ``feature`` in the workspace (``streaming`` refused, ``assistant`` seen)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert_ignore(self.db, slack_features).values(
                team_id=team_id, feature=feature, state=state, detail=detail, updated_at=now))
            await conn.execute(update(slack_features).where(
                slack_features.c.team_id == team_id, slack_features.c.feature == feature,
            ).values(state=state, detail=detail, updated_at=now))

        await self.db.write(op)

    async def feature(self, team_id: str, feature: str) -> SlackFeature | None:
        async def op(conn: AsyncConnection) -> SlackFeature | None:
            row = (await conn.execute(select(slack_features).where(
                slack_features.c.team_id == team_id, slack_features.c.feature == feature))).mappings().first()
            return SlackFeature.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def features(self) -> list[SlackFeature]:
        async def op(conn: AsyncConnection) -> list[SlackFeature]:
            q = select(slack_features).order_by(slack_features.c.team_id, slack_features.c.feature)
            return [SlackFeature.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    # -- Slack events seen -------------------------------------------------------------------------------

    async def mark_seen(self, key: str) -> bool:
        """Mark a Slack event/message as handled; True only for the first caller (insert-if-absent).

        Run again after a commit whose answer was lost (a dropped connection), the insert finds the row this very call
        wrote (its ``seen_at``): that is still the first caller, not a replay."""
        now = time.time()

        async def op(conn: AsyncConnection, retried: bool) -> bool:
            res = await conn.execute(insert_ignore(self.db, slack_seen_events).values(key=key, seen_at=now))
            if res.rowcount or not retried:
                return bool(res.rowcount)
            seen_at = (await conn.execute(
                select(slack_seen_events.c.seen_at).where(slack_seen_events.c.key == key))).scalar_one_or_none()
            return seen_at == now

        return await self.db.write(knowing_retries(op))


__all__ = [
    "MessageKind",
    "OutboxMessage",
    "SlackFeature",
    "SlackRun",
    "SlackStore",
    "WantedMessage",
    "approval_key",
    "root_key",
]
