"""Requests the bot must refuse: replayed ones, forged or stale clicks, deciders who are not allowed, and buttons
that point at another run's step.

Already covered in tests/bot: forged and stale slash commands and events (test_slack_commands), clicks by
someone other than the starter and THREADFLOW_APPROVERS (test_slack_approvals). Not covered there, and so here:
replays (bot/server.py + SlackBot.is_replay), forged and stale *clicks*, step-level approvers, a modal submitted
by someone not allowed, and cross-run buttons.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    RunningBot,
    StartBot,
    SuspendedRun,
    button_value,
    has_buttons,
    suspend_approval,
)
from tests.helpers import eventually
from tests.reliability.slack.flows import bob_flow, sign_off_flow


async def resumes(bot: RunningBot, run_id: str) -> list[dict[str, Any]]:
    return [ev.data for ev in (await bot.engine.details(run_id)).events if ev.type == "run.resumed"]


async def unchanged(bot: RunningBot, *runs: SuspendedRun) -> None:
    await bot.idle()
    for run in runs:
        assert (await bot.engine.get_run(run.run_id)).status == "suspended"
        assert await resumes(bot, run.run_id) == []
        current = bot.emu.message(run.approval.ts)
        assert current is not None and has_buttons(current) and current.edited is None


# -- replays ------------------------------------------------------------------------------------------


def signed_command(bot: RunningBot, text: str) -> tuple[bytes, dict[str, str]]:
    """One slash command exactly as Slack would send it: body and signed headers, to be sent as often as we like."""
    emu = bot.emu
    ru = emu.state.issue_response_url("command", ALICE, CHANNEL)
    form = emu.delivery.slash_command_form(bot.settings.command, text, ALICE, CHANNEL,
                                           emu.delivery.response_url_base + ru.id, emu.state.issue_trigger(ALICE))
    body = urlencode(form).encode()
    return body, emu.delivery.signed_headers(body, "application/x-www-form-urlencoded")


async def post(bot: RunningBot, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(bot.url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_a_replayed_slash_command_is_refused_and_starts_nothing(bot: RunningBot) -> None:
    body, headers = signed_command(bot, "run greet-user Ada")

    assert await post(bot, body, headers) == 200
    [run] = await eventually(bot.engine.list_runs)
    assert await bot.settled(run.id) == "success"
    assert await post(bot, body, headers) == 401  # byte-identical: same timestamp, same signature

    await bot.idle()
    assert len(await bot.engine.list_runs()) == 1
    assert len(bot.emu.messages(CHANNEL)) == 1


async def test_replays_sent_at_the_same_moment_start_one_run(bot: RunningBot) -> None:
    body, headers = signed_command(bot, "run approval ship it")

    statuses = await asyncio.gather(*(post(bot, body, headers) for _ in range(5)))

    assert sorted(statuses) == [200, 401, 401, 401, 401]
    await bot.emu.wait_for(lambda: bot.emu.messages(CHANNEL), timeout=5)
    await bot.idle()
    assert len(await bot.engine.list_runs()) == 1


async def test_a_replayed_click_is_refused_before_it_reaches_the_approval(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    click = await emu.click(run.approval, "approve", user=ALICE)
    assert click.status == 200
    assert await bot.settled(run.run_id) == "success"
    await bot.idle()
    [delivery] = [d for d in emu.state.deliveries if d.kind == "block_actions"]
    told_before = len(emu.ephemerals(ALICE))

    replay = await post(bot, delivery.body, dict(delivery.headers))

    assert replay == 401
    await bot.idle()
    assert len(await resumes(bot, run.run_id)) == 1
    assert len(emu.ephemerals(ALICE)) == told_before  # not even "already decided": it was never handled


# -- forged and stale clicks --------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["forge_signature", "stale_timestamp"])
async def test_a_forged_or_stale_click_is_refused_and_decides_nothing(bot: RunningBot, tamper: str) -> None:
    run = await suspend_approval(bot)
    for action in ("approve", "reject", "reject_with_reason"):
        answer = await bot.emu.click(run.approval, action, user=ALICE, **{tamper: True})
        assert answer.status == 401
    await unchanged(bot, run)
    assert bot.emu.ephemerals() == [] and bot.emu.calls("views.open") == []


# -- who may decide -----------------------------------------------------------------------------------


async def test_step_approvers_decide_whoever_started_the_run(start_bot: StartBot) -> None:
    # THREADFLOW_APPROVERS lets Alice decide other runs; the step's own approvers take precedence.
    bot = await start_bot(THREADFLOW_APPROVERS=ALICE)
    bot.engine.register(bob_flow)
    run = await suspend_approval(bot, "run bob-flow ship it", user=ALICE)

    for action in ("approve", "reject", "reject_with_reason"):
        await bot.emu.click(run.approval, action, user=ALICE)
    refusals = await bot.emu.wait_for(lambda: len(bot.emu.ephemerals(ALICE)) == 3 and bot.emu.ephemerals(ALICE))
    assert all(r.text == f":no_entry: You can't decide this one; it is up to <@{BOB}>. Nothing was changed."
               for r in refusals)
    await unchanged(bot, run)

    await bot.emu.click(run.approval, "approve", user=BOB)
    assert await bot.settled(run.run_id) == "success"
    assert [r["by"] for r in await resumes(bot, run.run_id)] == [BOB]


async def test_a_reject_modal_submitted_by_someone_not_allowed_changes_nothing(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_APPROVERS=ALICE)
    emu = bot.emu
    run = await suspend_approval(bot)
    await emu.click(run.approval, "reject_with_reason", user=ALICE)
    [view] = await emu.wait_for(lambda: emu.views(ALICE), timeout=5)

    submitted = await emu.submit_view(view.id, {"reason": "I say no"}, user=BOB)  # Bob submits Alice's modal

    assert submitted.status == 200
    refusal = await emu.wait_for(lambda: emu.ephemerals(BOB), timeout=5)
    assert refusal[0].text.startswith(":no_entry: You can't decide this one")
    await unchanged(bot, run)


# -- buttons that point at another run ----------------------------------------------------------------


async def two_runs(bot: RunningBot) -> tuple[SuspendedRun, SuspendedRun]:
    bot.engine.register(sign_off_flow)
    a = await suspend_approval(bot, "run approval ship it")
    b = await suspend_approval(bot, "run sign-off-flow sign it")
    assert button_value(b.approval)["step"] == "sign-off"
    return a, b


async def test_a_button_naming_a_run_with_another_runs_step_path_is_refused(bot: RunningBot) -> None:
    a, b = await two_runs(bot)
    forged = json.dumps({"run_id": a.run_id, "step": "sign-off"})  # run A, but B's step path

    answer = await bot.emu.click(a.approval, "approve", user=ALICE, value=forged)

    assert answer.status == 200
    told = await bot.emu.wait_for(lambda: bot.emu.ephemerals(ALICE), timeout=5)
    assert told[0].text.startswith(":warning:") and "sign-off" in told[0].text
    await unchanged(bot, a, b)


async def test_a_button_naming_another_run_on_this_runs_message_is_refused(bot: RunningBot) -> None:
    a, b = await two_runs(bot)
    forged = json.dumps({"run_id": b.run_id, "step": "sign-off"})  # run B's button value on run A's message

    answer = await bot.emu.click(a.approval, "approve", user=ALICE, value=forged)

    assert answer.status == 200
    await bot.idle()
    await unchanged(bot, a, b)

