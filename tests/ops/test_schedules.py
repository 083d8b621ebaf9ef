"""Scheduled runs: fired once per due time, by one replica, missed times once; a controllable clock, no sleeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from storage.errors import DatabaseUnavailable
from storage.schedule_store import ScheduleRecord, ScheduleStore
from tests.helpers import eventually
from tests.helpers.pg_wire import blackhole
from tests.ops.conftest import FakeClock
from workflows import Engine
from workflows.errors import WorkflowNotFound
from workflows.examples import builtin_workflows
from workflows.schedules import ScheduleError, Scheduler, check_cron, create_schedule, next_fire_time

# Monday 2024-06-03 08:30:00 UTC
MONDAY_0830 = datetime(2024, 6, 3, 8, 30, tzinfo=UTC).timestamp()
HOUR = 3600.0


def engine_on(url: str, *, execute: bool = False) -> Engine:
    return Engine.from_url(url, execute=execute, lease_seconds=2.0, poll_interval=0.05).register(*builtin_workflows())


async def scheduled_runs(engine: Engine, schedule_id: str) -> list[Any]:
    return [r for r in await engine.list_runs(limit=1000) if r.started_by == f"schedule:{schedule_id}"]


def test_next_fire_time_is_computed_in_the_schedules_time_zone() -> None:
    # 09:00 in Oslo (UTC+2 in June) is 07:00 UTC: already past at 08:30 UTC, so the next is Tuesday.
    oslo = next_fire_time("0 9 * * *", "Europe/Oslo", MONDAY_0830)
    assert datetime.fromtimestamp(oslo, UTC) == datetime(2024, 6, 4, 7, 0, tzinfo=UTC)
    utc = next_fire_time("0 9 * * *", "UTC", MONDAY_0830)
    assert datetime.fromtimestamp(utc, UTC) == datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
    assert next_fire_time("@hourly", "UTC", MONDAY_0830) == MONDAY_0830 + HOUR / 2


def test_on_the_night_clocks_go_back_a_daily_time_fires_once_and_an_hourly_one_every_hour() -> None:
    # New York, Sunday 2024-11-03: 02:00 EDT becomes 01:00 EST, so 01:00-01:59 local pass twice.
    ny = ZoneInfo("America/New_York")

    def times(cron: str, n: int) -> list[str]:
        at, out = datetime(2024, 11, 3, 0, 30, tzinfo=ny).timestamp(), []
        for _ in range(n):
            at = next_fire_time(cron, "America/New_York", at)
            out.append(datetime.fromtimestamp(at, ny).isoformat())
        return out

    assert times("30 1 * * *", 2) == ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]  # not 01:30 EST too
    assert times("0 * * * *", 3) == ["2024-11-03T01:00:00-04:00", "2024-11-03T01:00:00-05:00",
                                     "2024-11-03T02:00:00-05:00"]  # every hour, each of them
    assert times("30 2 * * *", 1) == ["2024-11-03T02:30:00-05:00"]


@pytest.mark.parametrize("cron", ["0 9 * *", "61 * * * *", "every day", "* * * * * *", ""])
def test_bad_cron_expressions_are_refused_with_the_accepted_forms(cron: str) -> None:
    with pytest.raises(ScheduleError, match="5 fields"):
        check_cron(cron)


@pytest.mark.parametrize("cron", ["0 9 30 2 *", "0 9 31 4 *", "0 0 31 2,4,6,9,11 *"])
async def test_a_cron_of_a_date_that_never_comes_is_refused(sqlite_url: str, cron: str) -> None:
    """croniter.is_valid accepts these; they have no next time, so there is nothing to store (or to fire)."""
    with pytest.raises(ScheduleError, match="never fires"):
        next_fire_time(cron, "UTC", MONDAY_0830)
    engine = engine_on(sqlite_url)
    store = ScheduleStore(engine.db)
    try:
        with pytest.raises(ScheduleError, match="no date has that day of month"):
            await create_schedule(engine, store, "greet-user", cron, input={"name": "Ada"}, now=MONDAY_0830)
        assert await store.list_schedules() == []
        assert next_fire_time("0 9 29 2 *", "UTC", MONDAY_0830) > MONDAY_0830  # February 29th comes, in leap years
    finally:
        await engine.close()


async def test_create_schedule_validates_workflow_input_and_time_zone(sqlite_url: str) -> None:
    engine = engine_on(sqlite_url)
    store = ScheduleStore(engine.db)
    try:
        with pytest.raises(WorkflowNotFound):
            await create_schedule(engine, store, "greet-usr", "0 9 * * *")
        with pytest.raises(ScheduleError, match="Time zone 'Mars/Olympus' is not known"):
            await create_schedule(engine, store, "greet-user", "0 9 * * *", input={"name": "Ada"}, timezone="Mars/Olympus")
        with pytest.raises(Exception, match="name"):
            await create_schedule(engine, store, "greet-user", "0 9 * * *", input={})
        assert await store.list_schedules() == []
        made = await create_schedule(engine, store, "greet-user", "0  9 * *  1-5", input={"name": "Ada"},
                                     timezone="Europe/Oslo", now=MONDAY_0830)
        assert made.cron == "0 9 * * 1-5" and made.input == {"name": "Ada"}
        assert made.next_at == next_fire_time("0 9 * * 1-5", "Europe/Oslo", MONDAY_0830)
        assert await store.list_schedules() == [made]
    finally:
        await engine.close()


async def test_a_due_schedule_fires_once_and_moves_to_its_next_time(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    engine = engine_on(sqlite_url, execute=True)
    scheduler = Scheduler(engine, clock=clock)
    try:
        made = await create_schedule(engine, scheduler.store, "greet-user", "0 9 * * *", input={"name": "Ada"},
                                     now=clock())
        assert await scheduler.tick() == []  # 08:30: not due yet

        clock.now = made.next_at  # 09:00 exactly
        [fired] = await scheduler.tick()
        assert fired.due_at == made.next_at and fired.error is None
        assert fired.schedule.next_at == made.next_at + 24 * HOUR
        assert await scheduler.tick() == []  # the same due time never fires twice

        [run] = await scheduled_runs(engine, made.id)
        assert (await engine.wait_for(run.id, timeout=5)).output == {"greeting": "Hello, Ada!"}
        stored = await scheduler.store.get(made.id)
        assert stored is not None and stored.last_fired_at == made.next_at and stored.next_at == made.next_at + 24 * HOUR
    finally:
        await engine.close()


async def test_times_missed_while_everything_was_down_fire_once_on_start(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    first = engine_on(sqlite_url)
    made = await create_schedule(first, ScheduleStore(first.db), "greet-user", "*/15 * * * *", input={"name": "Bo"},
                                 now=clock())
    await first.close()  # every process is down ...

    clock.advance(10 * HOUR)  # ... for forty due times
    restarted = engine_on(sqlite_url)
    scheduler = Scheduler(restarted, clock=clock)
    try:
        [fired] = await scheduler.tick()
        assert fired.due_at == made.next_at  # the oldest missed time, fired once
        assert fired.schedule.next_at == next_fire_time("*/15 * * * *", "UTC", clock())  # then from now on
        assert await scheduler.tick() == []
        assert len(await scheduled_runs(restarted, made.id)) == 1

        clock.advance(15 * 60)
        assert len(await scheduler.tick()) == 1
        assert len(await scheduled_runs(restarted, made.id)) == 2
    finally:
        await restarted.close()


async def test_replicas_ticking_at_once_fire_each_due_time_exactly_once(db_url: str) -> None:
    clock = FakeClock(MONDAY_0830 + 27 * 60)  # 08:57
    replicas = [engine_on(db_url) for _ in range(3)]
    schedulers = [Scheduler(e, clock=clock) for e in replicas]
    try:
        store = schedulers[0].store
        every_minute = await create_schedule(replicas[0], store, "greet-user", "* * * * *", input={"name": "A"},
                                             now=clock())
        hourly = await create_schedule(replicas[0], store, "approval", "0 * * * *", now=clock())
        fired: list[Any] = []
        for _ in range(6):  # to 09:03: six minute-runs, and 09:00 once for the hourly one
            clock.advance(60)
            results = await asyncio.gather(*(s.tick() for s in schedulers for _ in range(2)))
            fired += [f for result in results for f in result]
        assert sorted(f.schedule.id for f in fired) == sorted([every_minute.id] * 6 + [hourly.id])
        due_times = [f.due_at for f in fired if f.schedule.id == every_minute.id]
        assert len(set(due_times)) == 6
        assert len(await scheduled_runs(replicas[1], every_minute.id)) == 6
        assert len(await scheduled_runs(replicas[2], hourly.id)) == 1
    finally:
        for e in replicas:
            await e.close()


async def test_a_failing_start_is_reported_and_the_due_time_is_not_retried(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    engine = engine_on(sqlite_url)
    calls: list[tuple[str, Any]] = []

    async def broken_fire(schedule: ScheduleRecord, run_input: Any) -> None:
        calls.append((schedule.id, run_input))
        raise RuntimeError("Slack is down")

    scheduler = Scheduler(engine, clock=clock, fire=broken_fire)
    try:
        made = await create_schedule(engine, scheduler.store, "greet-user", "0 9 * * *", input={"name": "C"}, now=clock())
        clock.now = made.next_at
        [fired] = await scheduler.tick()
        assert fired.error == "RuntimeError: Slack is down"
        assert calls == [(made.id, {"name": "C"})]
        assert await scheduler.tick() == [] and len(calls) == 1
    finally:
        await engine.close()


async def test_a_due_time_whose_start_meets_a_database_outage_fires_once_the_database_is_back(db_url: str) -> None:
    """README: "each due time fires exactly once". The scheduler claims the due time, then starts its run; when the
    database goes away between the two for longer than a start's 10 s of retries, the start fails: the due time is
    given back, and the first tick once the database answers again fires it, once."""
    if not db_url.startswith("postgresql"):
        pytest.skip("an outage of the PostgreSQL server")
    clock = FakeClock(MONDAY_0830)
    async with blackhole(db_url) as (proxy, proxied):
        engine = engine_on(proxied)
        scheduler = Scheduler(engine, clock=clock)
        try:
            made = await create_schedule(engine, scheduler.store, "greet-user", "0 9 * * *", input={"name": "Ada"},
                                         now=clock())
            clock.now = made.next_at + HOUR  # 10:00: 09:00 is due
            proxy.hold_on = b"INSERT INTO runs"  # the run's row, on its way to the server...
            ticking = asyncio.ensure_future(scheduler.tick())
            await asyncio.wait_for(proxy.held.wait(), 5)
            proxy.refusing = True  # ...when the database goes away for longer than the 10 s of retries
            proxy.cut_all()
            [first] = await asyncio.wait_for(ticking, 20)
            assert first.error is not None and "DatabaseUnavailable" in first.error  # the fault hit the start
            proxy.refusing = False
            later = []
            for _ in range(3):  # the database is back: the scheduler ticks on, as run_forever does
                clock.advance(15)
                later += await scheduler.tick()
            runs = await scheduled_runs(engine, made.id)
            stored = await scheduler.store.get(made.id)
        finally:
            await engine.close()
    assert [f.due_at for f in later] == [made.next_at] and later[0].error is None
    assert len(runs) == 1, f"09:00 fired {len(runs)} times"
    assert stored is not None and stored.next_at == made.next_at + 24 * HOUR


async def test_a_start_that_failed_for_the_database_is_fired_again_but_any_other_failure_is_not(
    sqlite_url: str,
) -> None:
    clock = FakeClock(MONDAY_0830)
    engine = engine_on(sqlite_url)
    calls: list[str] = []
    failures = [DatabaseUnavailable("The database is not usable right now; retried for 10 s."), RuntimeError("bad")]

    async def fire(schedule: ScheduleRecord, run_input: Any) -> None:
        calls.append(schedule.id)
        if failures:
            raise failures.pop(0)

    scheduler = Scheduler(engine, clock=clock, fire=fire)
    try:
        made = await create_schedule(engine, scheduler.store, "greet-user", "0 9 * * *", input={"name": "C"}, now=clock())
        clock.now = made.next_at
        [unavailable] = await scheduler.tick()
        assert unavailable.error is not None and unavailable.error.startswith("DatabaseUnavailable")
        clock.advance(15)
        [refused] = await scheduler.tick()  # given back, fired again: this time it fails for another reason
        assert refused.due_at == made.next_at and refused.error == "RuntimeError: bad"
        clock.advance(15)
        assert await scheduler.tick() == []  # that failure is reported, not retried
        assert calls == [made.id, made.id]
    finally:
        await engine.close()


async def test_without_a_slack_fire_channel_schedules_are_left_to_the_bot(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    engine = engine_on(sqlite_url)
    worker = Scheduler(engine, clock=clock)
    try:
        in_slack = await create_schedule(engine, worker.store, "greet-user", "0 9 * * *", input={"name": "D"},
                                         team_id="T0TEAM", channel_id="C0GENERAL", created_by="U0ALICE", now=clock())
        clock.now = in_slack.next_at
        assert await worker.tick() == []  # a plain worker cannot post in the channel
        seen: list[str] = []

        async def fire(schedule: ScheduleRecord, run_input: Any) -> None:
            seen.append(schedule.id)

        assert [f.schedule.id for f in await Scheduler(engine, clock=clock, fire=fire).tick()] == [in_slack.id]
        assert seen == [in_slack.id]
    finally:
        await engine.close()


async def test_schedules_of_workflows_this_process_does_not_know_are_left_alone(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    full = engine_on(sqlite_url)
    partial = Engine.from_url(sqlite_url, execute=False)  # no workflows registered
    try:
        made = await create_schedule(full, ScheduleStore(full.db), "greet-user", "0 9 * * *", input={"name": "E"},
                                     now=clock())
        clock.now = made.next_at
        assert await Scheduler(partial, clock=clock).tick() == []
        assert len(await Scheduler(full, clock=clock).tick()) == 1
    finally:
        await partial.close()
        await full.close()


async def test_run_forever_fires_and_stops_cleanly(sqlite_url: str) -> None:
    clock = FakeClock(MONDAY_0830)
    engine = engine_on(sqlite_url)
    scheduler = Scheduler(engine, clock=clock)
    try:
        made = await create_schedule(engine, scheduler.store, "greet-user", "0 9 * * *", input={"name": "F"},
                                     now=clock())
        scheduler.start(interval=0.02)
        clock.now = made.next_at
        scheduler.wake()
        await eventually(lambda: scheduled_runs(engine, made.id))
        await scheduler.stop()
        assert len(await scheduled_runs(engine, made.id)) == 1
    finally:
        await scheduler.stop()
        await engine.close()


async def test_a_scheduler_woken_as_it_stops_still_stops(sqlite_url: str) -> None:
    # wake() (a schedule added) and stop() in the same turn of the loop: with asyncio.wait_for (Python 3.11)
    # the scheduler swallowed the cancel and kept ticking, and stop() waited for it forever.
    engine = engine_on(sqlite_url)
    try:
        scheduler = Scheduler(engine)
        task = scheduler.start(interval=60.0)
        await asyncio.sleep(0.2)  # ticked once, now sleeping until the next tick
        scheduler.wake()
        stopping = asyncio.ensure_future(scheduler.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        if not done:
            task.cancel()  # a second cancel reaches it: leave nothing running behind the failure
            await asyncio.wait({stopping}, timeout=5)
        assert done, "stop() waited for a scheduler that had swallowed its cancel"
        assert task.cancelled()
    finally:
        await engine.close()


async def test_a_schedule_whose_workflow_is_gone_neither_spins_the_scheduler_nor_hides_the_others(
    sqlite_url: str,
) -> None:
    # Redeployed without greet-user: its schedules stay due for good (no process fires them). The scheduler still
    # sleeps between looks, and a live schedule behind 100 such rows still fires.
    old = engine_on(sqlite_url)
    store = ScheduleStore(old.db)
    try:
        for _ in range(101):
            await create_schedule(old, store, "greet-user", "* * * * *", input={"name": "Ada"},
                                  now=MONDAY_0830 - HOUR)
        live = await create_schedule(old, store, "approval", "* * * * *", input={"request": "x"}, now=MONDAY_0830)
    finally:
        await old.close()
    new = Engine.from_url(sqlite_url, execute=False).register(
        *[w for w in builtin_workflows() if w.id != "greet-user"])
    clock = FakeClock(MONDAY_0830 + 120)
    looks = 0

    def counted() -> float:
        nonlocal looks
        looks += 1
        return clock()

    scheduler = Scheduler(new, ScheduleStore(new.db), clock=counted)
    try:
        assert [f.schedule.id for f in await scheduler.tick()] == [live.id]
        scheduler.start(interval=15.0)
        await asyncio.sleep(0.5)
        await scheduler.stop()
        assert looks <= 6, f"the scheduler looked {looks} times in half a second"
    finally:
        await scheduler.stop()
        await new.close()
