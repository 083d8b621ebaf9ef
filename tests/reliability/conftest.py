"""Fixtures of the reliability suite: worker processes (``tests/reliability/worker.py``) a test can SIGKILL.

The Slack-facing tests import the bot fixtures from ``tests/bot/conftest.py`` in their own module, so the
bot's environment cleaning applies to them only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.processes import Spawn, spawner


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
