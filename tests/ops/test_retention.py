"""Retention on a seeded database: a dry run changes nothing; a prune removes exactly the old finished runs
(with all their rows) and idle unreferenced threads, and keeps suspended runs and the threads they use."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import Database
from storage.database import insert_ignore
from storage.retention import DAY, prune
from storage.tables import (
    agent_contexts,
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
from workflows import Engine, StepContext, Workflow, step
from workflows.examples import builtin_workflows

NOW = time.time()
OLD = NOW - 40 * DAY

RUN_TABLES = (step_results, suspensions, events, signals, agent_contexts, slack_runs, slack_messages)


class Nothing(BaseModel):
    pass


@step(id="explode", input=Nothing, output=Nothing)
async def explode(ctx: StepContext[Nothing]) -> Nothing:
    raise RuntimeError("boom")


exploding = Workflow(id="exploding", input=Nothing).then(explode).commit()


async def finished(engine: Engine, workflow_id: str, data: Any = None, thread: str | None = None) -> str:
    handle = await engine.start(workflow_id, data, thread_id=thread)
    return (await handle.result()).run_id


async def seed(engine: Engine) -> dict[str, str]:
    """Runs of every kind, backdated where the test needs them old, plus memory and Slack rows."""
    ids = {
        "old_success": await finished(engine, "greet-user", {"name": "Ada"}, "t-old-done"),
        "old_failed": await finished(engine, "exploding", {}),
        "old_canceled": await finished(engine, "approval", {}),
        "old_suspended": await finished(engine, "approval", {}, "t-suspended"),
        "recent_success": await finished(engine, "greet-user", {"name": "Bo"}, "t-recent-run"),
    }
    await engine.cancel(ids["old_canceled"], by="test")
    old = [ids[k] for k in ("old_success", "old_failed", "old_canceled", "old_suspended")]

    async def rows(conn: AsyncConnection) -> None:
        await conn.execute(update(runs).where(runs.c.id.in_(old)).values(created_at=OLD, updated_at=OLD))
        await conn.execute(update(runs).where(runs.c.id.in_(old), runs.c.finished_at.is_not(None))
                           .values(finished_at=OLD))
        await conn.execute(insert(signals), [{"run_id": ids["old_failed"], "name": "ping", "data": None,
                                              "created_at": OLD}])
        for key in ("old_success", "old_suspended", "recent_success"):
            await conn.execute(insert(slack_runs).values(
                run_id=ids[key], team_id="T", channel_id="C", root_ts=f"{key}.1", thread_id=f"slack:T:C:{key}.1",
                started_by="U1", last_event_id=0, created_at=OLD))
        for key in ("old_canceled", "old_suspended"):
            await conn.execute(insert(slack_messages).values(
                key=f"approval:{ids[key]}:approve", run_id=ids[key], team_id="T", channel_id="C", thread_ts=f"{key}.1",
                kind="approval", seq=1, content={"text": "Approve?"}, version=1, sent_version=1, ts=f"{key}.2",
                state="sent", attempts=0, next_attempt_at=0.0, created_at=OLD, updated_at=OLD))
        await conn.execute(insert(slack_seen_events), [{"key": "ev-old", "seen_at": NOW - 2 * DAY},
                                                       {"key": "ev-new", "seen_at": NOW - 60}])
        for thread_id, at in (("t-old-done", OLD), ("t-suspended", OLD), ("t-idle", OLD), ("t-recent", OLD),
                              ("t-recent-run", OLD)):
            # (The engine made the threads of the runs started on one; backdated here like the rest.)
            await conn.execute(insert_ignore(engine.db, threads).values(
                id=thread_id, resource_id="slack:T:C", title=None, metadata=None, created_at=at, updated_at=at))
            await conn.execute(update(threads).where(threads.c.id == thread_id).values(
                resource_id="slack:T:C", created_at=at, updated_at=at))
        written = {}
        for thread_id, at in (("t-old-done", OLD), ("t-suspended", OLD), ("t-idle", OLD), ("t-idle", OLD),
                              ("t-recent", NOW - 60), ("t-recent-run", OLD)):
            result = await conn.execute(insert(messages).values(
                thread_id=thread_id, resource_id="slack:T:C", role="user", kind="message", author="U1",
                content=f"hello from {thread_id}", created_at=at).returning(messages.c.id))
            written[thread_id] = result.scalar_one()
        for thread_id in ("t-idle", "t-suspended"):
            await conn.execute(insert(message_vectors).values(message_id=written[thread_id], thread_id=thread_id,
                                                              resource_id="slack:T:C", model="m", vector=b"\0" * 8))
        await conn.execute(insert(working_memory), [
            {"scope": "thread", "key": "t-idle", "content": "idle notes", "updated_at": OLD},
            {"scope": "thread", "key": "t-suspended", "content": "kept notes", "updated_at": OLD},
            {"scope": "resource", "key": "slack:T:C", "content": "team notes", "updated_at": OLD},
        ])
        await conn.execute(insert(agent_contexts), [
            {"run_id": ids["old_success"], "path": "greet", "agent": "a", "thread_id": "t-old-done",
             "context": {}, "created_at": OLD},
            {"run_id": ids["old_suspended"], "path": "approve", "agent": "a", "thread_id": "t-suspended",
             "context": {}, "created_at": OLD},
            {"run_id": None, "path": None, "agent": "chat", "thread_id": "t-idle", "context": {}, "created_at": OLD},
            {"run_id": None, "path": None, "agent": "loose", "thread_id": None, "context": {}, "created_at": OLD},
            {"run_id": None, "path": None, "agent": "fresh", "thread_id": None, "context": {}, "created_at": NOW},
        ])

    await engine.db.write(rows)
    return ids


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table retention touches, as sortable tuples."""

    async def read(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for table in (runs, *RUN_TABLES, slack_seen_events, threads, messages, message_vectors, working_memory):
            key_cols = [c for c in table.c if c.name in ("id", "run_id", "path", "key", "scope", "thread_id",
                                                         "message_id", "name", "agent")]
            out[table.name] = sorted(tuple(str(v) for v in r) for r in await conn.execute(select(*key_cols)))
        return out

    return await db.read(read)


def only(rows: list[tuple[Any, ...]], keep: Callable[[tuple[Any, ...]], bool]) -> list[tuple[Any, ...]]:
    return [r for r in rows if keep(r)]


@pytest.fixture
async def seeded(db_url: str) -> Any:
    engine = Engine.from_url(db_url, poll_interval=0.05).register(exploding, *builtin_workflows())
    await engine.open()
    ids = await seed(engine)
    yield engine, ids
    await engine.close()


async def test_a_dry_run_counts_exactly_what_a_prune_deletes_and_changes_nothing(seeded: Any) -> None:
    engine, ids = seeded
    db = engine.db
    before = await snapshot(db)
    dry = await prune(db, older_than_days=30, now=NOW, dry_run=True)
    assert await snapshot(db) == before
    gone_runs = {ids["old_success"], ids["old_failed"], ids["old_canceled"]}
    assert dry.counts["runs"] == 3
    assert dry.counts["threads"] == 2  # t-old-done (its only run goes) and t-idle
    assert dry.counts["messages"] == 3 and dry.counts["message_vectors"] == 1 and dry.counts["working_memory"] == 1
    assert dry.counts["slack_runs"] == 1 and dry.counts["slack_messages"] == 1 and dry.counts["slack_seen_events"] == 1
    assert dry.counts["signals"] == 1
    assert dry.counts["agent_contexts"] == 3  # the old run's, the idle thread's, and the loose old one
    assert dry.counts["events"] == sum(1 for r in before["events"] if r[1] in gone_runs) > 0
    assert dry.counts["step_results"] == sum(1 for r in before["step_results"] if r[0] in gone_runs) > 0

    real = await prune(db, older_than_days=30, now=NOW, batch_size=2)  # batches smaller than the work
    assert real.counts == dry.counts and not real.dry_run
    after = await snapshot(db)
    kept_runs = {ids["old_suspended"], ids["recent_success"]}
    assert {r[0] for r in after["runs"]} == kept_runs
    for table in RUN_TABLES:
        run_col = [c.name for c in table.c if c.name in ("id", "run_id", "path", "key", "scope", "thread_id",
                                                          "message_id", "name", "agent")].index("run_id")
        assert only(after[table.name], lambda r, i=run_col: r[i] in gone_runs) == []
        assert only(after[table.name], lambda r, i=run_col: r[i] in kept_runs) == \
            only(before[table.name], lambda r, i=run_col: r[i] in kept_runs)
    assert {r[0] for r in after["threads"]} == {"t-suspended", "t-recent", "t-recent-run"}
    assert {r[1] for r in after["messages"]} == {"t-suspended", "t-recent", "t-recent-run"}
    assert [r[1] for r in after["message_vectors"]] == ["t-suspended"]
    assert after["working_memory"] == [("resource", "slack:T:C"), ("thread", "t-suspended")]
    assert [r[0] for r in after["slack_seen_events"]] == ["ev-new"]
    assert {r[3] for r in after["agent_contexts"]} == {"a", "fresh"}

    # Nothing is left to prune, and the kept suspended run still resumes.
    assert (await prune(db, older_than_days=30, now=NOW)).total == 0
    resumed = await engine.resume(ids["old_suspended"], data={"approved": True}, by="U1")
    assert (await resumed.result()).status == "success"


async def test_recall_still_works_after_messages_are_pruned(seeded: Any) -> None:
    from storage.memory_store import MemoryStore

    engine, _ = seeded
    await prune(engine.db, older_than_days=30, now=NOW)
    hits = await MemoryStore(engine.db).search_text("hello", resource_id="slack:T:C", limit=10)
    assert sorted(h.message.thread_id for h in hits) == ["t-recent", "t-recent-run", "t-suspended"]


async def test_prune_cli_dry_run_then_real(seeded: Any, cli: Any) -> None:
    engine, ids = seeded
    url = engine.db.url
    dry = cli("prune", "--dry-run", THREADFLOW_DATABASE_URL=url)
    assert dry.stdout.startswith("Would delete what finished or went idle more than 30 days ago")
    assert "runs" in dry.stdout and "Nothing was deleted (dry run)" in dry.stdout
    assert len(await engine.list_runs(limit=100)) == 5
    fifty = cli("prune", "--days", "50", THREADFLOW_DATABASE_URL=url).stdout  # runs are 40 days old
    assert "slack_seen_events" in fifty and "runs" not in fifty and len(await engine.list_runs(limit=100)) == 5
    done = cli("prune", "--json", THREADFLOW_DATABASE_URL=url, THREADFLOW_RETENTION_DAYS="30")

    report = json.loads(done.stdout)
    assert report["dry_run"] is False and report["counts"]["runs"] == 3 and report["days"] == 30
    assert {r.id for r in await engine.list_runs(limit=100)} == {ids["old_suspended"], ids["recent_success"]}
    assert cli("prune", THREADFLOW_DATABASE_URL=url).stdout.startswith("Nothing to prune")
    assert "must be zero or more" in cli("prune", "--days", "-1", expect=2, THREADFLOW_DATABASE_URL=url).stderr


@pytest.mark.parametrize("days", ["nan", "inf", "1e12"])
def test_prune_refuses_a_number_of_days_it_cannot_use(cli: Any, days: str) -> None:
    """Only ``< 0`` was refused: ``nan`` and a huge value crashed with a traceback (ValueError or OverflowError
    from time.gmtime), and ``--json`` with ``inf`` printed ``-Infinity`` as the cutoff, which is not JSON."""
    cli("migrate")
    for extra in ((), ("--json",)):
        proc = cli("prune", "--dry-run", "--days", days, *extra, expect=2)
        assert proc.stderr == f"error: --days must be zero or more, and at most 100000 days; got {float(days):g}.\n"
    proc = cli("prune", "--dry-run", expect=2, THREADFLOW_RETENTION_DAYS=days)  # (nan: refused with the settings)
    assert proc.stderr.startswith("error: ") and "THREADFLOW_RETENTION_DAYS" in proc.stderr, proc.stderr
