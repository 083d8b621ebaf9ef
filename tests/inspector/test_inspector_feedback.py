"""The run inspector shows the feedback people gave an agent's answer, under that agent call."""

from __future__ import annotations

from bot.inspector import InspectorConfig
from storage.memory_store import MemoryStore
from tests.inspector.conftest import ALICE, BOB, Browser, StartInspector
from workflows import Engine


async def test_a_run_page_shows_each_persons_rating_under_the_agent_call(engine: Engine, start: StartInspector,
                                                                        browser: type[Browser]) -> None:
    run = await (await engine.start("chat-flow", {"prompt": "how are you?"})).result(timeout=10)
    assert run.status == "success"
    store = MemoryStore(engine.db)
    [call] = await store.agent_contexts(run.run_id)
    client = browser((await start(InspectorConfig(port=0))).url)
    _, page = await client.get(f"/runs/{run.run_id}")
    assert 'class="feedback"' not in page

    await store.record_feedback(call.id, {"user": ALICE, "rating": "good", "at": 1_800_000_000.0})
    await store.record_feedback(call.id, {"user": BOB, "rating": "bad", "at": 1_800_000_060.0})
    status, page = await client.get(f"/runs/{run.run_id}")
    assert status == 200
    section = page.split('<ul class="feedback">')[1].split("</ul>")[0]
    assert f"👍</span> {ALICE}" in section and f"👎</span> {BOB}" in section
    assert "1 👍 · 1 👎" in page
