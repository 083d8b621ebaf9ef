"""Fixtures of the reliability suite: worker processes (``tests/reliability/worker.py``) a test can SIGKILL.

The Slack-facing tests import the bot fixtures from ``tests/bot/conftest.py`` in their own module, so the
bot's environment cleaning applies to them only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """``python -m tests.reliability.worker ...`` in a process of its own; stdout is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    async def line(self, timeout: float = 30) -> str:
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)  # type: ignore[union-attr]
        if not raw:
            await self.proc.wait()
            raise AssertionError(f"worker exited ({self.proc.returncode}) without output:\n{self.errors()}")
        return raw.decode().strip()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    async def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return await self.exit_code()

    async def exit_code(self, timeout: float = 30) -> int:
        # Waiting reaps the process: a zombie would still look alive to the engine's dead-owner check.
        return await asyncio.wait_for(self.proc.wait(), timeout)


Spawn = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """``w = await spawn("start", url, str(workdir), "gated", env={...})``; leftovers are killed at the end."""
    workers: list[Worker] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("THREADFLOW_")}
        stderr = tmp_path / f"worker-{len(workers)}.err"
        with stderr.open("wb") as err:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.reliability.worker", *args,
                cwd=ROOT, env=clean | {"PYTHONPATH": str(ROOT)} | (env or {}),
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        worker = Worker(proc, stderr)
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        if w.proc.returncode is None:
            w.proc.kill()
            await w.proc.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory
