"""Approval buttons end to end: who may decide, what the messages show afterwards, and double clicks."""

from __future__ import annotations

import asyncio

from bot.emulator import Message, SlackEmulator
from tests.bot.conftest import (
    ALICE,
    BOB,
    RunningBot,
    StartBot,
    SuspendedRun,
    block_text,
    has_buttons,
    replies,
    root_for,
    suspend_approval,
)


async def decided(emu: SlackEmulator, approval: Message, verdict: str) -> Message:
    """Wait until the approval message shows ``verdict`` and has no buttons left."""

    def check() -> Message | None:
        msg = emu.message(approval.ts, approval.channel)
        return msg if msg is not None and verdict in block_text(msg) and not has_buttons(msg) else None

    found: Message = await emu.wait_for(check, timeout=5)
    return found


async def result_reply(emu: SlackEmulator, run: SuspendedRun, headline: str) -> Message:
    found: list[Message] = await emu.wait_for(
        lambda: [m for m in replies(emu, run.root) if headline in m.text], timeout=5)
    assert len(found) == 1, [m.text for m in replies(emu, run.root)]
    return found[0]


async def root_shows(emu: SlackEmulator, run_id: str, status: str) -> Message:
    root: Message = await emu.wait_for(
        lambda: (m := root_for(emu, run_id)) is not None and f"): {status}" in m.text and m, timeout=5)
    return root


async def resumes(bot: RunningBot, run_id: str) -> list[dict[str, object]]:
    details = await bot.engine.details(run_id)
    return [ev.data for ev in details.events if ev.type == "run.resumed"]


async def test_approve_by_the_starter_completes_the_run(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)

    root = await root_shows(emu, run.run_id, "suspended")
    shown = block_text(root)
    assert "Workflow approval" in shown and ":double_vertical_bar: waiting for approval" in shown
    assert "`approve` _waiting for approval_" in shown and f"Started by <@{ALICE}>" in shown
    request = block_text(run.approval)
    assert "*Approval needed*" in request and "*details:* please ship it" in request
    assert [e["action_id"] for b in run.approval.blocks or [] for e in b.get("elements", []) if "action_id" in e] == [
        "approve", "reject", "reject_with_reason"]

    click = await emu.click(run.approval, "approve", user=ALICE)
    assert click.status == 200
    assert await bot.settled(run.run_id) == "success"

    after = await decided(emu, run.approval, f"Approved by <@{ALICE}>")
    assert "please ship it" in block_text(after)  # the request stays readable after the decision
    finished = await result_reply(emu, run, "Run finished")
    assert '"ok": true' in block_text(finished)
    root = await root_shows(emu, run.run_id, "success")
    assert "`approve`" in block_text(root) and ":white_check_mark: `approve`" in block_text(root)
    assert await resumes(bot, run.run_id) == [
        {"step_id": "approve", "by": ALICE, "data": {"approved": True, "by": ALICE, "reason": None}}]
    assert emu.ephemerals() == []


async def test_reject_fails_the_run_cleanly(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    await emu.click(run.approval, "reject", user=ALICE)
    assert await bot.settled(run.run_id) == "failed"

    record = await bot.engine.get_run(run.run_id)
    assert record.error is not None and record.error["message"] == f"Step 'approve' failed: Rejected by {ALICE}."
    await decided(emu, run.approval, f"Rejected by <@{ALICE}>")
    failed = await result_reply(emu, run, "Run failed")
    assert "Run failed at step `approve`" in block_text(failed) and f"Rejected by {ALICE}." in block_text(failed)
    await root_shows(emu, run.run_id, "failed")


async def test_reject_with_reason_asks_for_it_in_a_modal(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    click = await emu.click(run.approval, "reject_with_reason", user=ALICE)
    views = await emu.wait_for(lambda: emu.views(ALICE), timeout=5)
    opened = emu.calls("views.open")
    assert len(opened) == 1 and opened[0].params["trigger_id"] == click.trigger_id
    assert views[0].view["callback_id"] == "reject_reason"
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"  # nothing decided by opening it

    submitted = await emu.submit_view(views[0].id, {"reason": "too risky on a Friday"})
    assert submitted.status == 200 and emu.views(ALICE) == []  # the modal closed
    assert await bot.settled(run.run_id) == "failed"

    record = await bot.engine.get_run(run.run_id)
    assert record.error is not None and record.error["message"] == (
        f"Step 'approve' failed: Rejected by {ALICE}: too risky on a Friday.")
    assert await resumes(bot, run.run_id) == [{"step_id": "approve", "by": ALICE, "data": {
        "approved": False, "by": ALICE, "reason": "too risky on a Friday"}}]
    await decided(emu, run.approval, f"Rejected by <@{ALICE}>: too risky on a Friday")
    await result_reply(emu, run, "Run failed")


async def test_a_click_from_someone_not_allowed_changes_nothing(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    for action in ("approve", "reject", "reject_with_reason"):
        await emu.click(run.approval, action, user=BOB)
    refusals = await emu.wait_for(lambda: len(emu.ephemerals(BOB)) == 3 and emu.ephemerals(BOB), timeout=5)
    for eph in refusals:
        assert eph.text == f":no_entry: You can't decide this one; it is up to <@{ALICE}>. Nothing was changed."
        assert eph.thread_ts == run.root.ts  # shown where the button was clicked
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"
    assert await resumes(bot, run.run_id) == []
    assert emu.calls("views.open") == []
    current = emu.message(run.approval.ts)
    assert current is not None and has_buttons(current) and current.edited is None

    await emu.click(run.approval, "approve", user=ALICE)  # the starter still can
    assert await bot.settled(run.run_id) == "success"


async def test_approvers_setting_decides_who_may_click(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_APPROVERS="U0BOB, U0CAROL")
    emu = bot.emu
    run = await suspend_approval(bot, user=ALICE)
    await emu.click(run.approval, "approve", user=ALICE)
    refusal = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert "it is up to <@U0BOB>, <@U0CAROL>" in refusal[0].text
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"

    await emu.click(run.approval, "approve", user=BOB)
    assert await bot.settled(run.run_id) == "success"
    await decided(emu, run.approval, f"Approved by <@{BOB}>")


async def test_a_stale_second_click_is_told_it_was_already_decided(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_APPROVERS=f"{ALICE},{BOB}")
    emu = bot.emu
    run = await suspend_approval(bot)
    stale = run.approval.to_api()  # what Bob's screen still shows

    await emu.click(run.approval, "approve", user=ALICE)
    await decided(emu, run.approval, f"Approved by <@{ALICE}>")
    assert await bot.settled(run.run_id) == "success"

    await emu.click(stale, "reject", user=BOB)
    told = await emu.wait_for(lambda: emu.ephemerals(BOB), timeout=5)
    assert told[0].text == f":information_source: Already decided by <@{ALICE}>; nothing was changed."
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "success"
    assert len(await resumes(bot, run.run_id)) == 1
    assert f"Approved by <@{ALICE}>" in block_text(emu.message(run.approval.ts))  # type: ignore[arg-type]


async def test_two_simultaneous_clicks_resume_exactly_once(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_APPROVERS=f"{ALICE},{BOB}")
    emu = bot.emu
    run = await suspend_approval(bot)
    stale = run.approval.to_api()
    await asyncio.gather(emu.click(stale, "approve", user=ALICE), emu.click(stale, "reject", user=BOB))

    told = await emu.wait_for(lambda: emu.ephemerals(), timeout=5)
    status = await bot.settled(run.run_id)
    await bot.idle()
    decisions = await resumes(bot, run.run_id)
    assert len(decisions) == 1 and len(emu.ephemerals()) == 1
    winner = decisions[0]["by"]
    loser = BOB if winner == ALICE else ALICE
    assert status == ("success" if winner == ALICE else "failed")
    assert told[0].user == loser and f"Already decided by <@{winner}>" in told[0].text
    await decided(emu, run.approval, f"by <@{winner}>")


async def test_an_approval_nobody_answers_in_time_shows_expired_without_buttons(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.expiring_flows")
    run = await suspend_approval(bot, "run expiring-approval ship it")
    assert "expires" in block_text(run.approval)  # the card says until when it waits
    assert await bot.settled(run.run_id, timeout=15) == "failed"
    card = await decided(bot.emu, run.approval, "Expired")
    assert "no decision in time" in block_text(card)
    failed = await result_reply(bot.emu, run, "Run failed")
    assert "expired" in block_text(failed)
    await root_shows(bot.emu, run.run_id, "failed")
    # the expiry was the only decision: the card was edited, never posted again
    assert len([m for m in replies(bot.emu, run.root) if "Approval needed" in block_text(m)]) == 1


NESTED = "tests.helpers.nested_approval_flows"


def action_ids(msg: Message) -> list[str]:
    return [e["action_id"] for b in msg.blocks or [] if b.get("type") == "actions" for e in b["elements"]]


async def test_each_approval_of_a_nested_workflow_is_decided_by_its_own_step_approvers(start_bot: StartBot) -> None:
    # ``review/approve`` (Alice's) and ``release/approve`` (Bob's): two steps with the id "approve", told apart by path.
    bot = await start_bot(THREADFLOW_WORKFLOWS=NESTED)
    emu = bot.emu
    run = await suspend_approval(bot, "run ship v1.2", user=ALICE)
    assert "reject_with_reason" in action_ids(run.approval)
    await emu.click(run.approval, "approve", user=ALICE)
    await decided(emu, run.approval, f"Approved by <@{ALICE}>")
    release = await emu.wait_for(
        lambda: next((m for m in replies(emu, run.root) if has_buttons(m) and m.ts != run.approval.ts), None),
        timeout=5)
    assert await bot.settled(run.run_id, ("suspended",)) == "suspended"
    # Each card is drawn from the step at its path: only the review's decision takes a reason.
    assert "reject_with_reason" not in action_ids(release)

    await emu.click(release, "approve", user=ALICE)  # the reviewer does not decide the release
    refusal = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert refusal[0].text == f":no_entry: You can't decide this one; it is up to <@{BOB}>. Nothing was changed."
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"

    await emu.click(release, "approve", user=BOB)
    assert await bot.settled(run.run_id) == "success"


async def test_an_approval_of_a_nested_workflow_is_decided_by_that_workflows_approvers(start_bot: StartBot) -> None:
    # ``Workflow(id="security-review", approvers=[Bob])`` used as a step of ``guarded``: Bob decides, not the starter.
    bot = await start_bot(THREADFLOW_WORKFLOWS=NESTED)
    emu = bot.emu
    run = await suspend_approval(bot, "run guarded new firewall rules", user=ALICE)

    await emu.click(run.approval, "approve", user=ALICE)
    refusal = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert refusal[0].text == f":no_entry: You can't decide this one; it is up to <@{BOB}>. Nothing was changed."
    await bot.idle()
    assert (await bot.engine.get_run(run.run_id)).status == "suspended"

    await emu.click(run.approval, "approve", user=BOB)
    assert await bot.settled(run.run_id) == "success"
