"""The run inspector's pages over plain HTTP, without a browser: what the runs page and a run's page promise.

The browser tests (``test_inspector_browser.py``) need Chromium; these check the same promises of the pages'
HTML wherever the suite runs: newest first, filters, search by run id; per step its input, output, error
with the traceback and attempts; per agent call what it was given, its tool calls, answer, tokens and
latency; the run's Slack thread and memory thread.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from bot.inspector import InspectorConfig
from storage.slack_store import SlackRun, SlackStore
from tests.helpers.agent_flows import weather
from tests.inspector.conftest import ALICE, GENERAL, Browser, StartInspector
from workflows import Engine, RetryPolicy, StepContext, Workflow, step


class Num(BaseModel):
    n: int


@step(id="flaky", input=Num, output=Num, retry=RetryPolicy(attempts=2, backoff=0.01, jitter=False))
async def flaky(ctx: StepContext[Num]) -> Num:
    if ctx.attempt < 2:
        raise ConnectionError(f"try {ctx.attempt}: the registry did not answer")
    return Num(n=ctx.input.n + 1)


@step(id="boom", input=Num, output=Num)
async def boom(ctx: StepContext[Num]) -> Num:
    raise ValueError(f"the disk is full at {ctx.input.n}")


flaky_then_boom = Workflow(id="flaky-then-boom", input=Num).then(flaky).then(boom).commit()


def run_ids(page: str) -> list[str]:
    return re.findall(r'<tr[^>]*data-run="([0-9a-f]+)"', page)


def step_section(page: str, path: str) -> str:
    found = re.search(rf'<details class="step[^"]*" id="step-{re.escape(path)}".*?</details>\s*(?=<details class="step|</section>)',
                      page, re.S)
    assert found, f"no step {path} on the page"
    return html.unescape(found.group(0))


async def test_the_runs_page_lists_newest_first_filters_and_finds_a_run_by_its_id(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    ada = await (await engine.start("greet-user", {"name": "Ada"})).result(timeout=10)
    bob = await (await engine.start("greet-user", {"name": "Bob"})).result(timeout=10)
    waiting = await (await engine.start("approval", {"request": "ship it"})).result(timeout=10)
    assert (ada.status, bob.status, waiting.status) == ("success", "success", "suspended")
    client = browser((await start(InspectorConfig(port=0))).url)

    status, page = await client.get("/runs")
    assert status == 200 and run_ids(page) == [waiting.run_id, bob.run_id, ada.run_id]
    _, page = await client.get("/runs?status=suspended")
    assert run_ids(page) == [waiting.run_id]
    _, page = await client.get("/runs?workflow=greet-user")
    assert run_ids(page) == [bob.run_id, ada.run_id]
    _, page = await client.get("/runs?workflow=greet-user&status=suspended")
    assert run_ids(page) == []

    status, _ = await client.get(f"/runs?q={bob.run_id}", allow_redirects=False)
    assert status == 302  # a whole run id opens that run
    status, page = await client.get(f"/runs?q={bob.run_id}")
    assert status == 200 and f"/runs/{bob.run_id}/live" in page
    # The start of one finds the runs whose ids start so, newest first (runs made in the same second share their
    # first 8 digits, and runs one process made one after the other most of the rest).
    newest_first = [waiting.run_id, bob.run_id, ada.run_id]
    for size in (6, 8, 12, 15):
        _, page = await client.get(f"/runs?q={ada.run_id[:size]}")
        assert ada.run_id in run_ids(page)
        assert run_ids(page) == [r for r in newest_first if r.startswith(ada.run_id[:size])]
    _, page = await client.get("/runs?q=000000")  # no run started in 1970
    assert run_ids(page) == []


async def test_a_run_page_shows_inputs_outputs_errors_with_tracebacks_and_attempts(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    engine.register(flaky_then_boom)
    run = await (await engine.start("flaky-then-boom", {"n": 41})).result(timeout=10)
    assert run.status == "failed"
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get(f"/runs/{run.run_id}")
    assert status == 200

    retried = step_section(page, "flaky")
    assert "2 attempts" in retried and '"n": 41' in retried and '"n": 42' in retried  # input and output
    assert "ConnectionError: try 1: the registry did not answer" in retried
    assert 'raise ConnectionError(f"try {ctx.attempt}: the registry did not answer")' in retried  # its traceback
    assert retried.count('<tr class="outcome-') == 2

    failed = step_section(page, "boom")
    assert "status-failed" in failed and '"n": 42' in failed
    assert "ValueError: the disk is full at 42" in failed
    assert "Traceback" in failed and 'raise ValueError(f"the disk is full at {ctx.input.n}")' in failed
    assert 'data-path="flaky"' in page and 'data-path="boom"' in page  # both on the timeline


async def test_a_run_page_shows_what_each_agent_was_given_its_tools_answer_tokens_and_latency(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    engine.register(weather)
    thread = f"slack:T0TEAM:{GENERAL}:1700000000.000100"
    run = await (await engine.start("weather", {"question": "Rain in Oslo? Use get_forecast and get_weather."},
                                    thread_id=thread, started_by=ALICE)).result(timeout=20)
    assert run.status == "success"
    await SlackStore(engine.db).add_run(SlackRun(
        run_id=run.run_id, team_id="T0TEAM", channel_id=GENERAL, root_ts="1700000000.000100", thread_id=thread,
        started_by=ALICE, created_at=0.0), {"text": "root"})
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get(f"/runs/{run.run_id}")
    assert status == 200
    text = html.unescape(page)

    call = text.split('<div class="agent-call" data-agent="forecaster">')[1].split('<div class="agent-call"')[0]
    assert "What the agent was given" in call and "Instructions" in call
    assert "You answer questions about the weather. Use the tools." in call
    assert "Memory messages" in call and "Recalled from memory" in call
    assert "Tools offered" in call and "get_weather" in call and "broken_radar" in call
    # each tool call with its arguments and result (the offline model passes the prompt as the city)
    assert "Tool calls" in call and 'get_forecast({"city": "(offline) Rain in Oslo?' in call
    assert "→ <pre class=\"text\">Rain tomorrow in (offline) Rain in Oslo?" in call
    assert '<h5>Answer</h5>' in call and "Tool results: Sunny and 21 degrees in" in call
    assert re.search(r"Tokens</dt><dd>\d+ in · \d+ out", call)
    assert "Latency" in call and "not recorded" not in call
    # The run's Slack thread and its memory thread.
    assert f"{GENERAL} · 1700000000.000100" in text
    assert f'<a href="#memory" class="mono">{thread}</a>' in text and '<section class="card" id="memory">' in text


async def test_a_run_page_follows_the_run_live_with_each_nodes_status(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    waiting = await (await engine.start("approval", {"request": "ship it"})).result(timeout=10)
    client = browser((await start(InspectorConfig(port=0))).url)
    last = max(e.id for e in (await engine.details(waiting.run_id)).events)  # what the page already shows

    async with client.http.get(client.url(f"/runs/{waiting.run_id}/live?after={last}")) as feed:
        assert feed.status == 200 and feed.headers["Content-Type"].startswith("text/event-stream")
        await engine.resume(waiting.run_id, data={"approved": True, "by": ALICE}, by=ALICE)
        updates: list[dict[str, Any]] = []
        event = None
        while True:
            line = (await asyncio.wait_for(feed.content.readline(), 10)).decode().strip()
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "update":
                updates.append(json.loads(line.removeprefix("data: ")))
            elif line.startswith("data: ") and event == "end":
                break
    assert updates and updates[-1]["status"] == "success"
    assert updates[-1]["nodes"]["approve"]["status"] == "success"
    assert {e["path"] for u in updates for e in u["events"]} >= {"approve"}  # the events that changed it
    assert 'id="run-status"' in updates[-1]["html"] and "success" in updates[-1]["html"]


async def test_a_run_page_shows_what_an_agent_recalled_from_memory_and_why(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    thread_id = f"slack:T0TEAM:{GENERAL}:1700000000.000200"
    thread = engine.memory.thread(thread_id, f"slack:T0TEAM:{GENERAL}")
    await thread.add("user", "Our kubernetes cluster runs version 1.29 on three nodes.", author=ALICE)
    for i in range(25):  # far more than the 20 messages an agent is given, so the first must be recalled
        await thread.add("user", f"standup note {i}: nothing to report", author="bob")
    run = await (await engine.start("chat-flow", {"prompt": "which kubernetes version do we run?"},
                                    thread_id=thread_id)).result(timeout=20)
    assert run.status == "success"
    client = browser((await start(InspectorConfig(port=0))).url)
    _, page = await client.get(f"/runs/{run.run_id}")
    recalled = html.unescape(page.split('<ol class="messages recalled">')[1].split("</ol>")[0])
    assert "Our kubernetes cluster runs version 1.29 on three nodes." in recalled
    assert re.search(r'<span class="why">matched the search( \(score [0-9.]+\))?</span>', recalled)
    assert "next to a match" in recalled  # the message after it, for context
    assert re.search(r"Memory messages \(20", page)


async def test_the_runs_page_is_paged_fifty_at_a_time_and_pages_keep_their_filter(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    handles = [await engine.start("greet-user", {"name": f"person {i}"}) for i in range(53)]
    for handle in handles:
        await handle.result(timeout=20)
    waiting = await (await engine.start("approval", {"request": "ship it"})).result(timeout=10)
    client = browser((await start(InspectorConfig(port=0))).url)

    _, first = await client.get("/runs?workflow=greet-user")
    older = re.search(r'href="(/runs\?[^"]*before=[^"]+)"', first)
    assert older is not None and len(run_ids(first)) == 50
    _, second = await client.get(html.unescape(older.group(1)))
    assert len(run_ids(second)) == 3 and waiting.run_id not in run_ids(second)  # still only greet-user
    assert set(run_ids(first)) | set(run_ids(second)) == {h.run_id for h in handles}
    newer = re.search(r'href="(/runs\?[^"]*after=[^"]+)"', second)
    assert newer is not None
    _, back = await client.get(html.unescape(newer.group(1)))
    assert run_ids(back) == run_ids(first)


async def test_the_workflows_page_shows_each_workflow_with_its_graph_schema_and_start_form(
        engine: Engine, start: StartInspector, browser: Callable[[str], Browser]) -> None:
    client = browser((await start(InspectorConfig(port=0))).url)
    status, page = await client.get("/workflows")
    assert status == 200
    for workflow_id in engine.workflows:
        assert f'id="wf-{workflow_id}"' in page and f'id="start-{workflow_id}"' in page
    graph = json.loads(html.unescape(re.search(r'<script type="application/json" id="graph-deploy-app">(.*?)</script>',
                                               page, re.S).group(1)))  # type: ignore[union-attr]
    keys = {n["key"] for n in graph["nodes"] if n.get("key")}
    assert {"plan", "architecture", "approve-cost", "deploy"} <= keys
    assert any(n["kind"] == "loop" for n in graph["nodes"])  # the terraform <-> validation rounds
    schema = html.unescape(page.split('id="wf-greet-user"')[1].split("Input schema</summary>")[1].split("</pre>")[0])
    assert '"name"' in schema and '"type": "string"' in schema
