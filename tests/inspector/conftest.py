"""Fixtures for the run inspector: a real engine on SQLite, the Slack emulator for sign-in and membership,
and the inspector served over HTTP. Nothing of ours is mocked; Slack is the emulator, over HTTP.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.emulator import SlackEmulator
from bot.inspector import InspectorConfig, RunningInspector, SlackSignIn, start_inspector
from bot.runtime import build_engine
from bot.settings import Settings
from storage.slack_store import SlackRun, SlackStore
from workflows import Engine

ALICE, BOB = "U0ALICE", "U0BOB"
GENERAL, SECRET = "C0GENERAL", "C0SECRET"
BOT_TOKEN = "xoxb-inspector-test"
CLIENT_ID, CLIENT_SECRET = "inspector-client", "inspector-client-secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("SLACK_", "THREADFLOW_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("THREADFLOW_WORKSPACE", str(tmp_path / "workspace"))
    yield


@pytest.fixture
async def emulator() -> AsyncIterator[SlackEmulator]:
    """A workspace with #general (everyone) and #secret (alice only), and the inspector's sign-in client."""
    async with SlackEmulator(bot_token=BOT_TOKEN) as emu:
        emu.add_channel("secret", SECRET)
        emu.openid.set_members(SECRET, [ALICE])
        emu.openid.register_client(CLIENT_ID, CLIENT_SECRET)
        yield emu


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    settings = Settings(_env_file=None, THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'tf.db'}",  # type: ignore[call-arg]
                        THREADFLOW_POLL_INTERVAL=0.05)
    eng = build_engine(settings)
    await eng.open()
    yield eng
    await eng.close()


def slack_config(emulator: SlackEmulator, **overrides: Any) -> InspectorConfig:
    values: dict[str, Any] = dict(
        port=0, slack=SlackSignIn(CLIENT_ID, CLIENT_SECRET, emulator.api_url), bot_token=BOT_TOKEN,
        slack_api_url=emulator.api_url,
    )
    values.update(overrides)
    return InspectorConfig(**values)


StartInspector = Callable[[InspectorConfig], Awaitable[RunningInspector]]


@pytest.fixture
async def start(engine: Engine) -> AsyncIterator[StartInspector]:
    started: list[RunningInspector] = []

    async def go(config: InspectorConfig) -> RunningInspector:
        running = await start_inspector(engine, config)
        started.append(running)
        return running

    yield go
    for running in started:
        await running.stop()


@dataclass
class Browser:
    """An HTTP client that keeps cookies like a browser (also for 127.0.0.1) and reads CSRF tokens."""

    http: aiohttp.ClientSession
    base: str

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.http.get(self.url(path), **kw) as resp:
            return resp.status, await resp.text()

    async def csrf(self, path: str = "/runs") -> str:
        status, text = await self.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        assert found, f"no CSRF token on {path} ({status})"
        return found.group(1)

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> tuple[int, str, str | None]:
        async with self.http.post(self.url(path), data=data, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location")

    async def sign_in_with_slack(self, emulator: SlackEmulator, user: str) -> None:
        """The whole OpenID Connect dance, as a browser does it: inspector -> Slack's consent page -> back."""
        async with self.http.get(self.url("/auth/slack?next=/runs"), allow_redirects=False) as resp:
            assert resp.status == 302
            authorize = resp.headers["Location"]
        assert authorize.startswith(emulator.url + "openid/connect/authorize?")
        async with self.http.get(authorize) as resp:
            page = await resp.text()
            assert resp.status == 200 and "Continue as" in page
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
        fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
        async with self.http.post(emulator.url + "openid/connect/authorize", data={**fields, "user": user},
                                  allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            callback = resp.headers["Location"]
        async with self.http.get(callback, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
            assert resp.headers["Location"] == "/runs"


@pytest.fixture
async def browser() -> AsyncIterator[Callable[[str], Browser]]:
    sessions: list[aiohttp.ClientSession] = []

    def make(base: str) -> Browser:
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(http)
        return Browser(http, base)

    yield make
    for http in sessions:
        await http.close()


async def slack_run(engine: Engine, workflow: str, data: Any, *, channel: str, user: str) -> str:
    """A run started in a Slack channel, as ``/flow run`` records it (the run plus its Slack mapping)."""
    handle = await engine.start(workflow, data, started_by=user)
    await SlackStore(engine.db).add_run(SlackRun(
        run_id=handle.run_id, team_id="T0TEAM", channel_id=channel, root_ts=None,
        thread_id=f"slack:T0TEAM:{channel}:{handle.run_id}", started_by=user, created_at=time.time(),
    ))
    await handle.result(timeout=10)
    return handle.run_id
