"""Retention: delete finished runs and idle memory threads older than a cutoff, in small batches.

What goes:
- runs that finished (success, failed, canceled) before the cutoff, with every row keyed by their id:
  step results, suspensions, events, signals, agent context records, agent progress a crash left behind,
  and the Slack mapping (root message and approval messages);
- Slack event ids seen more than a day ago (they only guard against Slack's retries, which stop after
  minutes);
- memory threads whose last activity is before the cutoff and that no kept run refers to, with their
  messages (the full-text index follows by trigger on SQLite, by index on PostgreSQL), message vectors,
  thread-scoped working memory and agent context records made outside any run.

What stays: every run that is not finished (pending, running, waiting, suspended) whatever its age, and
every thread such a run or any newer run uses. A dry run counts with the very same predicates.

Why batches: on SQLite each batch holds the one write lock briefly, so a prune of a large database never
stalls the bot; each batch deletes a run's rows together, so no half-deleted run is ever visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .records import TERMINAL_STATUSES
from .tables import (
    agent_contexts,
    agent_progress,
    events,
    message_vectors,
    messages,
    runs,
    signals,
    slack_messages,
    slack_runs,
    slack_seen_events,
    step_results,
    suspensions,
    threads,
    working_memory,
)

DAY = 86_400.0
#: Slack retries an event for minutes; a day of seen ids is plenty to drop duplicates.
SEEN_EVENTS_KEEP = DAY
DEFAULT_BATCH = 500

#: Tables whose rows belong to one run, keyed by ``run_id``.
_RUN_TABLES = (step_results, suspensions, events, signals, agent_contexts, agent_progress, slack_runs,
               slack_messages)

TABLES = ("runs", *(t.name for t in _RUN_TABLES), "slack_seen_events", "threads", "messages",
          "message_vectors", "working_memory")


@dataclass
class PruneReport:
    """Rows deleted (or, for a dry run, that would be deleted) per table."""

    cutoff: float
    dry_run: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, table: str, n: int) -> None:
        self.counts[table] = self.counts.get(table, 0) + n


def _old_finished(cutoff: float) -> ColumnElement[bool]:
    finished = func.coalesce(runs.c.finished_at, runs.c.updated_at)
    return and_(runs.c.status.in_(tuple(TERMINAL_STATUSES)), finished < cutoff)


def _prunable_threads(cutoff: float) -> ColumnElement[bool]:
    """Idle since the cutoff (thread and messages) and used by no run that is kept."""
    kept = not_(_old_finished(cutoff))
    kept_run_uses_it = exists().where(and_(runs.c.thread_id == threads.c.id, kept))
    kept_run_wrote_in_it = exists().where(
        and_(messages.c.thread_id == threads.c.id, messages.c.run_id == runs.c.id, kept))
    recent_message = exists().where(and_(messages.c.thread_id == threads.c.id, messages.c.created_at >= cutoff))
    return and_(threads.c.updated_at < cutoff, ~kept_run_uses_it, ~kept_run_wrote_in_it, ~recent_message)


def _loose_contexts(cutoff: float) -> ColumnElement[bool]:
    """Agent context records made outside any run and any memory thread, older than the cutoff."""
    return and_(agent_contexts.c.run_id.is_(None), agent_contexts.c.thread_id.is_(None),
                agent_contexts.c.created_at < cutoff)


async def prune(
    db: Database, *, older_than_days: float, now: float | None = None, dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> PruneReport:
    """Delete (or with ``dry_run`` only count) what is older than ``older_than_days``; see the module doc."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be zero or more")
    now = time.time() if now is None else now
    cutoff = now - older_than_days * DAY
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        await db.read(lambda conn: _count(conn, cutoff, now, report))
        return report
    # Threads first: the test "no kept run uses it" must see the runs that are about to go as still there
    # (they are not kept, so they do not protect a thread), which is what the dry run sees too.
    while await db.write(lambda conn: _delete_threads(conn, cutoff, batch_size, report)):
        pass
    while await db.write(lambda conn: _delete_runs(conn, cutoff, batch_size, report)):
        pass
    report.add("slack_seen_events", await db.write(lambda conn: _delete_seen(conn, now)))
    report.add("agent_contexts", await db.write(lambda conn: _deleted(conn, delete(agent_contexts).where(
        _loose_contexts(cutoff)))))
    return report


async def _scalar(conn: AsyncConnection, query: Any) -> int:
    return int((await conn.execute(query)).scalar_one() or 0)


async def _count(conn: AsyncConnection, cutoff: float, now: float, report: PruneReport) -> None:
    old_runs = select(runs.c.id).where(_old_finished(cutoff))
    old_threads = select(threads.c.id).where(_prunable_threads(cutoff))
    report.add("runs", await _scalar(conn, select(func.count()).select_from(old_runs.subquery())))
    for table in _RUN_TABLES:
        where: ColumnElement[bool] = table.c.run_id.in_(old_runs)
        if table is agent_contexts:
            where = or_(where, and_(table.c.run_id.is_(None), table.c.thread_id.in_(old_threads)),
                        _loose_contexts(cutoff))
        report.add(table.name, await _scalar(conn, select(func.count()).select_from(table).where(where)))
    report.add("threads", await _scalar(conn, select(func.count()).select_from(old_threads.subquery())))
    for table in (messages, message_vectors):
        report.add(table.name, await _scalar(
            conn, select(func.count()).select_from(table).where(table.c.thread_id.in_(old_threads))))
    report.add("working_memory", await _scalar(conn, select(func.count()).select_from(working_memory).where(
        working_memory.c.scope == "thread", working_memory.c.key.in_(old_threads))))
    report.add("slack_seen_events", await _scalar(conn, select(func.count()).select_from(slack_seen_events).where(
        slack_seen_events.c.seen_at < now - SEEN_EVENTS_KEEP)))


async def _deleted(conn: AsyncConnection, statement: Any) -> int:
    return int((await conn.execute(statement)).rowcount or 0)


async def _delete_runs(conn: AsyncConnection, cutoff: float, batch_size: int, report: PruneReport) -> bool:
    """One batch of old finished runs and their rows; False when there are none left."""
    ids = [r[0] for r in await conn.execute(select(runs.c.id).where(_old_finished(cutoff)).limit(batch_size))]
    if not ids:
        return False
    for table in _RUN_TABLES:
        report.add(table.name, await _deleted(conn, delete(table).where(table.c.run_id.in_(ids))))
    report.add("runs", await _deleted(conn, delete(runs).where(runs.c.id.in_(ids))))
    return True


async def _delete_threads(conn: AsyncConnection, cutoff: float, batch_size: int, report: PruneReport) -> bool:
    """One batch of idle, unreferenced memory threads and everything stored under them."""
    ids = [r[0] for r in await conn.execute(select(threads.c.id).where(_prunable_threads(cutoff)).limit(batch_size))]
    if not ids:
        return False
    report.add("message_vectors", await _deleted(conn, delete(message_vectors).where(message_vectors.c.thread_id.in_(ids))))
    report.add("messages", await _deleted(conn, delete(messages).where(messages.c.thread_id.in_(ids))))
    report.add("working_memory", await _deleted(conn, delete(working_memory).where(
        working_memory.c.scope == "thread", working_memory.c.key.in_(ids))))
    report.add("agent_contexts", await _deleted(conn, delete(agent_contexts).where(
        agent_contexts.c.run_id.is_(None), agent_contexts.c.thread_id.in_(ids))))
    report.add("threads", await _deleted(conn, delete(threads).where(threads.c.id.in_(ids))))
    return True


async def _delete_seen(conn: AsyncConnection, now: float) -> int:
    return await _deleted(conn, delete(slack_seen_events).where(slack_seen_events.c.seen_at < now - SEEN_EVENTS_KEEP))


__all__ = ["PruneReport", "TABLES", "prune"]
