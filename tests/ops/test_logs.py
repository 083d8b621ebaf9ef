"""Structured logs: one JSON object per line, carrying the run, step path and Slack thread; no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from bot.logs import setup_logging
from storage.schedule_store import ScheduleStore
from tests.ops.conftest import TOKEN, FakeClock
from workflows import Engine, StepContext, Workflow, step
from workflows.examples import builtin_workflows
from workflows.schedules import Scheduler, create_schedule
from workflows.tracing import log_context, scope

log = logging.getLogger("threadflow.test")


class Nothing(BaseModel):
    pass


@step(id="explode", input=Nothing, output=Nothing)
async def explode(ctx: StepContext[Nothing]) -> Nothing:
    logging.getLogger("threadflow.steps").info("about to fail")
    raise RuntimeError("the disk is full")


exploding = Workflow(id="exploding", input=Nothing).then(explode).commit()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """``setup_logging`` as ``serve`` calls it, writing into a buffer; logging is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {n: logging.getLogger(n).level for n in ("slack_bolt", "slack_sdk", "httpx", "openai", "aiohttp.access")})
    buffer = io.StringIO()

    def configure(fmt: str) -> None:
        setup_logging("INFO", fmt)
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)

    buffer.configure = configure  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line is one JSON object


async def test_context_fields_follow_the_code_into_tasks_and_leave_with_it(log_output: Any) -> None:
    log_output.configure("json")
    with scope("run", run_id="r1", workflow_id="wf"), log_context(slack_thread="slack:T:C:1.0"):
        log.info("run line")
        with scope("step", path="deploy/validate#2", step_id="validate"):
            await asyncio.get_running_loop().create_task(_log_in_task("step line"))
        log.info("back in the run")
    log.info("outside")
    by_message = {line["message"]: line for line in lines(log_output)}
    assert by_message["run line"]["run_id"] == "r1" and "path" not in by_message["run line"]
    step_line = by_message["step line"]
    assert (step_line["run_id"], step_line["path"], step_line["step_id"], step_line["slack_thread"]) == (
        "r1", "deploy/validate#2", "validate", "slack:T:C:1.0")
    assert "path" not in by_message["back in the run"]
    assert "run_id" not in by_message["outside"]
    assert {"ts", "time", "level", "logger"} <= set(by_message["outside"])


async def _log_in_task(message: str) -> None:
    log.info(message)


async def test_json_lines_from_real_runs_carry_the_run_id_and_no_secret(log_output: Any, sqlite_url: str) -> None:
    log_output.configure("json")
    clock = FakeClock(1_717_400_000.0)
    engine = Engine.from_url(sqlite_url, poll_interval=0.05).register(exploding, *builtin_workflows())
    scheduler = Scheduler(engine, clock=clock)
    try:
        for workflow_id, data in (("exploding", {}), ("greet-user", {"name": "Ada"})):
            await create_schedule(engine, ScheduleStore(engine.db), workflow_id, "* * * * *", input=data, now=clock())
        clock.advance(60)
        fired = await scheduler.tick()
        results = {f.schedule.workflow_id: await engine.wait_for(
            (await engine.list_runs(workflow_id=f.schedule.workflow_id))[0].id, timeout=5) for f in fired}
        assert results["exploding"].status == "failed" and results["greet-user"].status == "success"
        # A library error that quotes a token (it happens) is masked on the way out.
        logging.getLogger("slack_sdk.web").error("request failed with token=%s", TOKEN)
        log.warning("OPENAI_API_KEY=sk-test-not-a-real-key-0000 was rejected")
    finally:
        await engine.close()

    output = log_output.getvalue()
    parsed = lines(log_output)
    failed_run = results["exploding"].run_id
    run_lines = [line for line in parsed if failed_run in line["message"] or line["message"] == "about to fail"]
    assert run_lines and all(line["run_id"] == failed_run for line in run_lines)
    assert any(line["message"] == "about to fail" and line["logger"] == "threadflow.steps" for line in parsed)
    fired_lines = [line for line in parsed if line["logger"] == "threadflow.schedules"]
    assert fired_lines and all(line.get("schedule_id") for line in fired_lines)
    assert TOKEN not in output and "sk-test-not-a-real-key-0000" not in output and "xoxb-…" in output
    assert "the disk is full" in output  # errors stay readable


async def test_text_logs_name_the_context_too(log_output: Any) -> None:
    log_output.configure("text")
    with log_context(run_id="r9", path="review/foreach[3]/approve"):
        log.info("waiting")
    [line] = log_output.getvalue().splitlines()
    assert line.endswith("threadflow.test: waiting [run_id=r9 path=review/foreach[3]/approve]")
