"""Cron schedules that start runs: the rows live in the database, the :class:`Scheduler` fires them.

Every process that executes runs may run a scheduler; they need no coordination. A tick reads the due
rows and claims each with a compare-and-set on ``next_at`` (``storage.schedule_store.ScheduleStore.advance``):
exactly one replica's update matches, and only that one starts the run. The next time is computed from
*now*, not from the missed time, so times missed while every process was down fire once at start-up,
not once per miss.

The claim commits before the run starts: a process killed between the two loses that one firing rather
than risking two (at most once in that window; every other path is exactly once). A start that fails because
the database is unavailable (an outage longer than a start's retries) gives the due time back: the next tick
after the database returns puts ``next_at`` back to it (a compare-and-set on the claimed value) and fires it,
once. A start that fails for any other reason (bad input, Slack refusing) is reported and not retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from storage.errors import DatabaseUnavailable
from storage.schedule_store import ScheduleRecord, ScheduleStore

from .errors import UsageError
from .tracing import log_context
from .waits import wait_set

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("threadflow.schedules")

#: ``fire(schedule, run_input)``: start the schedule's run (the default starts it on the engine).
FireFn = Callable[[ScheduleRecord, Any], Awaitable[None]]

#: Seconds before a scheduler looks again when the earliest due time is one it did not fire (another replica's).
MISSED_RECHECK = 1.0
CRON_HELP = (
    "A schedule is a cron expression with 5 fields (minute hour day-of-month month day-of-week), "
    "e.g. \"0 9 * * 1-5\" for 9:00 on weekdays, or @hourly, @daily, @weekly, @monthly."
)


class ScheduleError(UsageError):
    """A schedule request that cannot be honoured: bad cron, unknown time zone, unknown schedule."""


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"Time zone {name!r} is not known. Use an IANA name such as UTC, Europe/Oslo or America/New_York."
        ) from None


def check_cron(expression: str) -> str:
    """The expression, normalised; raises ScheduleError with the accepted forms when it is not valid."""
    expression = " ".join(expression.split())
    fields = expression.split(" ")
    if not expression.startswith("@") and len(fields) != 5:
        raise ScheduleError(f"{expression!r} is not a schedule. {CRON_HELP}")
    if not croniter.is_valid(expression):
        raise ScheduleError(f"{expression!r} is not a valid cron expression. {CRON_HELP}")
    return expression


def next_fire_time(cron: str, timezone: str, after: float) -> float:
    """The first time strictly after ``after`` (seconds since the epoch) matching ``cron`` in ``timezone``.

    On the night clocks go back, a local time passes twice (01:30 summer time, then 01:30 winter time): a schedule
    of that time fires at the first, not again an hour later, as a person reading "every day at 01:30" expects.
    (A schedule of every hour or every few minutes fires in both hours: each of its times is a new one.)"""
    cron = check_cron(cron)
    start = datetime.fromtimestamp(after, check_timezone(timezone))
    try:
        found: datetime = croniter(cron, start).get_next(datetime)
        if croniter(cron).expanded[1] != ["*"]:  # (times of some hours only: a local time, not a rhythm)
            while found.fold == 1 and _passed_already(found, after):
                found = croniter(cron, found).get_next(datetime)
    except CroniterBadDateError:
        # Valid syntax (croniter.is_valid says yes) naming a day no month has, like "0 9 30 2 *" (February 30th):
        # croniter looks 50 years ahead, finds no such date, and gives up.
        raise ScheduleError(
            f"{cron!r} never fires: no date has that day of month in that month (there is no February 30th or "
            f"April 31st). Check those two fields. {CRON_HELP}"
        ) from None
    except CroniterError as exc:
        raise ScheduleError(f"{cron!r} is not a valid cron expression ({exc}). {CRON_HELP}") from exc
    return found.timestamp()


def _database_outage(exc: BaseException) -> bool:
    """The start failed because the database did not answer through its retries (DatabaseUnavailable, raised or behind
    the error ``fire`` raised), not because of the run itself or Slack."""
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        if isinstance(item, DatabaseUnavailable):
            return True
        seen.add(id(item))
        item = item.__cause__ or item.__context__
    return False


def _passed_already(found: datetime, after: float) -> bool:
    """Whether the first pass of ``found``'s local time (its ``fold=0`` instant) is already at or before ``after``."""
    first = found.replace(fold=0).timestamp()
    return first != found.timestamp() and first <= after


def new_schedule_id() -> str:
    return "s" + uuid.uuid4().hex[:8]


async def create_schedule(
    engine: Engine,
    store: ScheduleStore,
    workflow_id: str,
    cron: str,
    *,
    input: Any = None,
    timezone: str = "UTC",
    team_id: str | None = None,
    channel_id: str | None = None,
    created_by: str | None = None,
    now: float | None = None,
    enterprise_id: str | None = None,
) -> ScheduleRecord:
    """Validate (workflow registered, input fits it, cron and time zone valid, a next time exists) and store it."""
    await engine.open()
    wf = engine.get_workflow(workflow_id)
    cron = check_cron(cron)
    check_timezone(timezone)
    now = time.time() if now is None else now
    next_at = next_fire_time(cron, timezone, now)  # refuses a valid-looking cron that never fires (Feb 30th)
    data = wf.parse_input(input if input is not None else {})
    record = ScheduleRecord(
        id=new_schedule_id(), workflow_id=wf.id, cron=cron, timezone=timezone, input=data, team_id=team_id,
        channel_id=channel_id, created_by=created_by, next_at=next_at, created_at=now, enterprise_id=enterprise_id,
    )
    await store.add(record)
    return record


@dataclass(frozen=True)
class Fired:
    """One due time this scheduler claimed and fired; ``error`` says why starting its run failed, if it did."""

    schedule: ScheduleRecord
    due_at: float
    fired_at: float
    error: str | None = None


class Scheduler:
    """Fires due schedules through the engine (or ``fire``); safe to run in every replica at once.

    Without a ``fire`` of its own, a scheduler only fires schedules that have no Slack channel: a run made
    for a channel must be started by a process that can post there (the bot passes its own ``fire``).
    """

    def __init__(
        self,
        engine: Engine,
        store: ScheduleStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        fire: FireFn | None = None,
        handles: Callable[[ScheduleRecord], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store or ScheduleStore(engine.db)
        self.clock = clock
        self.fire = fire or self._start_on_engine
        if handles is None:
            handles = (lambda s: True) if fire is not None else (lambda s: s.channel_id is None)
        self.handles = handles
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Due times whose start met a database outage, to give back: schedule id -> (claimed next_at, due time,
        #: when it was tried).
        self._unfired: dict[str, tuple[float, float, float]] = {}
        #: The run id the engine was last asked to start for a schedule, while that start's outcome is not known.
        self._tried_run_ids: dict[str, str] = {}

    async def _start_on_engine(self, schedule: ScheduleRecord, run_input: Any) -> None:
        from .engine import new_run_id

        run_id = self._tried_run_ids.get(schedule.id)
        if run_id is not None and await self.engine.store.get_run(run_id) is not None:
            return  # the start that failed did commit (only its answer was lost in the outage): fired already
        run_id = run_id or new_run_id()
        self._tried_run_ids[schedule.id] = run_id
        with log_context(run_id=run_id):  # the run's task, spawned inside, logs with its id
            await self.engine.start(schedule.workflow_id, run_input, started_by=f"schedule:{schedule.id}", run_id=run_id)

    async def _give_back_unfired(self) -> None:
        """Put due times whose start met an outage back (``next_at`` from the claimed value to the due time), so this
        tick fires them. Raises while the database is still unavailable; they stay to give back on a later tick."""
        for schedule_id, (claimed, due_at, tried_at) in list(self._unfired.items()):
            if not await self.store.advance(schedule_id, claimed, due_at, tried_at):
                # Changed meanwhile (edited, deleted, or its next time came and another replica fired it).
                self._tried_run_ids.pop(schedule_id, None)
            del self._unfired[schedule_id]

    async def tick(self) -> list[Fired]:
        """Fire every due schedule this process can run; returns what it fired (other replicas fire the rest)."""
        await self.engine.open()
        await self._give_back_unfired()
        now = self.clock()
        fired: list[Fired] = []
        for schedule in await self.store.due(now, workflow_ids=list(self.engine.workflows)):
            if schedule.workflow_id not in self.engine.workflows or not self.handles(schedule):
                continue  # a process that knows the workflow (or can post in its channel) fires it
            with log_context(schedule_id=schedule.id, workflow_id=schedule.workflow_id):
                try:
                    new_next = next_fire_time(schedule.cron, schedule.timezone, now)
                except ScheduleError as exc:
                    log.error("schedule %s cannot be fired: %s", schedule.id, exc)
                    continue
                if not await self.store.advance(schedule.id, schedule.next_at, new_next, now):
                    continue  # another replica claimed this due time
                claimed = schedule.model_copy(update={"next_at": new_next, "last_fired_at": now})
                error: str | None = None
                try:
                    await self.fire(claimed, schedule.input)
                    log.info("schedule %s fired %s (due %.0f)", schedule.id, schedule.workflow_id, schedule.next_at)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if _database_outage(exc):  # not fired: given back once the database answers again
                        self._unfired[schedule.id] = (new_next, schedule.next_at, now)
                        log.error("schedule %s could not start %s: %s; it fires once the database is back",
                                  schedule.id, schedule.workflow_id, error)
                    else:  # the claim stands: a failing start is reported, not retried forever
                        log.error("schedule %s could not start %s: %s", schedule.id, schedule.workflow_id, error)
                if schedule.id not in self._unfired:
                    self._tried_run_ids.pop(schedule.id, None)
                fired.append(Fired(claimed, schedule.next_at, now, error))
        return fired

    def wake(self) -> None:
        """Tick now (a schedule was added): otherwise a sleeping scheduler notices it within ``interval``."""
        if self._wake is not None:
            self._wake.set()

    async def run_forever(self, interval: float = 15.0) -> None:
        """Tick until cancelled, sleeping until the next due time or ``interval``, whichever is sooner."""
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            timeout = interval
            try:
                await self.tick()
                next_at = await self.store.next_due_at(workflow_ids=list(self.engine.workflows))
                if next_at is not None:
                    # A time already past is one this process did not fire (another replica's to fire, or a channel
                    # it cannot post in): it looks again a moment later, not at once (which would spin).
                    left = next_at - self.clock()
                    timeout = min(interval, left if left > 0 else MISSED_RECHECK)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler tick failed; retrying in %.0f s", interval)
            await wait_set(self._wake, timeout)  # not wait_for: it can swallow stop's cancel (see waits.py)

    def start(self, interval: float = 15.0) -> asyncio.Task[None]:
        """Run :meth:`run_forever` as a task this scheduler keeps (cancel it with :meth:`stop`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run_forever(interval), name="threadflow-scheduler")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather, not ``try: await task / except CancelledError: pass``: that also swallowed a cancel of
            # the caller itself (a shutdown cancelled while it stops the scheduler).
            await asyncio.gather(task, return_exceptions=True)


__all__ = [
    "CRON_HELP",
    "Fired",
    "FireFn",
    "ScheduleError",
    "Scheduler",
    "check_cron",
    "check_timezone",
    "create_schedule",
    "next_fire_time",
]
