"""End-to-end fixtures for the Slack bot: the emulator plays Slack, the real bolt app answers over HTTP.

Nothing of ours is mocked. ``start_bot`` starts the real server (``bot.server.start_server``) with a real
engine on a SQLite file in ``tmp_path``; requests carry real signatures, and the bot's Web API calls go
to the emulator through slack_sdk. Every test also checks, on the way out, that neither the bot token nor
the signing secret shows up in a Slack message, an API call, an HTTP answer or a log record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import SlackBot
from bot.emulator import DeliveryResult, Message, SlackEmulator
from bot.runtime import build_engine
from bot.server import start_server
from bot.settings import Settings
from tests.helpers import eventually
from workflows import Engine

TOKEN = "xoxb-test-1234-token-do-not-leak"
SIGNING_SECRET = "signing-secret-do-not-leak-5678"
CHANNEL = "C0GENERAL"
ALICE, BOB = "U0ALICE", "U0BOB"
TERMINAL = ("success", "failed", "canceled")

_ENV_PREFIXES = ("SLACK_", "THREADFLOW_", "OPENAI_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come only from the test: no stray SLACK_*/THREADFLOW_* variable, and no OpenAI key
    (so agents use the offline model and nothing can reach a real service)."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    yield


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the bot's and the Slack libraries' logs down to DEBUG (the rest at INFO)."""
    caplog.set_level(logging.INFO)
    for name in ("threadflow", "slack_bolt", "slack_sdk"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


@pytest.fixture
async def emu(logs: pytest.LogCaptureFixture) -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=TOKEN) as emulator:
        yield emulator
        assert_no_secrets(emulator, logs)


def assert_no_secrets(emu: SlackEmulator, logs: pytest.LogCaptureFixture) -> None:
    """Neither secret may appear in what Slack stored or received, nor in any log record."""
    seen = [json.dumps(emu.snapshot())]
    seen += [json.dumps(call.params, default=str) for call in emu.calls()]
    seen += [json.dumps(ru.posts, default=str) for ru in emu.state.response_urls.values()]
    seen += [d.response_body for d in emu.state.deliveries]
    # Every phase's records: at teardown ``logs.records`` holds only the teardown's.
    for record in [*logs.get_records("setup"), *logs.get_records("call"), *logs.records]:
        seen.append(record.getMessage())
        if record.exc_info:
            seen.append(logging.Formatter().formatException(record.exc_info))
    app_tokens = set(emu.socket_mode.app_tokens)
    for secret in (TOKEN, SIGNING_SECRET, *app_tokens):
        leaks = [text[:200] for text in seen if secret in text]
        assert not leaks, f"a secret leaked: {leaks}"
    # Every API call authenticated as the bot (the app-level token only opens Socket Mode connections).
    assert {call.token for call in emu.calls() if call.method != "apps.connections.open"} <= {TOKEN}
    assert {call.token for call in emu.calls("apps.connections.open")} <= app_tokens


# -- the bot under test -------------------------------------------------------------------------------


def make_settings(emu: SlackEmulator, database: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emu.api_url,
        "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "THREADFLOW_PROGRESS_INTERVAL": 0.05,
        "THREADFLOW_MODEL": "offline",
        # Functional tests don't wait for Slack's pace; tests of delivery under Slack's limits switch it on
        # (with the emulator enforcing those limits).
        "THREADFLOW_SLACK_PACING": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class RunningBot:
    """One bot process's worth of objects, started in this event loop."""

    emu: SlackEmulator
    settings: Settings
    engine: Engine
    bot: SlackBot
    runner: web.AppRunner
    port: int
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    async def stop(self) -> None:
        """Shut down like the process would: bot tasks canceled, runs handed back, database closed."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    async def command(self, text: str, *, user: str = ALICE, **opts: Any) -> DeliveryResult:
        return await self.emu.slash_command(self.settings.command, text, user=user, **opts)

    async def idle(self, timeout: float = 5.0) -> None:
        """Wait until every listener bolt is still running and every background task of the bot, except the
        run renderers, is done: after this, a duplicate that would be handled has been (no blind sleep)."""

        async def drain() -> None:
            while True:
                busy = [t for t in self.bot.tasks if not t.done()]
                busy += [t for t in asyncio.all_tasks() if not t.done() and _is_bolt_listener(t)]
                if not busy:
                    return
                await asyncio.wait(busy)

        await asyncio.wait_for(drain(), timeout)

    async def settled(self, run_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 5.0) -> str:
        """Wait until the run's status is one of ``statuses``; returns it."""

        async def status() -> str | None:
            current = (await self.engine.get_run(run_id)).status
            return current if current in statuses else None

        return str(await eventually(status, timeout=timeout))


def _is_bolt_listener(task: asyncio.Task[Any]) -> bool:
    """A listener bolt runs in an untracked task (only with ``process_before_response=False``; the bot runs
    its listeners before responding, so this finds none unless that setting changes)."""
    return getattr(task.get_coro(), "__name__", "") == "run_ack_function_asynchronously"


StartBot = Callable[..., Awaitable[RunningBot]]


@pytest.fixture
async def start_bot(emu: SlackEmulator, tmp_path: Path) -> AsyncIterator[StartBot]:
    """``bot = await start_bot(THREADFLOW_APPROVERS="U0BOB")``: a bot on this test's database file.

    Starting another bot (after ``await bot.stop()``) reuses the same database, as a restarted process would;
    the emulator then delivers to the newest one.
    """
    started: list[RunningBot] = []

    async def start(**overrides: Any) -> RunningBot:
        settings = make_settings(emu, tmp_path / "threadflow.db", **overrides)
        engine = build_engine(settings, poll_interval=0.05, lease_seconds=2.0)
        runner, bot, port = await start_server(settings, engine, host="127.0.0.1", port=0)
        running = RunningBot(emu, settings, engine, bot, runner, port)
        started.append(running)
        emu.bot_url = running.url
        return running

    yield start
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def bot(start_bot: StartBot) -> RunningBot:
    return await start_bot()


# -- reading what the bot posted ----------------------------------------------------------------------


def has_buttons(msg: Message | dict[str, Any]) -> bool:
    blocks = msg.get("blocks") if isinstance(msg, dict) else msg.blocks
    return any(b.get("type") == "actions" for b in blocks or [])


def button_value(msg: Message) -> dict[str, Any]:
    for block in msg.blocks or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == "approve":
                return dict(json.loads(element["value"]))
    raise LookupError("no Approve button")


def root_for(emu: SlackEmulator, run_id: str) -> Message | None:
    return next((m for m in emu.messages(CHANNEL) if run_id in m.text), None)


def replies(emu: SlackEmulator, root: Message) -> list[Message]:
    """The thread under ``root``, without the root itself."""
    return [m for m in emu.thread(root.channel, root.ts) if m.ts != root.ts]


def approval_messages(emu: SlackEmulator, channel: str = CHANNEL) -> list[Message]:
    return [r for m in emu.messages(channel) for r in emu.thread(channel, m.ts) if has_buttons(r)]


def block_text(msg: Message | dict[str, Any]) -> str:
    """All text a person sees in a message: the fallback text and every block's text."""
    blocks = msg.get("blocks") if isinstance(msg, dict) else msg.blocks
    text = msg.get("text", "") if isinstance(msg, dict) else msg.text
    parts = [text]
    for block in blocks or []:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"].get("text", ""))
        for element in block.get("elements") or []:
            if isinstance(element.get("text"), str):
                parts.append(element["text"])
    return "\n".join(parts)


@dataclass
class SuspendedRun:
    run_id: str
    root: Message
    approval: Message


async def suspend_approval(bot: RunningBot, text: str = "run approval please ship it", *,
                           user: str = ALICE) -> SuspendedRun:
    """Start ``approval`` from Slack and wait until its approval message with buttons is in the thread."""
    emu = bot.emu
    before = {m.ts for m in approval_messages(emu)}
    ack = await bot.command(text, user=user)
    assert ack.status == 200, ack.body
    approval = await emu.wait_for(
        lambda: next((m for m in approval_messages(emu) if m.ts not in before), None), timeout=5)
    run_id = button_value(approval)["run_id"]
    assert await bot.settled(run_id, ("suspended",)) == "suspended"
    root = root_for(emu, run_id)
    assert root is not None and approval.thread_ts == root.ts
    return SuspendedRun(run_id, root, approval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
