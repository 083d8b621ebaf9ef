"""``/flow ...`` end to end: the emulator sends signed slash commands, the real bot answers over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from bot.emulator import Ephemeral, SlackEmulator
from tests.bot.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    RunningBot,
    block_text,
    has_buttons,
    replies,
    root_for,
    suspend_approval,
)
from tests.helpers import eventually


async def wait_ephemeral(emu: SlackEmulator, user: str, count: int = 1) -> str:
    """The text of the ``count``-th ephemeral ``user`` has been shown."""
    shown: list[Ephemeral] = await emu.wait_for(
        lambda: len(emu.ephemerals(user)) >= count and emu.ephemerals(user), timeout=5)
    return shown[count - 1].text


async def assert_nothing_started(bot: RunningBot) -> None:
    await bot.idle()
    assert await bot.engine.list_runs() == []
    assert bot.emu.calls("chat.postMessage") == [] and bot.emu.messages(CHANNEL) == []


async def test_help_answers_with_usage(bot: RunningBot) -> None:
    ack = await bot.command("help")
    assert ack.status == 200 and ack.json["response_type"] == "ephemeral"
    text = await wait_ephemeral(bot.emu, ALICE)
    assert "Usage of `/flow`" in text
    for verb in ("run WORKFLOW", "runs", "status RUN_ID", "cancel RUN_ID", "workflows"):
        assert f"/flow {verb}" in text
    await assert_nothing_started(bot)


async def test_workflows_lists_registered_workflows_and_their_input(bot: RunningBot) -> None:
    await bot.command("workflows")
    text = await wait_ephemeral(bot.emu, ALICE)
    assert "`approval`: Waits for a person to approve or reject. (input: request)" in text
    assert "`greet-user`: Greets someone by name. (input: name)" in text
    await assert_nothing_started(bot)


@pytest.mark.parametrize(("text", "expected"), [
    ("run deploy-ap", "Workflow 'deploy-ap' is not registered. Known workflows:"),
    ('run greet-user {"name": "Ada"', "the JSON is malformed"),
    ('run greet-user {"nam": "Ada"}', "name"),
    ('run greet-user {"name": ["Ada"]}', "name"),
    ("run", "`/flow run` needs a workflow id"),
    ("launch approval", "Unknown subcommand `launch`"),
], ids=["unknown-workflow", "malformed-json", "missing-field", "wrong-type", "no-workflow", "unknown-verb"])
async def test_bad_command_is_answered_in_the_ack_and_starts_nothing(bot: RunningBot, text: str, expected: str) -> None:
    ack = await bot.command(text)
    assert ack.status == 200 and ack.json["response_type"] == "ephemeral"
    shown = await wait_ephemeral(bot.emu, ALICE)
    assert shown.startswith(":warning:") and expected in shown
    assert shown.count("Usage of `/flow`") == 1
    await assert_nothing_started(bot)


async def test_status_of_an_unknown_run_is_an_ephemeral_error(bot: RunningBot) -> None:
    ack = await bot.command("status nope")
    assert ack.status == 200
    shown = await wait_ephemeral(bot.emu, ALICE)
    assert "Run 'nope' does not exist" in shown and "Usage of `/flow`" in shown
    await assert_nothing_started(bot)


async def test_runs_and_status_describe_a_suspended_run(bot: RunningBot) -> None:
    run = await suspend_approval(bot)
    await bot.command("runs", user=BOB)
    listing = await wait_ephemeral(bot.emu, BOB)
    assert "*Recent runs*" in listing
    assert f"`{run.run_id}` approval: :double_vertical_bar: waiting for approval (by <@{ALICE}>)" in listing

    await bot.command(f"status {run.run_id}", user=BOB)
    status = await wait_ephemeral(bot.emu, BOB, 2)
    assert f"*Run `{run.run_id}`* (approval)" in status
    assert "`approve` waiting for approval" in status
    assert bot.emu.ephemerals(ALICE) == []  # answers go only to whoever asked


async def test_runs_when_there_are_none(bot: RunningBot) -> None:
    await bot.command("runs")
    assert "No runs yet" in await wait_ephemeral(bot.emu, ALICE)


async def test_cancel_by_the_starter_cancels_the_run(bot: RunningBot) -> None:
    run = await suspend_approval(bot)
    seen_before = run.approval.to_api()
    await bot.command(f"cancel {run.run_id}")
    assert await wait_ephemeral(bot.emu, ALICE) == f"Run `{run.run_id}` is canceled."
    assert await bot.settled(run.run_id) == "canceled"
    said = await bot.emu.wait_for(
        lambda: [m for m in replies(bot.emu, run.root) if "Run canceled" in m.text], timeout=5)
    assert f"Canceled by <@{ALICE}>" in block_text(said[0])
    root = await bot.emu.wait_for(lambda: (m := root_for(bot.emu, run.run_id)) and "canceled" in m.text and m)
    assert f"Canceled by <@{ALICE}>." in block_text(root)
    # The approval request loses its buttons: nobody can decide for a canceled run any more.
    withdrawn = await bot.emu.wait_for(lambda: (m := bot.emu.message(run.approval.ts)) and not has_buttons(m) and m)
    assert f"No decision needed any more: the run was canceled by <@{ALICE}>." in block_text(withdrawn)
    await bot.emu.click(seen_before, "approve", user=ALICE)  # a screen that still shows the buttons
    late = await wait_ephemeral(bot.emu, ALICE, 2)
    assert late == f":warning: Run {run.run_id} is canceled; only a suspended run can be resumed."
    assert (await bot.engine.get_run(run.run_id)).status == "canceled"


async def test_cancel_by_someone_else_is_refused(bot: RunningBot) -> None:
    run = await suspend_approval(bot)
    await bot.command(f"cancel {run.run_id}", user=BOB)
    refusal = await wait_ephemeral(bot.emu, BOB)
    assert refusal == f":no_entry: Only <@{ALICE}> may cancel run `{run.run_id}`."
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"


@pytest.mark.parametrize(("text", "expected"), [
    ("run greet-user name=Ada", {"name": "Ada"}),
    ('run greet-user name="Ada Lovelace"', {"name": "Ada Lovelace"}),
    ("run greet-user name=42", {"name": "42"}),
    ("run greet-user Ada Lovelace", {"name": "Ada Lovelace"}),
    ('run greet-user {"name": "Ada"}', {"name": "Ada"}),
    ("run approval please ship it", {"request": "please ship it"}),
], ids=["pair", "quoted-pair", "numeric-looking-pair", "free-text", "json", "free-text-approval"])
async def test_run_input_forms(bot: RunningBot, text: str, expected: dict[str, str]) -> None:
    await bot.command(text)
    posted = await bot.emu.wait_for(lambda: bot.emu.messages(CHANNEL), timeout=5)
    run = (await eventually(bot.engine.list_runs))[0]  # the root message is posted just before the run starts
    assert run.id in posted[0].text and run.started_by == ALICE
    assert run.input == expected
    if run.workflow_id == "greet-user":
        assert await bot.settled(run.id) == "success"
        assert (await bot.engine.get_run(run.id)).output == {"greeting": f"Hello, {expected['name']}!"}


@pytest.mark.parametrize("tamper", ["forge_signature", "stale_timestamp"])
async def test_unsigned_requests_are_rejected_and_ignored(bot: RunningBot, tamper: str) -> None:
    emu = bot.emu
    opts: dict[str, Any] = {tamper: True}
    ack = await bot.command("run approval", **opts)
    assert ack.status == 401
    posted = await emu.post_as_user(f"<@{emu.state.bot_user_id}> hello", **opts)
    assert [d.status for d in posted.deliveries] == [401, 401]
    await bot.idle()
    assert await bot.engine.list_runs() == []
    assert emu.calls("chat.postMessage") == [] and emu.ephemerals() == []
    assert [m.user for m in emu.messages(CHANNEL)] == [ALICE]  # only the person's own post


# -- any text after /flow is a command ------------------------------------------------------------------------
# slack_bolt's body parser takes any form body in which the letters "payload" occur for an interaction
# (``payload={json}``); a slash command whose text, channel or user name holds the word would be parsed as ``{}``
# and answered 404 ("/flow failed with the error http_service_error" in Slack).


async def test_a_run_whose_input_mentions_payload_starts(bot: RunningBot) -> None:
    ack = await bot.command("run approval check the webhook payload before we ship")
    assert ack.status == 200, ack.body

    async def started() -> list[str]:
        return [r.id for r in await bot.engine.list_runs()]

    [run_id] = await eventually(started)
    assert (await bot.engine.get_run(run_id)).input == {"request": "check the webhook payload before we ship"}


async def test_commands_work_in_a_channel_whose_name_contains_payload(bot: RunningBot) -> None:
    channel = bot.emu.add_channel("payload-team")
    ack = await bot.emu.slash_command(bot.settings.command, "help", user=ALICE, channel=channel)
    assert ack.status == 200, ack.body
    assert "Usage" in ack.body
