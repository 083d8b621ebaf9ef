"""The approval button of a run whose workflow version was deployed away: a clear answer, nothing consumed."""

from __future__ import annotations

from bot.emulator import Message
from tests.bot.conftest import ALICE, StartBot, approval_messages, button_value, replies, root_for
from tests.helpers.versioned_flows import deploy_v1

FLOWS = "tests.helpers.versioned_flows"


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
