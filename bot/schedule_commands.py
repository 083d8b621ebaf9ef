"""``/flow schedule|schedules|unschedule`` and firing a schedule into the Slack channel it was made in.

The slash-command side validates everything before storing (workflow, input, cron, time zone), so a bad
schedule is refused with the reason and the usage instead of failing at 9 the next morning. A schedule
made in a channel fires like a person typing ``/flow run`` there: a root message in that channel, and the
run in its thread. Its creator is the run's starter, so, as for a run they started by hand, they may
approve its steps when no approvers are configured.

Like a run, a schedule belongs to the channel it was made in (its input is shown in the listing):
``schedules`` lists, and ``unschedule`` removes, only schedules of channels the person can see, in their
workspace (:mod:`bot.run_access`); any other id is answered like one that never existed. A schedule made
outside Slack (no channel) is not visible from Slack at all.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from storage.schedule_store import ScheduleRecord, ScheduleStore
from workflows import Engine
from workflows.errors import UsageError
from workflows.schedules import CRON_HELP, FireFn, ScheduleError, Scheduler, check_timezone, create_schedule
from workflows.tracing import log_context

from .commands import CommandError, parse_run_input
from .run_access import Requester, RunAccess, same_workspace
from .settings import Settings

if TYPE_CHECKING:
    from .deps import BotDeps

log = logging.getLogger("threadflow.bot.schedules")

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?#]+$")
_FIVE_FIELDS = re.compile(r"^((?:\S+\s+){4}\S+)(?:\s+(.*))?$", re.S)
_TZ_OPTION = re.compile(r"(?:^|\s)--tz(?:=|\s+)(\S+)")
_BARE_TZ = re.compile(r"(?:^|\s)tz=(\S+)")


def schedule_usage(command: str = "/flow") -> str:
    return "\n".join([
        f"*Scheduling with `{command}`*",
        f"• `{command} schedule WORKFLOW \"CRON\" [input] [tz=Europe/Oslo]`: run a workflow on a schedule, "
        "posting in this channel",
        f"• `{command} schedules`: list schedules and their next time",
        f"• `{command} unschedule ID`: remove a schedule",
        CRON_HELP,
    ])


class ScheduleRequest:
    """What ``/flow schedule`` asked for, before validation against the workflow."""

    def __init__(self, workflow_id: str, cron: str, timezone: str | None, raw_input: str) -> None:
        self.workflow_id, self.cron, self.timezone, self.raw_input = workflow_id, cron, timezone, raw_input


def parse_schedule_args(args: str, command: str = "/flow", *, bare_tz: bool = True) -> ScheduleRequest:
    """``WORKFLOW "CRON" [input] [tz=ZONE]``; the cron may also be given unquoted as its 5 fields.

    ``bare_tz=False`` when the workflow itself has a ``tz`` input field: then only ``--tz`` sets the zone.
    """
    text = (args or "").translate(_QUOTES).strip()
    workflow_id, _, rest = text.partition(" ")
    rest = rest.strip()
    if not workflow_id:
        raise CommandError(f"`{command} schedule` needs a workflow id and a schedule.")
    cron, remaining = _split_cron(rest, command)
    timezone: str | None = None
    for pattern in (_TZ_OPTION, _BARE_TZ) if bare_tz else (_TZ_OPTION,):
        found = pattern.search(remaining)
        if found:
            timezone = found.group(1)
            remaining = (remaining[: found.start()] + " " + remaining[found.end():]).strip()
            break
    return ScheduleRequest(workflow_id, cron, timezone, remaining)


def _split_cron(rest: str, command: str) -> tuple[str, str]:
    if rest[:1] in ('"', "'"):
        end = rest.find(rest[0], 1)
        if end < 0:
            raise CommandError(f"The schedule's closing quote is missing: {rest!r}.")
        return rest[1:end].strip(), rest[end + 1:].strip()
    if rest.startswith("@"):
        cron, _, remaining = rest.partition(" ")
        return cron, remaining.strip()
    five = _FIVE_FIELDS.match(rest)
    if five and all(_CRON_FIELD.match(f) for f in five.group(1).split()):
        return five.group(1), (five.group(2) or "").strip()
    raise CommandError(
        f"`{command} schedule` needs a schedule after the workflow id, in quotes, e.g. "
        f"`{command} schedule daily-report \"0 9 * * 1-5\"`. {CRON_HELP}"
    )


def format_time(ts: float | None, timezone: str) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, check_timezone(timezone)).strftime("%a %Y-%m-%d %H:%M") + f" {timezone}"


def describe(schedule: ScheduleRecord, *, mention_channel: bool = True) -> str:
    where = f" in <#{schedule.channel_id}>" if mention_channel and schedule.channel_id else ""
    data = json.dumps(schedule.input, ensure_ascii=False, separators=(",", ":")) if schedule.input else ""
    data = f" with `{data[:77] + '...' if len(data) > 80 else data}`" if data else ""
    return (f"`{schedule.id}` runs `{schedule.workflow_id}`{data} at `{schedule.cron}` ({schedule.timezone}){where}; "
            f"next: {format_time(schedule.next_at, schedule.timezone)}")


async def handle_schedule_command(settings: Settings, engine: Engine, verb: str, args: str,
                                  command: dict[str, Any], *, wake: Callable[[], None] | None = None,
                                  access: RunAccess | None = None) -> str:
    """The ephemeral answer to ``schedule``, ``schedules`` or ``unschedule`` (errors included, with usage).

    ``wake`` tells this process's scheduler that a schedule was added (so a near one is not missed).
    ``access`` (the bot's :class:`bot.run_access.RunAccess`) also shows a schedule to the members of its
    channel elsewhere in its workspace; without it only the schedule's own channel sees it."""
    name = settings.command
    store = ScheduleStore(engine.db)
    try:
        if verb == "schedule":
            return await _schedule(settings, engine, store, args, command, wake)
        if verb == "schedules":
            return await _list(settings, store, command, access)
        if verb == "unschedule":
            return await _unschedule(settings, store, args, command, access)
        raise CommandError(f"Unknown subcommand `{verb}`.")
    except UsageError as exc:
        return f":warning: {exc}\n{schedule_usage(name)}"


async def _schedule(settings: Settings, engine: Engine, store: ScheduleStore, args: str, command: dict[str, Any],
                    wake: Callable[[], None] | None) -> str:
    name = settings.command
    first = (args or "").split(" ", 1)[0]
    wf = engine.workflows.get(first)
    bare_tz = wf is None or wf.input is None or "tz" not in wf.input.model_fields
    request = parse_schedule_args(args, name, bare_tz=bare_tz)
    wf = engine.get_workflow(request.workflow_id)
    data = parse_run_input(wf, request.raw_input)
    schedule = await create_schedule(
        engine, store, wf.id, request.cron, input=data, timezone=request.timezone or settings.timezone,
        team_id=command.get("team_id") or None, channel_id=command["channel_id"], created_by=command["user_id"],
        enterprise_id=command.get("enterprise_id") or None,
    )
    if wake is not None:
        wake()
    log.info("schedule %s created for %s", schedule.id, schedule.workflow_id)
    return (f":calendar: Scheduled. {describe(schedule, mention_channel=False)}. Runs will post in this channel.\n"
            f"Remove it with `{name} unschedule {schedule.id}`.")


async def _visible(schedule: ScheduleRecord, command: dict[str, Any], access: RunAccess | None) -> bool:
    """The person who typed ``command`` may see (and so try to remove) ``schedule``."""
    who = Requester(team_id=str(command.get("team_id") or ""), channel_id=str(command.get("channel_id") or ""),
                    user_id=str(command.get("user_id") or ""),
                    enterprise_id=str(command.get("enterprise_id") or "") or None)
    if access is not None:
        return await access.may_see(who, schedule)
    return bool(schedule.channel_id) and schedule.channel_id == who.channel_id and same_workspace(schedule, who)


async def _list(settings: Settings, store: ScheduleStore, command: dict[str, Any], access: RunAccess | None) -> str:
    team = command.get("team_id") or None
    schedules = [s for s in await store.list_schedules(team_id=team)
                 if s.team_id and await _visible(s, command, access)]
    if not schedules:
        return f"No schedules yet. Add one with `{settings.command} schedule WORKFLOW \"CRON\"`."
    return "\n".join(["*Schedules*", *(f"• {describe(s)}" for s in schedules)])


async def _unschedule(settings: Settings, store: ScheduleStore, args: str, command: dict[str, Any],
                      access: RunAccess | None) -> str:
    name = settings.command
    schedule_id = (args or "").split()[0] if (args or "").split() else ""
    schedule = await store.get(schedule_id) if schedule_id else None
    if schedule is None or not await _visible(schedule, command, access):
        raise ScheduleError(f"There is no schedule {schedule_id!r}. List them with `{name} schedules`.")
    user = command["user_id"]
    allowed = set(settings.approvers)
    if schedule.created_by and _is_slack_user(schedule.created_by):
        allowed.add(schedule.created_by)
    if allowed and user not in allowed:
        who = ", ".join(f"<@{u}>" for u in sorted(allowed))
        return f":no_entry: Only {who} may remove schedule `{schedule.id}`. Nothing was changed."
    if not await store.remove(schedule.id):
        raise ScheduleError(f"Schedule {schedule.id!r} was removed already.")
    return f"Removed schedule `{schedule.id}` (`{schedule.workflow_id}` at `{schedule.cron}`)."


def _is_slack_user(user: str | None) -> bool:
    return user is not None and user[:1] in ("U", "W") and user.isalnum()


# -- firing -------------------------------------------------------------------------------------------


class ScheduleFireError(Exception):
    """The scheduled run could not be started in its channel (the reason is what a person would have seen)."""


async def fire_in_slack(deps: BotDeps, schedule: ScheduleRecord, run_input: Any = None) -> None:
    """Start the schedule's run as ``/flow run`` in its channel would: root message there, run in its thread.

    A schedule made outside Slack (no channel) starts its run on the engine alone.
    """
    from .run_start import StartRequest, start_run_in_channel

    data = schedule.input if run_input is None else run_input
    if not schedule.channel_id:
        await deps.engine.start(schedule.workflow_id, data, started_by=f"schedule:{schedule.id}")
        return
    user = schedule.created_by if _is_slack_user(schedule.created_by) else f"schedule:{schedule.id}"
    request = StartRequest(team_id=schedule.team_id or "", channel_id=schedule.channel_id, user_id=user or "",
                           workflow_id=schedule.workflow_id, data=data, enterprise_id=schedule.enterprise_id)
    with log_context(schedule_id=schedule.id, channel_id=schedule.channel_id, team_id=schedule.team_id):
        outcome = await start_run_in_channel(deps, request)
    if outcome.problem is not None:
        raise ScheduleFireError(f"Schedule {schedule.id} could not start {schedule.workflow_id!r} in "
                                f"{schedule.channel_id}: {outcome.problem}")


def slack_fire(deps: BotDeps) -> FireFn:
    """``fire`` for :class:`~workflows.schedules.Scheduler`: every schedule fires through :func:`fire_in_slack`."""

    async def fire(schedule: ScheduleRecord, run_input: Any) -> None:
        await fire_in_slack(deps, schedule, run_input)

    return fire


def make_scheduler(deps: BotDeps) -> Scheduler:
    """The bot process's scheduler: fires every schedule, posting those made in a channel there."""
    return Scheduler(deps.engine, ScheduleStore(deps.engine.db), fire=slack_fire(deps))


__all__ = [
    "ScheduleFireError",
    "fire_in_slack",
    "handle_schedule_command",
    "make_scheduler",
    "parse_schedule_args",
    "schedule_usage",
    "slack_fire",
]
