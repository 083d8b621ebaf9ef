"""Fixtures of the reliability suite: worker processes (``tests/reliability/worker.py``) a test can SIGKILL.

The Slack-facing tests import the bot fixtures from ``tests/bot/conftest.py`` in their own module, so the
bot's environment cleaning applies to them only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.helpers.processes import Spawn, Worker, spawner


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """``w = await spawn("start", url, str(workdir), "gated", env={...})``; leftovers are killed at the end."""
    async with spawner("tests.reliability.worker", tmp_path) as start:
        yield start


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


@pytest.fixture
def fault_dir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the steps of ``tests/reliability/faulty_flows.py`` log their executions (in this process)."""
    monkeypatch.setenv("THREADFLOW_TEST_FAULT_DIR", str(workdir))
    return workdir


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path, workdir: Path) -> AsyncIterator[StartWorker]:
    """``w = await start_worker(db_url, lease=2.0)``: a real ``threadflow worker`` process executing the workflows
    of ``tests/reliability/faulty_flows.py`` (steps log to ``workdir``); it has said it is ready when this returns."""
    async with spawner("bot.cli", tmp_path) as spawn_cli:

        async def start(db_url: str, *, lease: float = 2.0, env: dict[str, str] | None = None) -> Worker:
            worker = await spawn_cli("worker", "--concurrency", "50", env={
                "THREADFLOW_DATABASE_URL": db_url,
                "THREADFLOW_WORKFLOWS": "tests.reliability.faulty_flows",
                "THREADFLOW_LEASE_SECONDS": str(lease),
                "THREADFLOW_POLL_INTERVAL": "0.05",
                "THREADFLOW_TEST_FAULT_DIR": str(workdir),
                "THREADFLOW_WORKSPACE": str(tmp_path / "workspace"),
            } | (env or {}))
            assert "executing runs" in await worker.line(timeout=60), worker.errors()
            return worker

        yield start
