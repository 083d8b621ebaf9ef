"""The run inspector in real headless Chromium, next to the sandbox (``threadflow dev``).

Uses Debian's ``chromium`` through Playwright, as the sandbox's browser test does. A deploy-app run is
started from Slack (the emulator), followed live on its run page, inspected (what the architect was
given), and approved from the page; the Slack card updates too. Screenshots land in ``test-artifacts/``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.sandbox import Sandbox
from bot.settings import Settings
from storage import MemoryStore
from storage.slack_store import SlackStore
from tests.bot.test_sandbox_browser import ARGS, ARTIFACTS, CHROMIUM
from tests.helpers import eventually

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'tf.db'}",  # type: ignore[call-arg]
                        THREADFLOW_PROGRESS_INTERVAL=0.2)
    async with Sandbox(settings, port=0) as sb:
        yield sb


@pytest.fixture
async def page(sandbox: Sandbox) -> AsyncIterator[Any]:
    errors: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": 1000})
            tab = await context.new_page()
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield tab
            await context.close()
        finally:
            await browser.close()
    assert errors == [], f"the page reported errors: {errors}"


async def still_same_page(page: Any) -> bool:
    return bool(await page.evaluate("window.__notReloaded === true"))


async def test_a_deploy_app_run_is_followed_live_inspected_and_approved_from_its_page(
    sandbox: Sandbox, page: Any,
) -> None:
    assert sandbox.inspector is not None
    base = sandbox.inspector.url.rstrip("/")
    await page.goto(sandbox.url)  # the sandbox page links here
    await expect(page.locator("#inspector-link")).to_have_attribute("href", base + "/runs")
    await expect(page.locator("#inspector-link")).to_be_visible()

    # The runs page shows a run started in Slack as it starts, without a reload.
    await page.goto(base + "/runs")
    await expect(page.locator("body")).to_have_attribute("data-live", "open")
    await page.evaluate("window.__notReloaded = true")
    await sandbox.emulator.slash_command("/flow", 'run deploy-app "a Postgres-backed API for 10k users"')
    row = page.locator("#runs-table tr[data-run]", has_text="deploy-app")
    await expect(row).to_be_visible(timeout=10_000)
    await expect(row.locator(".badge")).to_have_text("suspended", timeout=15_000)
    assert await still_same_page(page)
    run_id = await row.get_attribute("data-run")
    assert run_id

    # Its page: the graph with each step's status, from the run's events.
    await row.locator("a").first.click()
    await expect(page).to_have_url(f"{base}/runs/{run_id}")
    await expect(page.locator("body")).to_have_attribute("data-live", "open")
    graph = page.locator("#graph svg")
    for key, status in (("plan", "success"), ("architecture", "success"), ("terraform-round/validate", "success"),
                        ("approve-cost", "suspended"), ("deploy", "pending")):
        await expect(graph.locator(f'g.node[data-key="{key}"]')).to_have_attribute("data-status", status)
    await expect(graph.locator("g.cluster.kind-loop")).to_contain_text("repeat until")

    # What the architect was given holds the planner's answer (the run's memory thread).
    contexts = await MemoryStore(sandbox.bot.engine.db).agent_contexts(run_id)  # type: ignore[union-attr]
    planner_summary = next(c for c in contexts if c.agent == "planner").answer["output"]["summary"]  # type: ignore[index]
    await graph.locator('g.node[data-key="architecture"]').click()
    architect = page.locator('details.step[data-key="architecture"]')
    await expect(architect).to_have_attribute("open", "")
    given = architect.locator('.agent-call[data-agent="architect"] details.given')
    await expect(given).to_contain_text("Instructions")
    await expect(given.locator("ol.messages li", has_text=planner_summary).first).to_contain_text("planner")
    await expect(architect.locator(".agent-call")).to_contain_text("Latency")

    # Approve from the page: the page follows the rest of the run live, and the Slack card updates.
    await page.evaluate("window.__notReloaded = true")
    card = page.locator("#suspensions .suspension", has_text="approve-cost")
    await expect(card).to_contain_text("Estimated cost")
    await card.get_by_role("button", name="Approve", exact=True).click()
    await expect(page.locator("#flash")).to_have_text("Approved approve-cost.")
    await expect(page.locator("#run-status")).to_have_text("success", timeout=15_000)
    for key in ("approve-cost", "deploy"):
        await expect(graph.locator(f'g.node[data-key="{key}"]')).to_have_attribute("data-status", "success")
    await expect(page.locator("#suspensions")).to_have_count(0)
    await expect(page.locator("#cancel-form")).to_be_hidden()  # nothing left to cancel
    await expect(page.locator('.tl-row[data-path="deploy"] .bar.attempt')).to_have_count(1)
    assert await still_same_page(page)

    store = SlackStore(sandbox.bot.engine.db)  # type: ignore[union-attr]

    async def card_posted() -> Any:
        card = await store.approval_message(run_id, "approve-cost")
        return card if card is not None and card.ts is not None else None

    # Slack takes about one message a second per channel: the card may land after the decision was made.
    approval = await eventually(card_posted, timeout=20)

    def card_decided() -> bool:
        msg = sandbox.emulator.message(approval.ts or "")
        return msg is not None and "Approved by operator" in str(msg.blocks) + msg.text

    await sandbox.emulator.wait_for(card_decided, timeout=10)

    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("body").click(position={"x": 5, "y": 5})
    await page.screenshot(path=str(ARTIFACTS / "inspector-run.png"), full_page=True)
    await page.goto(base + "/runs")
    await expect(page.locator("body")).to_have_attribute("data-live", "open")
    for text in ("run approval", "run greet-user Ada", "run chat-flow what did the architect decide?"):
        await sandbox.emulator.slash_command("/flow", text)
    await expect(page.locator("#runs-table tr[data-run]")).to_have_count(4, timeout=10_000)
    await expect(page.locator("#runs-table .badge", has_text="running")).to_have_count(0, timeout=10_000)
    await page.screenshot(path=str(ARTIFACTS / "inspector-runs.png"))


async def test_greet_user_starts_from_its_workflow_form(sandbox: Sandbox, page: Any) -> None:
    assert sandbox.inspector is not None
    await page.goto(sandbox.inspector.url + "workflows")
    form = page.locator("#start-greet-user")
    await expect(page.locator("#wf-greet-user .graph svg g.node[data-key='greet']")).to_be_visible()
    await form.get_by_label("Name").fill("Ada")
    await form.get_by_role("button", name="Start greet-user").click()
    await expect(page).to_have_url(re.compile(rf"^{re.escape(sandbox.inspector.url)}runs/[0-9a-f]+$"))
    await expect(page.locator("#run-status")).to_have_text("success", timeout=10_000)
    await expect(page.locator("#run-summary")).to_contain_text("Hello, Ada!")
    await expect(page.locator("#flash")).to_have_text("Started greet-user.")
    await page.locator('details.step[data-key="greet"] summary').click()
    await expect(page.locator('details.step[data-key="greet"]')).to_contain_text('"name": "Ada"')  # its input
