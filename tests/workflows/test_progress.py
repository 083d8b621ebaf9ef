"""An agent step's progress, published while it runs: numbered rows a UI in another process can follow.

On SQLite and PostgreSQL: the rows of one attempt come in order (started, the answer's text, tool calls in
progress then done, done with the agent call's record), their text is the step's answer, and a step without
``engine.progress`` publishes nothing (answering in one piece, as before).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from storage.memory_store import MemoryStore
from storage.progress_store import ProgressStore
from tests.conftest import EngineFactory
from workflows import Agent, Workflow, agent_step, tool
from workflows.memory import Memory
from workflows.offline_model import OfflineModel


class City(BaseModel):
    city: str = Field(description="The city.")


@tool
async def get_weather(args: City) -> str:
    """The weather now."""
    return f"Sunny in {args.city}."


class Ask(BaseModel):
    question: str = "What is the weather? Use get_weather."


def weather_flow(delay: float = 0.0) -> Any:
    agent = Agent("forecaster", "Answer about the weather.", model=OfflineModel(stream_delay=delay),
                  tools=[get_weather])
    return Workflow(id="weather", input=Ask).then(agent_step(agent, id="forecast", input=Ask, prompt="{question}")).commit()


async def test_an_agent_step_publishes_its_progress_in_order_and_its_text_is_the_answer(engine: EngineFactory) -> None:
    wf = weather_flow(delay=0.001)
    e = engine(wf)
    e.memory = Memory(e.db)
    e.progress = ProgressStore(e.db)
    handle = await e.start("weather", {})
    result = await e.wait_for(handle.run_id, timeout=10)
    assert result.status == "success"

    rows = await e.progress.read(handle.run_id)
    assert {(r.path, r.attempt) for r in rows} == {("forecast", 1)}
    assert [r.seq for r in rows] == list(range(len(rows)))
    kinds = [r.kind for r in rows]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert rows[0].data == {"step_id": "forecast", "agent": "forecaster"}
    tools = [r.data for r in rows if r.kind == "tool"]
    assert [t["status"] for t in tools] == ["in_progress", "complete"] and tools[1]["output"] == "Sunny in " + \
        tools[0]["details"].split('"city": "')[1].rstrip('"}') + "."
    text = "".join(r.data["text"] for r in rows if r.kind == "text")
    assert text == result.output["text"]
    [record] = await MemoryStore(e.db).agent_contexts(handle.run_id)
    assert rows[-1].data == {"context_id": record.id}
    assert await e.progress.delete_run(handle.run_id) == len(rows)


async def test_without_a_place_to_publish_an_agent_step_answers_in_one_piece(engine: EngineFactory) -> None:
    e = engine(weather_flow())
    e.memory = Memory(e.db)
    handle = await e.start("weather", {})
    assert (await e.wait_for(handle.run_id, timeout=10)).status == "success"
    assert await ProgressStore(e.db).read(handle.run_id) == []


async def test_the_agent_result_names_its_context_record(engine: EngineFactory) -> None:
    e = engine()
    await e.open()
    memory = Memory(e.db)
    agent = Agent("helper", "Be brief.", model=OfflineModel(stream_delay=0), memory=memory)
    result = await agent.generate("hello there", thread="t-1")
    row = await MemoryStore(e.db).get_agent_context(result.context_id or -1)
    assert row is not None and row.answer is not None and row.answer["text"] == result.text
    updated = await MemoryStore(e.db).record_feedback(row.id, {"user": "U1", "rating": "good", "at": 1.0})
    again = await MemoryStore(e.db).record_feedback(row.id, {"user": "U1", "rating": "bad", "at": 2.0})
    assert updated is not None and again is not None
    assert again.answer["feedback"] == [{"user": "U1", "rating": "bad", "at": 2.0}]
    assert await MemoryStore(e.db).record_feedback(999_999, {"user": "U1", "rating": "good"}) is None
