"""The built-in agent workflows end to end on every kind of OpenAI-compatible server the README names.

The fake server behaves like each family (what it refuses, with which status and words; JSON in fences;
streams cut its way) and answers like a small obliging model. ``deploy-app`` must reach its cost approval
and finish, ``chat-flow`` must answer, and what each agent was given (its context record, what
``threadflow show --context`` prints) must be the same on every server apart from the output instructions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from storage import MemoryStore
from tests.fakes import DUMMY_KEY, FAMILIES, FakeOpenAI
from workflows import Engine, Memory, Workflow, agent_step
from workflows.agent import Agent, known_agents
from workflows.examples import builtin_workflows
from workflows.models import forget_capabilities
from workflows.tools import tool

#: What may differ between servers in a context record: how structured output was asked for.
OUTPUT_KEYS = {"output_mode", "output_instructions"}


@pytest.fixture
async def engine_on(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """``engine = await engine_on(fake, profile)``: the built-in workflows with agents on ``fake``."""
    made: list[Engine] = []
    forget_capabilities()

    async def start(fake: FakeOpenAI, profile: str | None, name: str = "e") -> Engine:
        monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
        monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("THREADFLOW_MODEL_MAX_ATTEMPTS", "1")
        if profile is None:
            monkeypatch.delenv("THREADFLOW_MODEL_PROFILE", raising=False)
        else:
            monkeypatch.setenv("THREADFLOW_MODEL_PROFILE", profile)
        engine = Engine.from_url(sqlite_url.replace("threadflow.db", f"{name}.db"), poll_interval=0.05)
        engine.memory = Memory(engine.db)
        engine.register(*builtin_workflows())
        made.append(engine)
        return engine

    yield start
    for engine in made:
        await engine.close()
    await close_agents()
    forget_capabilities()


async def close_agents() -> None:
    """The built-in agents are module-level: close the HTTP clients they opened on this test's servers."""
    for agent in known_agents():
        await agent.aclose()


async def run_both(engine: Engine) -> dict[str, Any]:
    """deploy-app through its cost approval to the end, and chat-flow; returns what each agent was given."""
    run = await engine.start("deploy-app", {"request": "a Postgres-backed API for 10k users"},
                             thread_id="slack:T:C:1.0", resource_id="slack:T:C")
    waiting = await run.result()
    assert waiting.status == "suspended", waiting.error
    [approval] = waiting.suspended
    assert approval.step_id == "approve-cost"
    done = await (await engine.resume(run.run_id, data={"approved": True, "by": "U1"}, by="U1")).result()
    assert done.status == "success", done.error
    assert done.output["steps"][-1].endswith("(skipped: dry run)")
    chat = await engine.start("chat-flow", {"prompt": "Which database did we choose?"},
                              thread_id="slack:T:C:1.0", resource_id="slack:T:C")
    answered = await chat.result()
    assert answered.status == "success", answered.error
    assert answered.output["text"].startswith("You asked: Which database did we choose?")
    contexts = [*await MemoryStore(engine.db).agent_contexts(run.run_id),
                *await MemoryStore(engine.db).agent_contexts(chat.run_id)]
    # Run ids differ between any two runs (and name the run's workspace folder): compare without them.
    text = json.dumps({f"{c.agent}@{c.path}": c.context for c in contexts})
    return dict(json.loads(text.replace(run.run_id, "RUN").replace(chat.run_id, "CHAT")))


def differences(got: Any, want: Any, where: str = "") -> list[str]:
    """Where two records differ (paths and values), so a failure says what, not just that."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want), key=str)
                for d in differences(got.get(k), want.get(k), f"{where}.{k}")]
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in differences(g, w, f"{where}[{i}]")]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def given(contexts: dict[str, Any]) -> dict[str, Any]:
    """Each record without its output instructions, and its memory without row ids and times (which differ
    between any two runs): the messages, tools, schema name and remembered texts the agent was given."""
    out: dict[str, Any] = {}
    for key, context in contexts.items():
        kept = {k: v for k, v in context.items() if k not in OUTPUT_KEYS}
        memory = kept.pop("memory") or {}
        kept["memory"] = {
            "summary": memory.get("summary"), "working_memory": memory.get("working_memory"),
            "messages": [(m["role"], m["author"], m["content"]) for m in memory.get("messages", [])],
            "recalled": [(r["message"]["author"], r["message"]["content"]) for r in memory.get("recalled", [])],
        }
        out[key] = kept
    return out


@pytest.mark.parametrize("configured", [True, False], ids=["profile-set", "profile-unset"])
async def test_deploy_app_and_chat_flow_run_on_every_server_family_with_the_same_context(
    engine_on: Any, configured: bool
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        async with FakeOpenAI(profile=family) as fake:
            engine = await engine_on(fake, family if configured else None, name=f"{family}-{configured}")
            seen[family] = await run_both(engine)
            await close_agents()
            structured = [r for r in fake.chat_requests if "json" in str(r["messages"][0]["content"]).lower()
                          or r.get("response_format")]
            assert structured, f"{family}: the structured agents made no requests"
    reference = given(seen["openai"])
    assert {"planner@plan", "architect@architecture", "deployer@deploy", "chat@answer"} <= set(reference)
    for family, contexts in seen.items():
        assert differences(given(contexts), reference) == [], f"{family}: the agents were given something else"
    # What does differ: how the schema reached the model.
    assert seen["openai"]["planner@plan"]["output_mode"] == "json_schema"
    assert seen["openai"]["planner@plan"]["output_instructions"] is None
    assert seen["llamacpp"]["planner@plan"]["output_mode"] == "json_object"
    assert seen["generic"]["planner@plan"]["output_mode"] == "text"
    assert '"Requirements"' in seen["generic"]["planner@plan"]["output_instructions"]


async def test_a_refused_json_schema_costs_one_extra_request_per_process(engine_on: Any) -> None:
    async with FakeOpenAI(profile="llamacpp") as fake:  # an older llama-server: json_schema is a 500
        engine = await engine_on(fake, None)
        await run_both(engine)
        await run_both(engine)  # a second deploy and chat in the same process
        formats = [(r.get("response_format") or {}).get("type") for r in fake.chat_requests]
    assert formats.count("json_schema") == 1  # three agents, two runs each: one probe in all
    assert formats.count("json_object") == 6  # planner, architect, deployer, twice
    assert len(fake.chat_requests) == 1 + 6 + 2 * 2  # + the terraformer's and chat's plain answers, twice


async def test_concurrent_first_calls_probe_the_refused_mode_once(engine_on: Any) -> None:
    class Verdict(BaseModel):
        approved: bool

    async with FakeOpenAI(profile="generic") as fake:
        engine = await engine_on(fake, None)
        reviewer = Agent("reviewer", "Review.")
        flow = Workflow(id="reviews", input=Verdict).foreach(
            agent_step(reviewer, id="review", input=Verdict, output=Verdict, prompt="Review {approved}"),
            concurrency=5, items=lambda _: [Verdict(approved=True)] * 5).commit()
        engine.register(flow)
        result = await (await engine.start("reviews", {"approved": True})).result()
        formats = [(r.get("response_format") or {}).get("type") for r in fake.chat_requests]
    assert result.status == "success", result.error
    assert formats == ["json_schema", "json_object", None, None, None, None, None]


async def test_a_model_answering_invalid_json_twice_fails_the_step_with_the_answer(engine_on: Any) -> None:
    async with FakeOpenAI(profile="openai") as fake:
        engine = await engine_on(fake, None)
        fake.reply_text("Requirements: it should be fast and cheap.")
        fake.reply_text('{"summary": "fast", "requirements": "all of them"}')
        run = await engine.start("deploy-app", {"request": "a small blog"})
        result = await run.result()
    assert result.status == "failed" and result.error_path == "plan"
    error = result.error or ""
    assert "does not fit Requirements even after being shown the error (1 re-ask)" in error
    assert """It answered: '{"summary": "fast", "requirements": "all of them"}'""" in error
    assert "field 'requirements': Input should be a valid array" in error
    assert len(fake.chat_requests) == 2  # the first answer, one re-ask: the bound
    correction = fake.chat_requests[1]["messages"][-1]["content"]
    assert correction.startswith("Your reply does not match the Requirements JSON schema: the reply contains no JSON")
    assert fake.chat_requests[1]["messages"][-2] == {
        "role": "assistant", "content": "Requirements: it should be fast and cheap."}


class Host(BaseModel):
    host: str


@tool
async def ping(args: Host) -> str:
    """Ping a host."""
    return "pong"


async def test_tools_refused_by_the_server_fail_the_step_with_the_setting_to_change(engine_on: Any) -> None:
    async with FakeOpenAI(profile="vllm", tools=False) as fake:
        engine = await engine_on(fake, "vllm")
        checker = Agent("checker", "Check hosts.", tools=[ping])
        engine.register(Workflow(id="check", input=Host).then(
            agent_step(checker, input=Host, prompt="ping {host}")).commit())
        result = await (await engine.start("check", {"host": "db-1"})).result()
    assert result.status == "failed"
    assert '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set' in (result.error or "")
    assert "Start vLLM with --enable-auto-tool-choice and a --tool-call-parser" in (result.error or "")
    assert len(fake.chat_requests) == 1  # not retried: it will not succeed by retrying
