"""Fixtures for the operations tests: a controllable clock, the Slack emulator and a real bot on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import SlackBot
from bot.emulator import SlackEmulator
from bot.runtime import build_engine
from bot.server import start_server
from bot.settings import Settings
from tests.bot.conftest import SIGNING_SECRET, TOKEN, make_settings
from workflows import Engine

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "C0GENERAL"
ALICE, BOB = "U0ALICE", "U0BOB"
_ENV_PREFIXES = ("SLACK_", "THREADFLOW_", "OPENAI_")


class FakeClock:
    """``clock()`` returns ``now``; tests move time with ``advance`` or by setting ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come only from the test (no stray SLACK_*/THREADFLOW_*/OPENAI_* variable)."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and not name.startswith("THREADFLOW_TEST_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=TOKEN) as emulator:
        yield emulator


@dataclass
class RunningBot:
    emu: SlackEmulator
    settings: Settings
    engine: Engine
    bot: SlackBot
    runner: web.AppRunner
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartBot = Callable[..., Awaitable[RunningBot]]


@pytest.fixture
async def start_bot(emu: SlackEmulator, tmp_path: Path) -> AsyncIterator[StartBot]:
    """``bot = await start_bot(THREADFLOW_APPROVERS=...)``: the real server on this test's SQLite file."""
    started: list[RunningBot] = []

    async def start(**overrides: Any) -> RunningBot:
        settings = make_settings(emu, tmp_path / "threadflow.db", **overrides)
        engine = build_engine(settings, poll_interval=0.05, lease_seconds=2.0)
        runner, bot, port = await start_server(settings, engine, host="127.0.0.1", port=0)
        running = RunningBot(emu, settings, engine, bot, runner, port)
        started.append(running)
        emu.bot_url = f"{running.base_url}/slack/events"
        return running

    yield start
    for running in reversed(started):
        await running.runner.cleanup()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.update({
        "THREADFLOW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "THREADFLOW_WORKSPACE": str(tmp_path / "workspace"),
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli("schedule", "list", expect=0, THREADFLOW_X="y")``: ``threadflow`` as a subprocess in tmp_path."""

    def run(*args: str, expect: int | None = 0, **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, env=cli_env(tmp_path, **env),
                              capture_output=True, text=True, timeout=60)
        if expect is not None:
            assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    return run
