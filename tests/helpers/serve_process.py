"""``threadflow serve`` in a child process: killed, restarted, its output kept for the assertion messages."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from bot.emulator import SlackEmulator
from tests.bot.conftest import SIGNING_SECRET, TOKEN, free_port
from tests.helpers import eventually


class ServeProcess:
    """``threadflow serve`` in a child process, its output in files the test can read afterwards."""

    def __init__(self, emu: SlackEmulator, tmp_path: Path, **env: Any) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.database_url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
        self.env = {
            **os.environ,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": emu.api_url,
            "THREADFLOW_HOST": "127.0.0.1",
            "THREADFLOW_PORT": str(self.port),
            "THREADFLOW_DATABASE_URL": self.database_url,
            "THREADFLOW_PROGRESS_INTERVAL": "0.05",
            "THREADFLOW_MODEL": "offline",
            **{k: str(v) for k, v in env.items()},
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("serve-*.log")))

    def _new_log(self) -> BinaryIO:
        self.starts += 1
        return open(self.tmp_path / f"serve-{self.starts}.log", "wb")  # a local file: instant, fine to block

    async def start(self) -> None:
        with self._new_log() as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "threadflow"), "serve", env=self.env, cwd=self.tmp_path,
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                assert self.proc is not None and self.proc.returncode is None, self.output()
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(healthy, timeout=20, every=0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
