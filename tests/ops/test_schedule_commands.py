"""``/flow schedule|schedules|unschedule`` answers, and a schedule firing into its Slack channel (emulator)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.commands import CommandError
from bot.schedule_commands import handle_schedule_command, make_scheduler, parse_schedule_args
from storage.schedule_store import ScheduleStore
from tests.helpers import eventually
from tests.ops.conftest import ALICE, BOB, CHANNEL, FakeClock, StartBot

TEAM = "T0TEAM"


def command(user: str = ALICE, channel: str = CHANNEL) -> dict[str, Any]:
    return {"team_id": TEAM, "channel_id": channel, "user_id": user}


@pytest.mark.parametrize(("text", "cron", "tz", "rest"), [
    ('greet-user "0 9 * * 1-5" name=Ada', "0 9 * * 1-5", None, "name=Ada"),
    ("greet-user “0 9 * * 1-5” Ada tz=Europe/Oslo", "0 9 * * 1-5", "Europe/Oslo", "Ada"),
    ("greet-user 0 9 * * 1-5 --tz America/New_York {\"name\": \"Ada\"}", "0 9 * * 1-5", "America/New_York",
     '{"name": "Ada"}'),
    ("greet-user @daily", "@daily", None, ""),
    ("greet-user '*/5 * * * *'", "*/5 * * * *", None, ""),
])
def test_parsing_the_schedule_command(text: str, cron: str, tz: str | None, rest: str) -> None:
    request = parse_schedule_args(text)
    assert (request.workflow_id, request.cron, request.timezone, request.raw_input) == ("greet-user", cron, tz, rest)


@pytest.mark.parametrize("text", ["greet-user", "greet-user every morning", 'greet-user "0 9 * * *'])
def test_a_schedule_command_without_a_schedule_is_refused(text: str) -> None:
    with pytest.raises(CommandError):
        parse_schedule_args(text)


async def test_schedule_list_and_unschedule_from_slack(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_TIMEZONE="Europe/Oslo")
    store = ScheduleStore(bot.engine.db)

    text = await handle_schedule_command(bot.settings, bot.engine, "schedule", 'greet-user "0 9 * * 1-5" name=Ada', command())
    [made] = await store.list_schedules()
    assert text.startswith(":calendar: Scheduled.") and made.id in text and "Europe/Oslo" in text
    assert f"/flow unschedule {made.id}" in text
    assert (made.workflow_id, made.cron, made.timezone, made.input) == ("greet-user", "0 9 * * 1-5", "Europe/Oslo",
                                                                        {"name": "Ada"})
    assert (made.team_id, made.channel_id, made.created_by) == (TEAM, CHANNEL, ALICE)

    await handle_schedule_command(bot.settings, bot.engine, "schedule", "approval @hourly tz=UTC", command(BOB))
    listing = await handle_schedule_command(bot.settings, bot.engine, "schedules", "", command())
    assert listing.startswith("*Schedules*") and listing.count("\n•") == 2
    assert f"`{made.id}` runs `greet-user`" in listing and f"<#{CHANNEL}>" in listing and "next: " in listing

    refused = await handle_schedule_command(bot.settings, bot.engine, "unschedule", made.id, command(BOB))
    assert refused.startswith(":no_entry:") and len(await store.list_schedules()) == 2
    removed = await handle_schedule_command(bot.settings, bot.engine, "unschedule", made.id, command(ALICE))
    assert removed == f"Removed schedule `{made.id}` (`greet-user` at `0 9 * * 1-5`)."
    assert [s.workflow_id for s in await store.list_schedules()] == ["approval"]
    gone = await handle_schedule_command(bot.settings, bot.engine, "unschedule", made.id, command(ALICE))
    assert f"There is no schedule '{made.id}'" in gone and "/flow schedules" in gone


@pytest.mark.parametrize(("text", "expected"), [
    ("greet-usr @daily", "Workflow 'greet-usr' is not registered"),
    ('greet-user "0 9 * *" Ada', "is not a schedule"),
    ('greet-user "0 25 * * *" Ada', "is not a valid cron expression"),
    ("greet-user @daily Ada tz=Mars/Olympus", "Time zone 'Mars/Olympus' is not known"),
    ("greet-user @daily", "name"),  # the input is checked now, not at 9 the next morning
    ("greet-user every day", "needs a schedule after the workflow id, in quotes"),
])
async def test_bad_schedule_commands_get_the_reason_and_the_usage(start_bot: StartBot, text: str, expected: str) -> None:
    bot = await start_bot()
    answer = await handle_schedule_command(bot.settings, bot.engine, "schedule", text, command())
    assert answer.startswith(":warning:") and expected in answer
    assert "*Scheduling with `/flow`*" in answer and "/flow unschedule ID" in answer
    assert await ScheduleStore(bot.engine.db).list_schedules() == []


@pytest.mark.parametrize("cron", ["0 9 30 2 *", "0 9 31 4 *"])  # February 30th, April 31st: typos of a real date
async def test_a_cron_of_a_date_that_never_comes_is_refused_with_the_reason(start_bot: StartBot, cron: str) -> None:
    """Valid cron syntax that never fires: refused when it is typed, not a silent failure inside the bot."""
    bot = await start_bot()
    ack = await bot.emu.slash_command(bot.settings.command, f'schedule greet-user "{cron}" name=Ada', user=ALICE,
                                      channel=CHANNEL)

    def warning() -> str | None:
        said = [ack.body, *(e.text or "" for e in bot.emu.ephemerals(ALICE))]
        return next((s for s in said if ":warning:" in s), None)

    answer = await eventually(warning)
    assert f"'{cron}' never fires" in answer and "*Scheduling with `/flow`*" in answer
    assert await ScheduleStore(bot.engine.db).list_schedules() == []


async def test_a_schedule_fires_into_the_channel_it_was_made_in(start_bot: StartBot) -> None:
    bot = await start_bot()
    emu = bot.emu
    await handle_schedule_command(bot.settings, bot.engine, "schedule", 'greet-user "30 7 * * *" Ada', command())
    [made] = await ScheduleStore(bot.engine.db).list_schedules()
    clock = FakeClock(made.next_at)
    scheduler = make_scheduler(bot.bot.deps)
    scheduler.clock = clock

    [fired] = await scheduler.tick()
    assert fired.error is None
    [run] = await bot.engine.list_runs()
    assert run.workflow_id == "greet-user" and run.input == {"name": "Ada"} and run.started_by == ALICE
    assert (await bot.engine.wait_for(run.id, timeout=5)).status == "success"
    root = await emu.wait_for(lambda: next((m for m in emu.messages(CHANNEL) if run.id in m.text), None))
    assert run.thread_id == f"slack:{TEAM}:{CHANNEL}:{root.ts}"
    await eventually(lambda: (m := emu.message(root.ts, CHANNEL)) is not None and "success" in m.text.lower())
    assert await scheduler.tick() == []  # fired once


async def test_a_schedule_that_cannot_post_reports_why(start_bot: StartBot) -> None:
    bot = await start_bot()
    await handle_schedule_command(bot.settings, bot.engine, "schedule", 'greet-user "30 7 * * *" Ada', command())
    [made] = await ScheduleStore(bot.engine.db).list_schedules()
    scheduler = make_scheduler(bot.bot.deps)
    scheduler.clock = FakeClock(made.next_at)
    bot.emu.fail_next("chat.postMessage", status=200, error="not_in_channel", retry_after=None)
    [fired] = await scheduler.tick()
    assert fired.error is not None and "could not post in this channel" in fired.error
    assert await bot.engine.list_runs() == []
