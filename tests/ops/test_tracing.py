"""Spans and log context: no-ops without opentelemetry, nested run -> step -> agent -> tool spans with it."""

from __future__ import annotations

import asyncio

import pytest

from workflows import tracing
from workflows.tracing import current_context, log_context, scope, span


async def test_without_opentelemetry_spans_are_no_ops_and_errors_pass_through() -> None:
    if tracing.tracing_available():
        pytest.skip("opentelemetry is installed here")
    with span("run", run_id="r1") as current:
        assert current is None
    with pytest.raises(ValueError, match="bad"), scope("step", path="a/b"):
        raise ValueError("bad")
    assert current_context() == {}


async def test_log_context_nests_ignores_none_and_is_copied_into_tasks() -> None:
    with log_context(run_id="r1", path=None):
        assert current_context() == {"run_id": "r1"}
        with log_context(path="a/b#1"):
            inner = asyncio.get_running_loop().create_task(asyncio.sleep(0, result=current_context()))
        assert current_context() == {"run_id": "r1"}
        assert await inner == {"run_id": "r1", "path": "a/b#1"}
    assert current_context() == {}


def test_spans_nest_run_step_agent_tool_with_opentelemetry() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    with scope("run", run_id="r1", workflow_id="deploy-app"), scope("step", path="plan", step_id="plan"):
        with span("agent.call", agent="planner", model="offline"), span("tool.call", tool="get_weather"):
            pass
        with pytest.raises(RuntimeError), span("tool.call", tool="crash"):
            raise RuntimeError("sensor offline")
    spans = {s.name + (s.attributes.get("threadflow.tool") or ""): s for s in exporter.get_finished_spans()}
    run, step_, agent = spans["run"], spans["step"], spans["agent.call"]
    assert run.attributes["threadflow.run_id"] == "r1" and step_.attributes["threadflow.path"] == "plan"
    assert step_.parent.span_id == run.context.span_id and agent.parent.span_id == step_.context.span_id
    assert spans["tool.callget_weather"].parent.span_id == agent.context.span_id
    failed = spans["tool.callcrash"]
    assert failed.parent.span_id == step_.context.span_id and not failed.status.is_ok
    assert any(e.name == "exception" for e in failed.events)
