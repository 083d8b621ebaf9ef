"""``GET /metrics`` counts the model server's refusals (fallbacks) and the re-asks of structured answers."""

from __future__ import annotations

from pydantic import BaseModel

from tests.fakes import DUMMY_KEY, FakeOpenAI
from tests.ops.conftest import StartBot
from tests.ops.test_metrics import scrape, value
from workflows.agent import Agent
from workflows.models import OpenAIChatModel, forget_capabilities


class Verdict(BaseModel):
    approved: bool


async def test_fallbacks_and_re_asks_are_counted(start_bot: StartBot) -> None:
    bot = await start_bot()
    forget_capabilities()
    async with FakeOpenAI(profile="generic") as fake:
        model = OpenAIChatModel("small", api_key=DUMMY_KEY, base_url=fake.base_url)
        try:
            fake.reply_text("Approved, obviously.")  # not JSON: one re-ask
            await Agent("reviewer", "Review.", model=model).generate("Review", output=Verdict)
            await Agent("reviewer", "Review.", model=model).generate("Review again", output=Verdict)
        finally:
            await model.aclose()
    _, samples = await scrape(bot.base_url)
    assert value(samples, "threadflow_llm_output_retries_total", model="small", agent="reviewer") == 1
    # json_schema and json_object refused once each in this process, whatever the number of calls.
    assert value(samples, "threadflow_llm_fallbacks_total", model="small", capability="json_schema") == 1
    assert value(samples, "threadflow_llm_fallbacks_total", model="small", capability="json_object") == 1
    assert len(fake.chat_requests) == 5  # 2 refusals + the answer and its re-ask + the second call
