"""The built-in examples end to end on the offline model: deploy-app (with its approval path) and chat-flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import MemoryStore
from workflows import Engine, Memory
from workflows.examples import builtin_workflows


@pytest.fixture
async def examples(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("THREADFLOW_MODEL", raising=False)
    engine = Engine.from_url(sqlite_url, poll_interval=0.05)
    engine.memory = Memory(engine.db)
    engine.register(*builtin_workflows())
    yield engine
    await engine.close()


async def test_deploy_app_asks_for_cost_approval_then_plans_a_dry_run(examples: Engine, tmp_path: Path) -> None:
    run = await examples.start("deploy-app", {"request": "a Postgres-backed API for 10k users"},
                               thread_id="slack:T:C:1.0", resource_id="slack:T:C")
    waiting = await run.result()
    assert waiting.status == "suspended"
    [approval] = waiting.suspended
    assert approval.step_id == "approve-cost"
    assert approval.payload["estimated_monthly_cost"] > approval.payload["threshold"] == 200.0
    assert any("database db" in c for c in approval.payload["components"])

    done = await (await examples.resume(run.run_id, data={"approved": True, "by": "U1"}, by="U1")).result()
    assert done.status == "success"
    assert done.output["dry_run"] is True
    assert done.output["steps"][-1].endswith("(skipped: dry run)")

    workspace = Path(done.output["workspace"])
    assert workspace == tmp_path / "workspace" / run.run_id
    main_tf = (workspace / "main.tf").read_text()
    assert 'resource "aws_db_instance" "db"' in main_tf and 'engine         = "postgres"' in main_tf
    assert (workspace / "variables.tf").exists()


async def test_agents_share_the_run_thread_and_record_what_they_knew(examples: Engine) -> None:
    run = await examples.start("deploy-app", {"request": "a small blog for 200 users", "cost_threshold": 1000},
                               thread_id="slack:T:C:2.0", resource_id="slack:T:C")
    result = await run.result()
    assert result.status == "success"  # cheap enough: no approval needed

    contexts = await MemoryStore(examples.db).agent_contexts(run.run_id)
    by_path = {c.path: c for c in contexts}
    assert {"plan", "architecture", "terraform-round#0/terraform", "deploy"} <= set(by_path)
    # The architect was given the planner's requirements from the shared thread, without any plumbing.
    architect_saw = " ".join(m["content"] or "" for m in by_path["architecture"].context["messages"])
    assert "Requirements for 'a small blog for 200 users'" in architect_saw
    deployer_saw = " ".join(m["content"] or "" for m in by_path["deploy"].context["messages"])
    assert "Terraform validation (round 1): valid" in deployer_saw


async def test_rejecting_the_cost_fails_the_run_cleanly(examples: Engine) -> None:
    run = await examples.start("deploy-app", {"request": "an API for 100k users"})
    assert (await run.result()).status == "suspended"
    handle = await examples.resume(run.run_id, step="approve-cost",
                                   data={"approved": False, "by": "U2", "reason": "too expensive"}, by="U2")
    result = await handle.result()
    assert result.status == "failed"
    assert result.error_path == "approve-cost"
    assert "Rejected by U2: too expensive" in (result.error or "")
    steps = {s.path for s in (await examples.details(run.run_id)).steps}
    assert {"plan", "architecture", "terraform-round#0/validate"} <= steps and "deploy" not in steps


async def test_chat_flow_answers_with_thread_memory(examples: Engine) -> None:
    thread = examples.memory.thread("slack:T:C:3.0", "slack:T:C")
    await thread.add("user", "Our database of choice is CockroachDB.", author="U1")
    run = await examples.start("chat-flow", {"prompt": "Which database did we choose?"},
                               thread_id="slack:T:C:3.0", resource_id="slack:T:C")
    result = await run.result()
    assert result.status == "success"
    assert "offline model" in result.output["text"]
    assert "CockroachDB" in result.output["text"]
