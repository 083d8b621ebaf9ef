"""README, "A workflow in five lines" + "Agents and memory": an Engine made as the README shows
(``Engine.from_url(...)``, ``engine.register(wf)``) runs agent steps that "read and write the run's memory
thread", and "each agent call records exactly what it was given" (``threadflow show RUN_ID --context``).

An Engine has its own memory on its database unless given one (before, only the bot's runtime set
``engine.memory``, so agents of a library run did not see each other and nothing was recorded).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pydantic import BaseModel

from workflows import Engine, Workflow
from workflows.agent import Agent
from workflows.agent_step import AgentText, agent_step


class Ask(BaseModel):
    question: str


planner = Agent("planner", "You plan.", model="offline")
reviewer = Agent("reviewer", "You review.", model="offline")
two_agents = (
    Workflow(id="two-agents", input=Ask)
    .then(agent_step(planner, input=Ask, prompt="Plan the postgres database migration: {question}"))
    .then(agent_step(reviewer, input=AgentText, prompt="Review the postgres database migration plan"))
    .commit()
)


async def test_agent_steps_of_a_library_engine_share_the_runs_memory_thread(tmp_path: Path) -> None:
    db_file = tmp_path / "threadflow.db"
    engine = Engine.from_url(f"sqlite+aiosqlite:///{db_file}")
    engine.register(two_agents)
    try:
        run = await engine.start("two-agents", {"question": "postgres database"})
        result = await run.result(timeout=20)
    finally:
        await engine.close()
    assert result.status == "success", result
    with sqlite3.connect(db_file) as conn:
        contexts = conn.execute("SELECT count(*) FROM agent_contexts WHERE run_id = ?", (run.run_id,)).fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    # The offline model quotes the most relevant earlier message of its thread: the reviewer must see the planner.
    assert "Earlier in this thread" in result.output["text"], result.output
    assert messages >= 2 and contexts == 2, (messages, contexts)
