"""``/flow run deploy-app {"goal": ...}``: the unknown key is named in the ephemeral answer and nothing starts."""

from __future__ import annotations

from bot.emulator import Ephemeral
from tests.bot.conftest import ALICE, RunningBot
from workflows import StepContext, Workflow, step


async def test_an_unknown_input_key_in_a_slash_command_is_named_and_starts_nothing(bot: RunningBot) -> None:
    ack = await bot.command('run deploy-app {"goal": "a todo app"}')

    assert ack.status == 200 and ack.json["response_type"] == "ephemeral"
    shown: list[Ephemeral] = await bot.emu.wait_for(lambda: bot.emu.ephemerals(ALICE), timeout=5)
    assert shown[0].text.startswith(":warning:")
    assert "unknown field 'goal'; expected fields: request, cost_threshold" in shown[0].text
    await bot.idle()
    assert await bot.engine.list_runs() == []


async def test_input_to_a_workflow_without_an_input_model_is_refused_ephemerally(bot: RunningBot) -> None:
    @step(id="hello")
    async def hello(ctx: StepContext[object]) -> dict[str, str]:
        return {"said": "hello"}

    bot.engine.register(Workflow(id="no-input").then(hello).commit())

    ack = await bot.command('run no-input {"name": "Ada"}')

    assert ack.status == 200 and ack.json["response_type"] == "ephemeral"
    shown: list[Ephemeral] = await bot.emu.wait_for(lambda: bot.emu.ephemerals(ALICE), timeout=5)
    assert shown[0].text.startswith(":warning:")
    assert "Invalid input of workflow 'no-input': it takes no input" in shown[0].text
    await bot.idle()
    assert await bot.engine.list_runs() == []
