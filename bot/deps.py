"""What the Slack listeners work with: plain dependencies, built once by :mod:`bot.app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from storage.slack_store import SlackStore
from workflows import Engine

from .delivery.live import Streams
from .delivery.service import DeliveryService
from .metrics import Metrics
from .run_access import RunAccess
from .settings import Settings
from .slack import SlackClient

log = logging.getLogger("threadflow.bot")


class BackgroundTasks:
    """Work a listener hands off after acking: referenced until done (bolt keeps no reference), failures
    logged; on shutdown given a moment to finish (:meth:`close`), then cancelled."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def close(self, grace: float) -> None:
        """Let the work in flight finish for up to ``grace`` seconds, then cancel what is left. Slack sends an acked
        request only once: cancelled at once, a click's decision or a run being started (its root message posted,
        the run not yet written) would be lost without a word. An agent still answering after that is cancelled."""
        if self.tasks and grace > 0:
            await asyncio.wait(list(self.tasks), timeout=grace)
        await self.cancel_all()

    async def cancel_all(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class BotDeps:
    settings: Settings
    engine: Engine
    store: SlackStore
    slack: SlackClient
    delivery: DeliveryService
    metrics: Metrics
    background: BackgroundTasks
    #: How answers are streamed into threads (None: THREADFLOW_SLACK_STREAMING is off; answers are posted whole).
    streams: Streams | None = None
    #: Who may see and act on which run (built from ``store`` and ``slack`` when not given).
    access: RunAccess | None = None

    def __post_init__(self) -> None:
        if self.access is None:
            slack = self.slack

            async def single_workspace(team_id: str, enterprise_id: str | None) -> SlackClient | None:
                return slack

            self.access = RunAccess(self.store, single_workspace)

    @property
    def runs(self) -> RunAccess:
        assert self.access is not None
        return self.access
