"""The sandbox page in a real browser: a new user's first five minutes, clicked through in headless Chromium.

Uses Debian's ``chromium`` (``apt-get install chromium``; ``THREADFLOW_CHROMIUM`` names another binary) driven
by Playwright's Python package. Playwright never downloads a browser here. The page, the bot and the
emulator run in this test's event loop; the screenshot lands in ``test-artifacts/sandbox.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.sandbox import Sandbox
from bot.settings import Settings

CHROMIUM = os.environ.get("THREADFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not Path(CHROMIUM).exists():
    pytest.skip(f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
                allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the browser test needs Playwright's Python package (pip install playwright)")
expect = playwright_api.expect


@pytest.fixture
async def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'threadflow.db'}",  # type: ignore[call-arg]
                        THREADFLOW_PROGRESS_INTERVAL=0.2)
    async with Sandbox(settings, port=0) as sb:
        yield sb


@pytest.fixture
async def page(sandbox: Sandbox) -> AsyncIterator[Any]:
    errors: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 860})
            tab = await context.new_page()
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            await tab.goto(sandbox.url)
            await expect(tab.locator("#conn")).to_have_attribute("data-state", "live")
            yield tab
            await context.close()
        finally:
            await browser.close()
    assert errors == [], f"the page reported errors: {errors}"


async def send(page: Any, box: str, text: str) -> None:
    await page.locator(box).fill(text)
    await page.locator(box).press("Enter")


async def test_a_new_user_tries_approval_and_deploy_app(page: Any) -> None:
    channel, thread = page.locator("#messages"), page.locator("#thread-pane")

    # 1. /flow run approval: the root message with its checklist appears
    await send(page, "#composer", "/flow run approval")
    root = channel.locator(".msg", has_text="Workflow approval")
    await expect(root).to_contain_text("waiting for approval", timeout=10_000)
    await expect(root.locator("code", has_text="approve")).to_be_visible()

    # 2. bob may not approve alice's run; he alone is told so
    await root.locator(".reply-bar").click()
    await expect(thread).to_be_visible()
    await page.locator("#user-picker").select_option(label="bob")
    await thread.get_by_role("button", name="Approve", exact=True).click()
    refusal = thread.locator(".msg.ephemeral")
    await expect(refusal).to_contain_text("Only visible to you")
    await expect(refusal).to_contain_text("You can't decide this one")
    await page.locator("#user-picker").select_option(label="alice")
    await expect(refusal).to_have_count(0)

    # 3. alice approves: the checklist ticks and the run succeeds
    await thread.get_by_role("button", name="Approve", exact=True).click()
    await expect(thread).to_contain_text("Approved by @alice")
    await expect(root.locator(".bk-section").first).to_contain_text("✅ success", timeout=10_000)
    await expect(thread).to_contain_text("Run finished.")

    # 4. deploy-app suspends for the cost; approve it in its thread
    await send(page, "#composer", '/flow run deploy-app "a Postgres-backed API for 10k users"')
    deploy = channel.locator(".msg", has_text="Workflow deploy-app")
    await expect(deploy).to_contain_text("waiting for approval", timeout=15_000)
    await deploy.locator(".reply-bar").click()
    await expect(thread).to_contain_text("Estimated cost")
    await thread.get_by_role("button", name="Approve", exact=True).click()
    await expect(deploy.locator(".bk-section").first).to_contain_text("✅ success", timeout=15_000)
    await expect(deploy.locator(".bk-section").nth(1)).to_contain_text("deploy")
    await expect(thread).to_contain_text("Run finished.")

    # 5. chat in the thread: the answer draws on what the run put there
    await send(page, "#thread-composer", "what did the architect decide?")
    answer = thread.locator(".msg.from-bot", has_text="Earlier in this thread")
    await expect(answer).to_be_visible(timeout=10_000)
    await expect(thread.locator(".msg:not(.from-bot)", has_text="what did the architect decide?")).to_contain_text("alice")

    await page.locator("#composer").click()  # leave no hover highlight on a message
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "sandbox.png"))


async def test_reject_with_reason_in_a_modal(page: Any) -> None:
    await send(page, "#composer", "/flow run approval")
    root = page.locator("#messages .msg", has_text="Workflow approval")
    await expect(root.locator(".reply-bar")).to_be_visible(timeout=10_000)
    await root.locator(".reply-bar").click()
    await page.locator("#thread-pane").get_by_role("button", name="Reject with reason…").click()
    modal = page.locator("#modal")
    await expect(modal).to_be_visible()
    await modal.get_by_label("Why is this rejected?").fill("not this week")
    await modal.get_by_role("button", name="Reject", exact=True).click()
    await expect(modal).to_be_hidden()
    await expect(page.locator("#thread-pane")).to_contain_text("Rejected by @alice: not this week")
    await expect(root).to_contain_text("failed", timeout=10_000)


async def test_mrkdwn_rendering(page: Any) -> None:
    cases = {
        "*Status:* :white_check_mark: success": "<b>Status:</b> <span class=\"emoji\" title=\":white_check_mark:\">✅</span> success",
        "_waiting for approval_ and snake_case_name": "<i>waiting for approval</i> and snake_case_name",
        "`approve-cost` and ```{\n  \"a\": 1\n}```": "<code>approve-cost</code> and <pre class=\"code-block\">{\n  &quot;a&quot;: 1\n}</pre>",
        "by <@U0BOB> in <#C0GENERAL> see <https://example.com|docs>":
            "by <span class=\"mention\">@bob</span> in <span class=\"mention\">#general</span> see "
            "<a href=\"https://example.com\" target=\"_blank\" rel=\"noopener noreferrer\">docs</a>",
        "1 &lt; 2 &amp; <script>alert(1)</script>": "1 &lt; 2 &amp; &lt;script&gt;alert(1)&lt;/script&gt;",
        "`*not bold*` :unknown_code:": "<code>*not bold*</code> :unknown_code:",
    }
    for source, html in cases.items():
        assert await page.evaluate("(s) => window.threadflowSandbox.mrkdwn(s)", source) == html, source


# -- agents that feel native: streamed answers, task cards, feedback, the assistant container -----------------

RECORD_RENDERINGS = """(selector) => {
  window.__renderings = [];
  const box = document.querySelector(selector);
  const seen = () => {
    for (const el of box.querySelectorAll('.msg[data-stream]')) {
      const text = el.querySelector('.msg-content').innerText.trim();
      const last = window.__renderings[window.__renderings.length - 1];
      if (!last || last.text !== text || last.state !== el.dataset.stream) {
        window.__renderings.push({ ts: el.dataset.ts, state: el.dataset.stream, text });
      }
    }
  };
  new MutationObserver(seen).observe(box, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture
def agents_with_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Words 120 ms apart (an answer takes seconds: a person sees it grow) and workflows whose agents call tools."""
    monkeypatch.setenv("THREADFLOW_OFFLINE_STREAM_DELAY", "0.12")
    monkeypatch.setenv("THREADFLOW_WORKFLOWS", "tests.helpers.agent_flows")


async def test_a_person_sees_the_answer_grow_in_a_runs_thread_then_rates_it(
        agents_with_tools: None, sandbox: Sandbox, page: Any) -> None:
    from storage.memory_store import MemoryStore

    await send(page, "#composer", "/flow run approval")
    root = page.locator("#messages .msg", has_text="Workflow approval")
    await expect(root.locator(".reply-bar")).to_be_visible(timeout=10_000)
    await root.locator(".reply-bar").click()
    thread = page.locator("#thread-pane")
    await expect(thread.get_by_role("button", name="Approve", exact=True)).to_be_visible()

    await page.evaluate(RECORD_RENDERINGS, "#thread-messages")
    await send(page, "#thread-composer", "what needs approval here?")
    answer = thread.locator('.msg.from-bot[data-stream="stopped"]')
    await expect(answer).to_contain_text("what needs approval here?", timeout=20_000)
    await expect(answer.locator(".stream-cursor")).to_have_count(0)

    renderings = await page.evaluate("() => window.__renderings")
    final = (await answer.locator(".msg-content").inner_text()).strip()
    growing = [r["text"] for r in renderings if r["state"] == "streaming" and r["text"]]
    assert len(set(growing)) >= 2, renderings  # seen before it was complete, at least twice
    assert all(len(a) <= len(b) for a, b in zip(growing, growing[1:], strict=False))
    assert all(final.startswith(text.split("\n")[0][:40]) for text in growing)
    assert len(growing[0]) < len(final)

    await answer.get_by_role("button", name="This answer was helpful").click()
    thanks = thread.locator(".msg.ephemeral", has_text="Thanks!")
    await expect(thanks).to_be_visible()
    engine = sandbox.bot.engine  # type: ignore[union-attr]
    run_id = (await engine.list_runs(workflow_id="approval"))[0].id
    rated = [c for c in await MemoryStore(engine.db).agent_contexts(run_id) if (c.answer or {}).get("feedback")]
    assert [(f["user"], f["rating"]) for f in rated[0].answer["feedback"]] == [("U0ALICE", "good")]


async def test_task_cards_change_state_and_the_assistant_offers_the_workflows(
        agents_with_tools: None, sandbox: Sandbox, page: Any) -> None:
    channel, thread = page.locator("#messages"), page.locator("#thread-pane")
    await send(page, "#composer", '/flow run weather question="Weather in Oslo today and tomorrow? Use get_weather '
                                  'and get_forecast."')
    root = channel.locator(".msg", has_text="Workflow weather")
    await expect(root.locator(".reply-bar")).to_be_visible(timeout=15_000)
    await root.locator(".reply-bar").click()
    await page.evaluate(RECORD_RENDERINGS, "#thread-messages")
    plan = thread.locator(".plan")
    await expect(plan.locator(".task-card")).to_have_count(2, timeout=15_000)
    await expect(plan.locator('.task-card[data-status="complete"]')).to_have_count(2, timeout=15_000)
    await expect(thread.locator('.msg[data-stream="stopped"]')).to_contain_text("forecaster", timeout=20_000)
    statuses = await page.evaluate("""() => [...document.querySelectorAll('#thread-messages .task-card')]
        .map((c) => c.dataset.status)""")
    assert statuses == ["complete", "complete"]
    seen = [r["text"] for r in await page.evaluate("() => window.__renderings") if "get_weather" in r["text"]]
    assert any("in progress" in text for text in seen) and any("complete" in text for text in seen)

    # a question in the run's thread: the chat agent's tool call as a card of its own
    await send(page, "#thread-composer", "And in Bergen? Use get_weather.")
    chat = thread.locator('.msg.from-bot[data-stream]', has_text="Bergen")
    await expect(chat.locator('.task-card[data-status="complete"]')).to_have_count(1, timeout=20_000)
    await expect(chat).to_have_attribute("data-stream", "stopped", timeout=20_000)
    await expect(chat.get_by_role("button", name="This answer was helpful")).to_be_visible()
    await page.locator("#thread-composer").click()
    await thread.locator(".msg", has=page.locator(".plan")).evaluate("(el) => el.scrollIntoView({block: 'start'})")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "streaming.png"))

    # the assistant container: the registered workflows as prompts; one starts a run in the assistant thread
    await page.locator("#assistant-open").click()
    pane = page.locator("#assistant-pane")
    await expect(pane).to_be_visible()
    prompts = pane.locator(".chip.prompt")
    await expect(prompts).to_have_count(4, timeout=10_000)
    assert set(await prompts.all_inner_texts()) == {"Ask for approval", "Ask an agent", "Deploy an app",
                                                    "Greet someone"}
    await pane.get_by_role("button", name="Ask for approval").click()
    await expect(pane.locator(".msg", has_text="Workflow approval")).to_be_visible(timeout=10_000)
    await expect(pane.get_by_role("button", name="Approve", exact=True)).to_be_visible(timeout=10_000)
    await expect(pane.locator("#assistant-title")).to_have_text("run approval")
    await pane.get_by_role("button", name="Approve", exact=True).click()
    await expect(pane).to_contain_text("Run finished.", timeout=10_000)
    await page.locator("#assistant-composer").fill("what did I just approve?")
    await page.locator("#assistant-composer").press("Enter")
    await expect(pane.locator('.msg.from-bot[data-stream="stopped"]')).to_contain_text("what did I just approve?",
                                                                                       timeout=20_000)
    await expect(pane.locator("#assistant-status")).to_be_hidden()  # Slack clears "is thinking..." on the answer
    await page.screenshot(path=str(ARTIFACTS / "assistant.png"))
