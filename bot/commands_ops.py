"""CLI commands for operating threadflow: ``schedule add|list|remove``, ``prune`` and ``doctor``."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from workflows.errors import UsageError

if TYPE_CHECKING:
    from .settings import Settings

EXIT_OK = 0


class OpsUsageError(UsageError):
    """Bad command-line input (a UsageError, so ``bot.cli.main`` prints it and exits with status 2)."""


def _json_option(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OpsUsageError(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None


def add_ops_commands(sub: Any) -> None:
    p = sub.add_parser("schedule", help="run workflows on a cron schedule: add, list, remove")
    verbs = p.add_subparsers(dest="schedule_command", required=True, metavar="add|list|remove")
    add = verbs.add_parser("add", help="add a schedule, e.g. schedule add daily-report '0 9 * * 1-5' --tz Europe/Oslo")
    add.add_argument("workflow")
    add.add_argument("cron", help="5-field cron expression in quotes, or @hourly/@daily/@weekly/@monthly")
    add.add_argument("--input", help="the workflow input as JSON")
    add.add_argument("--tz", help="time zone of the cron expression (default THREADFLOW_TIMEZONE)")
    add.add_argument("--channel", help="Slack channel id to post runs in (the bot process fires it there)")
    add.add_argument("--team", help="Slack team id of that channel")
    add.add_argument("--by", default="cli", help="who created it (recorded)")
    add.add_argument("--json", action="store_true")
    lst = verbs.add_parser("list", help="list schedules with their next time")
    lst.add_argument("--json", action="store_true")
    rm = verbs.add_parser("remove", help="remove a schedule")
    rm.add_argument("schedule_id")
    p.set_defaults(handler=run_schedule)

    p = sub.add_parser("prune", help="delete finished runs and idle memory threads older than the retention period")
    p.add_argument("--days", type=float, help="age in days (default THREADFLOW_RETENTION_DAYS, 30)")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_prune)

    p = sub.add_parser("doctor", help="check settings, database, Slack token and scopes, and the model")
    p.set_defaults(handler=run_doctor)


# -- schedule -----------------------------------------------------------------------------------------


def run_schedule(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    return asyncio.run(_schedule(settings, args))


async def _schedule(settings: Settings, args: argparse.Namespace) -> int:
    from storage.schedule_store import ScheduleStore
    from workflows.schedules import ScheduleError, create_schedule

    from .cli import emit
    from .runtime import build_engine
    from .schedule_commands import format_time

    engine = build_engine(settings, execute=False)
    try:
        store = ScheduleStore(engine.db)
        await engine.open()
        if args.schedule_command == "add":
            data = _json_option(args.input, "--input") if args.input is not None else {}
            if args.channel and not args.team:
                raise OpsUsageError("--channel needs --team too (the Slack team id, e.g. T0123ABCD).")
            schedule = await create_schedule(
                engine, store, args.workflow, args.cron, input=data, timezone=args.tz or settings.timezone,
                team_id=args.team, channel_id=args.channel, created_by=args.by,
            )
            if args.json:
                emit(schedule.model_dump(mode="json"))
            else:
                print(f"Scheduled {schedule.id}: {schedule.workflow_id} at '{schedule.cron}' ({schedule.timezone}); "
                      f"next run {format_time(schedule.next_at, schedule.timezone)}.")
            return EXIT_OK
        if args.schedule_command == "list":
            schedules = await store.list_schedules()
            if args.json:
                emit([s.model_dump(mode="json") for s in schedules])
            elif not schedules:
                print("No schedules. Add one with: threadflow schedule add WORKFLOW '0 9 * * 1-5'")
            else:
                for s in schedules:
                    where = f" in {s.channel_id}" if s.channel_id else ""
                    data = f" input={json.dumps(s.input, separators=(',', ':'))}" if s.input else ""
                    print(f"{s.id}  {s.workflow_id}  '{s.cron}' ({s.timezone}){where}{data}  "
                          f"next {format_time(s.next_at, s.timezone)}  last {format_time(s.last_fired_at, s.timezone)}")
            return EXIT_OK
        if not await store.remove(args.schedule_id):
            raise ScheduleError(f"There is no schedule {args.schedule_id!r}. List them with `threadflow schedule list`.")
        print(f"Removed schedule {args.schedule_id}.")
        return EXIT_OK
    finally:
        await engine.close()


# -- prune --------------------------------------------------------------------------------------------


#: The oldest cutoff ``prune`` takes (about 270 years): a cutoff the clock, and JSON, can still show.
MAX_DAYS = 100_000


def run_prune(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    days = settings.retention_days if args.days is None else args.days
    if not 0 <= days <= MAX_DAYS:  # (also false for nan)
        where = "THREADFLOW_RETENTION_DAYS" if args.days is None else "--days"
        raise OpsUsageError(f"{where} must be zero or more, and at most {MAX_DAYS} days; got {days:g}.")
    return asyncio.run(_prune(settings, days, args))


async def _prune(settings: Settings, days: float, args: argparse.Namespace) -> int:
    from storage import Database
    from storage.retention import prune

    from .cli import emit

    db = Database(settings.database_url)
    try:
        report = await prune(db, older_than_days=days, dry_run=args.dry_run)
    finally:
        await db.close()
    if args.json:
        emit({"dry_run": report.dry_run, "days": days, "cutoff": report.cutoff, "counts": report.counts})
        return EXIT_OK
    cutoff = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.cutoff))
    head = "Would delete" if report.dry_run else "Deleted"
    if report.total == 0:
        print(f"Nothing to prune: no finished run or idle thread older than {days:g} days (before {cutoff}).")
        return EXIT_OK
    print(f"{head} what finished or went idle more than {days:g} days ago (before {cutoff}):")
    for table, n in report.counts.items():
        if n:
            print(f"  {table:<18} {n:>8}")
    if report.dry_run:
        print("Nothing was deleted (dry run). Run without --dry-run to delete it.")
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------------------------


def run_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from .doctor import run_doctor as doctor

    return doctor(settings, args)
