"""``GET /metrics`` scraped over HTTP from the real bot server after real runs."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from slack_sdk.web.async_client import AsyncWebClient

from bot.emulator import SlackEmulator
from bot.metrics import Metrics
from tests.helpers import eventually
from tests.ops.conftest import ALICE, CHANNEL, TOKEN, StartBot
from workflows.agent import Agent
from workflows.errors import ModelError
from workflows.models import FunctionModel, ModelResponse, OfflineModel


async def scrape(base_url: str) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    return text, samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_runs_count_runs_steps_approvals_commits_and_suspended(start_bot: StartBot) -> None:
    bot = await start_bot()
    emu = bot.emu
    assert (await bot.emu.slash_command("/flow", "run greet-user Ada", user=ALICE)).status == 200
    await bot.emu.slash_command("/flow", "run approval ship it", user=ALICE)
    await bot.emu.slash_command("/flow", "run approval ship that too", user=ALICE)

    async def suspended() -> list[Any]:
        runs = await bot.engine.list_runs(status="suspended")
        return runs if len(runs) == 2 else []

    first, _second = await eventually(suspended)
    await bot.engine.resume(first.id, data={"approved": True}, by=ALICE)
    assert (await bot.engine.wait_for(first.id, timeout=5)).status == "success"
    [greeted] = await bot.engine.list_runs(workflow_id="greet-user")
    assert (await bot.engine.wait_for(greeted.id, timeout=5)).status == "success"

    text, samples = await scrape(bot.base_url)
    assert value(samples, "threadflow_runs_started_total", workflow="greet-user") == 1
    assert value(samples, "threadflow_runs_started_total", workflow="approval") == 2
    assert value(samples, "threadflow_runs_finished_total", workflow="greet-user", status="success") == 1
    assert value(samples, "threadflow_runs_finished_total", workflow="approval", status="success") == 1
    assert value(samples, "threadflow_step_duration_seconds_count", workflow="greet-user", step="greet",
                 status="success") == 1
    assert value(samples, "threadflow_step_duration_seconds_count", workflow="approval", step="approve",
                 status="suspended") == 2
    assert value(samples, "threadflow_approvals_total", workflow="approval", step="approve", decision="approved") == 1
    assert value(samples, "threadflow_runs_suspended") == 1  # read from the database at scrape time
    assert value(samples, "threadflow_commit_batch_size_count") > 0
    assert value(samples, "threadflow_commit_duration_seconds_count") == value(samples, "threadflow_commit_batch_size_count")
    assert "# HELP threadflow_slack_api_calls_total" in text and "# HELP threadflow_llm_calls_total" in text
    assert TOKEN not in text and emu.messages(CHANNEL)


async def test_llm_calls_tokens_and_errors_are_counted(start_bot: StartBot) -> None:
    bot = await start_bot()

    async def broken(*_: Any) -> ModelResponse:
        raise ModelError("Model 'broken' failed after 1 attempt(s): HTTP 503.")

    answered = await Agent("helper", "Be brief.", model=OfflineModel()).generate("What is threadflow?")
    for _ in range(2):
        try:
            await Agent("helper", "Be brief.", model=FunctionModel(broken, name="broken")).generate("hi")
        except ModelError:
            pass
    _, samples = await scrape(bot.base_url)
    assert value(samples, "threadflow_llm_calls_total", model="offline", outcome="ok") == 1
    assert value(samples, "threadflow_llm_tokens_total", model="offline", kind="prompt") == answered.usage.prompt_tokens > 0
    assert value(samples, "threadflow_llm_tokens_total", model="offline", kind="completion") == answered.usage.completion_tokens
    assert value(samples, "threadflow_llm_calls_total", model="broken", outcome="error") == 2
    assert value(samples, "threadflow_llm_errors_total", model="broken", error="ModelError") == 2
    assert value(samples, "threadflow_llm_call_duration_seconds_count", model="offline") == 1


async def test_slack_calls_and_retried_429s_are_counted(emu: SlackEmulator) -> None:
    metrics = Metrics()
    try:
        client = AsyncWebClient(token=TOKEN, base_url=emu.api_url, retry_handlers=[metrics.rate_limit_handler(3)])
        emu.fail_next("chat.postMessage", status=429, retry_after=0)
        response = await client.chat_postMessage(channel=CHANNEL, text="hello")
        assert response["ok"]
        metrics.slack_call("chat_postMessage", ok=True, ratelimited=False)
        metrics.slack_call("chat_update", ok=False, ratelimited=True)  # retries used up: still 429
        metrics.slack_call("views_open", ok=False, ratelimited=False)
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families((await metrics.render()).decode())
                   for s in family.samples}
        assert value(samples, "threadflow_slack_ratelimited_total", method="chat.postMessage") == 1
        assert value(samples, "threadflow_slack_ratelimited_total", method="chat.update") == 1
        assert value(samples, "threadflow_slack_api_calls_total", method="chat.postMessage", outcome="ok") == 1
        assert value(samples, "threadflow_slack_api_calls_total", method="chat.update", outcome="ratelimited") == 1
        assert value(samples, "threadflow_slack_api_calls_total", method="views.open", outcome="error") == 1
    finally:
        metrics.close()


async def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    try:
        one.slack_call("chat_postMessage", ok=True)
        assert b'method="chat.postMessage"' in await one.render()
        assert b'method="chat.postMessage"' not in await two.render()
    finally:
        one.close()
        two.close()
