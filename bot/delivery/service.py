"""The delivery side of the bot: which runs this process renders, and the sweeper that keeps it so.

Rendering is leased per run in the database. :meth:`DeliveryService.ensure_rendering` claims a run's lease
and starts its :class:`~bot.delivery.renderer.RunRenderer`; the sweeper renews the leases of live renderers,
starts renderers for runs that need one and have none (after a restart, when another replica died, when a
long Slack outage left messages undelivered), and puts approval cards that Slack refused back in the queue
while their run still waits, so a suspended run always ends up with its card. At start, the leases held by
processes on this host that no longer exist (this bot before a crash) are handed back: their runs are rendered
from the first sweep, not once the leases run out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from storage.slack_store import SlackRun, SlackStore
from workflows import Engine, describe_version
from workflows.errors import RunNotFound
from workflows.owners import dead_here
from workflows.tracing import log_context

from .. import blocks
from ..slack import SlackClient
from ..slack.workspace import in_workspace
from .live import Streams
from .planner import StepPresentation
from .renderer import RunRenderer
from .sender import Sender

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("threadflow.bot.delivery")

#: Seconds before an approval card Slack refused for good is tried again while its run still waits.
REFUSED_CARD_RETRY = 300.0


def resource_id_for(team: str, channel: str) -> str:
    return f"slack:{team}:{channel}"


def thread_id_for(team: str, channel: str, ts: str) -> str:
    return f"slack:{team}:{channel}:{ts}"


class DeliveryService:
    def __init__(self, engine: Engine, store: SlackStore, client: SlackClient, *, interval: float,
                 lease: float, metrics: Metrics | None = None, streams: Streams | None = None) -> None:
        self.engine = engine
        self.store = store
        #: How agent steps are streamed into their run's thread (None: their outputs are only posted).
        self.streams = streams
        self.sender = Sender(store, client, interval=interval, metrics=metrics)
        #: How long this process may render a run before another one takes over (renewed while it renders).
        self.lease = lease
        self.renderers: dict[str, RunRenderer] = {}
        self.render_tasks: dict[str, asyncio.Task[None]] = {}
        self._claiming: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        #: Seconds before an approval card Slack refused for good is tried again while its run still waits.
        self.refused_card_retry = REFUSED_CARD_RETRY

    async def start(self) -> None:
        await self.release_dead_renderers()
        await self.sweep()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="threadflow-render-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        tasks = list(self.render_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run_id in list(self.render_tasks):
            await self.store.release_render(run_id, self.engine.owner)
        self.render_tasks.clear()

    async def release_dead_renderers(self) -> None:
        """Hand back the render leases of processes on this host that died (a restart after a crash): their runs are
        rendered from the first sweep, not once the leases run out. A holder on another host may be alive: its
        leases run out as usual."""
        gone = await self.store.release_renders_of(lambda owner: owner != self.engine.owner and dead_here(owner))
        for owner, count in gone.items():
            log.info("handed back the render leases of %d run(s) from dead process %s", count, owner)

    async def ensure_rendering(self, slack_run: SlackRun) -> None:
        """Render this run here, unless this or another live process already does."""
        run_id = slack_run.run_id
        current = self.render_tasks.get(run_id)
        if (current is not None and not current.done()) or run_id in self._claiming:
            return
        # Marked before the claim's await: the sweeper and the command that started the run may both get
        # here at once, and the lease (held by this same process) would let both render, posting twice.
        self._claiming.add(run_id)
        try:
            if not await self.store.claim_render(run_id, self.engine.owner, self.lease):
                return
            renderer = RunRenderer(self.engine, self.store, self.sender, slack_run, self.describe, self.remember,
                                   streams=self.streams, follow_move=self.follow_move)
            self.renderers[run_id] = renderer
            task = asyncio.get_running_loop().create_task(self._render(renderer), name=f"threadflow-render-{run_id}")
            self.render_tasks[run_id] = task
        finally:
            self._claiming.discard(run_id)

    def nudge(self, run_id: str) -> None:
        renderer = self.renderers.get(run_id)
        if renderer is not None:
            renderer.nudge()

    async def _render(self, renderer: RunRenderer) -> None:
        run = renderer.run
        try:
            with log_context(run_id=run.run_id, slack_thread=run.thread_id), in_workspace(run.team_id, run.enterprise_id):
                await renderer.render()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rendering run %s failed; the sweeper will start it again", run.run_id)
        finally:
            self.render_tasks.pop(run.run_id, None)
            self.renderers.pop(run.run_id, None)
            await asyncio.shield(self.store.release_render(run.run_id, self.engine.owner))

    async def sweep(self) -> None:
        live = [run_id for run_id, task in self.render_tasks.items() if not task.done()]
        await self.store.renew_renders(self.engine.owner, live, self.lease)
        if await self.store.retry_refused_cards(self.refused_card_retry):
            for run_id in live:  # a live renderer sleeps until its run changes: it must look at its outbox now
                self.nudge(run_id)
        for slack_run in await self.store.runs_needing_render():
            if slack_run.run_id not in live:
                await self.ensure_rendering(slack_run)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("render sweep failed; retrying")

    # -- what the renderers need from the engine ---------------------------------------------------------

    def describe(self, workflow_id: str, step_id: str, path: str = "", *,
                 fingerprint: str | None = None) -> StepPresentation | None:
        """How to show a step of a run on the version ``fingerprint`` (the run's own: a newer version registered
        beside it may have renamed the step, or changed whether its approval takes a reason); the newest version
        of ``workflow_id`` when the run's version is not registered here (or the run predates versions)."""
        registry = self.engine.registry
        wf = (registry.by_fingerprint(fingerprint) if fingerprint else None) or registry.get(workflow_id)
        step = (wf.find_step_at(path) if path else None) or wf.find_step(step_id) if wf else None
        if step is None:
            return None
        resume = step.resume
        return StepPresentation(post_output=bool(step.metadata.get("post_output")),
                                name=str(step.metadata.get("agent") or step.id),
                                accepts_reason=resume is not None and "reason" in resume.model_fields,
                                streams_text=step.metadata.get("answer", "text") == "text",
                                tools=tuple(str(t) for t in step.metadata.get("tools") or ()))

    async def follow_move(self, run: SlackRun, moved_to: str) -> str | None:
        """``run`` was moved onto the current version (``threadflow rerun`` of a stranded run): show the run it goes
        on as in the same thread, where the people waiting for it are; its root message and cards are posted there.
        Returns the new run's version as people read it (None: the new run is not in this database)."""
        try:
            new = await self.engine.get_run(moved_to)
        except RunNotFound:
            log.warning("run %s was moved to run %s, which is not in the database", run.run_id, moved_to)
            return None
        shown = await self.store.get_run(moved_to)
        if shown is None:
            starter = new.started_by if new.started_by and blocks.is_user_id(new.started_by) else run.started_by
            shown = SlackRun(run_id=moved_to, team_id=run.team_id, channel_id=run.channel_id, root_ts=None,
                             thread_id=run.thread_id, started_by=starter, created_at=time.time(),
                             thread_ts=run.reply_ts, enterprise_id=run.enterprise_id)
            await self.store.add_run(shown)
        await self.ensure_rendering(shown)
        return describe_version(new.workflow_version, new.workflow_fingerprint)

    async def remember(self, run: SlackRun, text: str) -> None:
        """Note what happened in the thread's memory, so the agents answering there know it."""
        await append_to_thread_memory(self.engine, run, text)


async def append_to_thread_memory(engine: Engine, run: SlackRun, text: str) -> None:
    memory: Any = engine.memory
    if memory is None:
        return
    try:
        thread = memory.thread(run.thread_id, resource_id_for(run.team_id, run.channel_id), run_id=run.run_id)
        await thread.add("assistant", text, author="threadflow")
    except Exception:
        log.exception("could not write to memory thread %s", run.thread_id)
