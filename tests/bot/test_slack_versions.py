"""Runs in Slack across deploys: the approval button of a run whose version was deployed away (a clear answer,
nothing consumed), a run kept on its old version shown as that version says, and a stranded run moved onto the
new version going on in its thread."""

from __future__ import annotations

from bot.emulator import Message
from tests.bot.conftest import (
    ALICE,
    BOB,
    StartBot,
    approval_messages,
    block_text,
    button_value,
    replies,
    root_for,
)
from tests.helpers import eventually
from tests.helpers.versioned_flows import deploy_v1, deploy_v2

FLOWS = "tests.helpers.versioned_flows"
#: ``ship``, ``later`` and ``guarded`` in two versions each (see the module).
RESHAPED = "tests.helpers.deploy_flows"
OPS = BOB  # on call: moves stranded runs


async def suspended_on_version_1(start_bot: StartBot) -> tuple[str, Message]:
    """A run of ``deploy`` version 1 waiting at its approval, and the bot that started it stopped."""
    old = await start_bot(THREADFLOW_WORKFLOWS=f"{FLOWS}:V1")
    emu = old.emu
    assert (await old.command("run deploy", user=ALICE)).status == 200
    approval: Message = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=5)
    run_id = button_value(approval)["run_id"]
    assert await old.settled(run_id, ("suspended",)) == "suspended"
    await old.stop()
    return run_id, approval


async def test_approve_on_a_run_whose_version_is_gone_says_so_and_consumes_nothing(start_bot: StartBot) -> None:
    run_id, approval = await suspended_on_version_1(start_bot)

    new = await start_bot(THREADFLOW_WORKFLOWS=f"{FLOWS}:V2")  # the deploy dropped version 1
    emu = new.emu
    click = await emu.click(approval, "approve", user=ALICE)
    assert click.status == 200
    [said] = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert f"Run {run_id} is on version 1 ({deploy_v1().fingerprint[:8]}) of workflow 'deploy'" in said.text
    assert "Registered versions of 'deploy': 2 (" in said.text and "Nothing was changed" in said.text
    [susp] = await new.engine.store.suspensions_of(run_id)
    assert (susp.path, susp.status) == ("gate", "open")
    await new.stop()

    both = await start_bot(THREADFLOW_WORKFLOWS=f"{FLOWS}:BOTH")  # version 1 registered again
    assert (await emu.click(approval, "approve", user=ALICE)).status == 200
    assert await both.settled(run_id) == "success"
    assert sorted(s.path for s in (await both.engine.details(run_id)).steps) == ["finish", "gate", "prepare"]


async def test_a_stranded_run_says_so_once_in_its_thread(start_bot: StartBot) -> None:
    run_id, _ = await suspended_on_version_1(start_bot)
    new = await start_bot(THREADFLOW_WORKFLOWS=f"{FLOWS}:V2")  # nobody serves version 1 any more
    emu = new.emu
    root = root_for(emu, run_id)
    assert root is not None

    def stranded_notes() -> list[Message]:
        return [m for m in replies(emu, root) if "which no running process has" in m.text]

    [note] = await emu.wait_for(stranded_notes, timeout=20)
    assert f"version 1 ({deploy_v1().fingerprint[:8]})" in note.text and "threadflow rerun" in note.text
    await new.idle()
    await emu.wait_for(lambda: len(stranded_notes()) == 1, timeout=2)
    assert len(stranded_notes()) == 1  # once, although the sweep keeps running
    await new.stop()


async def test_a_stranded_runs_approver_is_told_about_the_version_not_that_it_is_someone_elses_decision(
    start_bot: StartBot,
) -> None:
    old = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:GUARDED_V1")  # Bob approves `guarded`
    emu = old.emu
    assert (await old.command("run guarded", user=ALICE)).status == 200
    card: Message = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=5)
    run_id = button_value(card)["run_id"]
    assert await old.settled(run_id, ("suspended",)) == "suspended"
    await old.stop()

    new = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:GUARDED_V2")  # version 1 is not here
    assert (await emu.click(card, "approve", user=BOB)).status == 200
    [said] = await emu.wait_for(lambda: emu.ephemerals(BOB), timeout=5)
    assert "You can't decide this one" not in said.text  # (who decides is the step's to say: unknown here)
    assert "not deployed here" in said.text and "Nothing was changed" in said.text
    # The versions, the processes that have them and what to run are for those who may decide without the step's
    # own word (the run's starter here), not for whoever clicks.
    assert "version 1" not in said.text and new.engine.owner not in said.text
    assert (await emu.click(card, "approve", user=ALICE)).status == 200
    [told] = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert f"Run {run_id} is on version 1" in told.text and "Nothing was changed" in told.text
    await new.stop()


async def test_an_old_version_runs_agent_answer_is_posted_after_a_deploy_that_renamed_the_step(
    start_bot: StartBot,
) -> None:
    old = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:V1")
    emu = old.emu
    assert (await old.command("run ship", user=ALICE)).status == 200
    card: Message = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=5)
    run_id = button_value(card)["run_id"]
    assert await old.settled(run_id, ("suspended",)) == "suspended"
    await old.stop()

    # Version 2 (it renamed `summary` to `report`) deployed beside version 1, kept until its runs drain.
    both = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:BOTH")
    assert (await emu.click(card, "approve", user=ALICE)).status == 200
    assert await both.settled(run_id) == "success"
    assert sorted(s.path for s in (await both.engine.details(run_id)).steps) == ["gate", "summary"]
    root = root_for(emu, run_id)
    assert root is not None
    answer = await emu.wait_for(lambda: next((m for m in replies(emu, root) if "(`summary`)" in block_text(m)), None),
                                timeout=5)
    assert "VERSION-ONE-SUMMARY" in block_text(answer)  # posted as version 1's agent step says


async def test_an_old_version_runs_approval_card_offers_reject_with_reason_when_its_gate_takes_one(
    start_bot: StartBot,
) -> None:
    old = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:LATER_V1")  # `later` naps, then asks
    assert (await old.command("run later", user=ALICE)).status == 200
    [run] = await eventually(old.engine.list_runs, timeout=5)
    assert await old.settled(run.id, ("waiting",)) == "waiting"
    await old.stop()

    # Version 2's gate takes no reason; the version-1 run wakes under the deploy and asks at its own gate.
    both = await start_bot(THREADFLOW_WORKFLOWS=f"{RESHAPED}:LATER_BOTH")
    emu = both.emu
    assert await both.settled(run.id, ("suspended",), timeout=10) == "suspended"
    card = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=5)
    assert "reject_with_reason" in str(card.blocks)


async def moved_onto_version_2(start_bot: StartBot) -> tuple[object, str, str]:
    """A run of ``deploy`` version 1 stranded at its approval by a deploy that dropped version 1, then moved onto
    version 2 as the stranded note says (``threadflow rerun RUN --from gate2``). Returns the bot, both run ids."""
    run_id, _ = await suspended_on_version_1(start_bot)
    new = await start_bot(THREADFLOW_WORKFLOWS=f"{FLOWS}:V2")
    moved_to = (await (await new.engine.rerun(run_id, "gate2", started_by=OPS)).result(timeout=10)).run_id
    assert (await new.engine.get_run(run_id)).status == "canceled"
    return new, run_id, moved_to


async def test_the_thread_of_a_moved_run_says_where_it_went(start_bot: StartBot) -> None:
    new, run_id, moved_to = await moved_onto_version_2(start_bot)
    emu = new.emu  # type: ignore[attr-defined]
    root = root_for(emu, run_id)
    assert root is not None
    said = await emu.wait_for(
        lambda: next((m for m in replies(emu, root) if "Run canceled" in m.text), None), timeout=5)
    assert f"Moved by <@{OPS}> to run `{moved_to}` on version 2 ({deploy_v2().fingerprint[:8]})" in block_text(said)
    # The old run's card no longer asks, and says where the decision is now.
    await emu.wait_for(lambda: any(f"the run was moved to run `{moved_to}`" in block_text(m)
                                   for m in replies(emu, root) if "step `gate`" in block_text(m)), timeout=5)


async def test_the_moved_run_goes_on_in_the_same_thread_and_is_approved_there(start_bot: StartBot) -> None:
    new, run_id, moved_to = await moved_onto_version_2(start_bot)
    emu = new.emu  # type: ignore[attr-defined]
    root = root_for(emu, run_id)
    assert root is not None

    def moved_card() -> Message | None:
        return next((m for m in replies(emu, root) if has_card_of(m, moved_to)), None)

    card = await emu.wait_for(moved_card, timeout=5)
    assert any(f"Run `{moved_to}`" in block_text(m) and "Workflow deploy" in block_text(m) for m in replies(emu, root))
    # Still the requester's run: moving it did not make the operator its approver.
    await emu.click(card, "approve", user=OPS)
    assert (await new.engine.get_run(moved_to)).status == "suspended"  # type: ignore[attr-defined]
    assert (await emu.click(card, "approve", user=ALICE)).status == 200
    assert await new.settled(moved_to) == "success"  # type: ignore[attr-defined]


def has_card_of(message: Message, run_id: str) -> bool:
    try:
        return button_value(message)["run_id"] == run_id
    except LookupError:
        return False
