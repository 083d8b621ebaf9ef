"""The progress renderer: one per run shown in Slack, turning the run's events into Slack calls.

It watches the run's persisted events (so it works for runs executed by another process, and after a
restart) and keeps: the root message's checklist (``chat.update``, coalesced to one update per interval
and serialized per message), thread replies for readable agent outputs and the result, and one approval
message per open suspension. Side effects are done only for events past the saved offset, so a restarted
bot neither re-posts nor forgets. A failed Slack call is logged, never fails the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from storage.slack_store import SlackApproval, SlackRun
from workflows import WorkflowEvent

from . import blocks
from .blocks import Checklist

if TYPE_CHECKING:
    from .app import SlackBot

log = logging.getLogger("threadflow.bot.progress")


class MessageUpdater:
    """Coalesces updates to one Slack message: at most one ``chat.update`` per interval, never two at once."""

    def __init__(self, bot: SlackBot, channel: str, ts: str, interval: float) -> None:
        self.bot = bot
        self.channel = channel
        self.ts = ts
        self.interval = interval
        self._latest: tuple[str, list[dict[str, Any]]] | None = None
        self._sent: tuple[str, list[dict[str, Any]]] | None = None
        self._last_at = 0.0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    def set(self, text: str, blocks_: list[dict[str, Any]]) -> None:
        self._latest = (text, blocks_)
        if self._timer is None or self._timer.done():
            self._timer = self.bot.spawn(self._send_later())

    async def _send_later(self) -> None:
        wait = self._last_at + self.interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            latest = self._latest
            if latest is None or latest == self._sent:
                return
            self._last_at = time.monotonic()
            await self.bot.slack_call("chat_update", channel=self.channel, ts=self.ts, text=latest[0], blocks=latest[1])
            self._sent = latest


class ProgressRenderer:
    def __init__(self, bot: SlackBot, slack_run: SlackRun) -> None:
        self.bot = bot
        self.run = slack_run
        self.offset = slack_run.last_event_id
        self.checklist = Checklist(run_id=slack_run.run_id, workflow_id="", started_by=slack_run.started_by)
        self.updater = (
            MessageUpdater(bot, slack_run.channel_id, slack_run.root_ts, bot.settings.progress_interval)
            if slack_run.root_ts else None
        )
        self.payloads: dict[str, Any] = {}
        self.open_approvals: set[str] = set()  # paths shown with buttons and not decided yet
        # The first event past the saved offset may be half done: the previous process could have stopped
        # between posting a message and saving the offset. Side effects for it check Slack first.
        self.maybe_half_done = True

    async def render(self) -> None:
        engine = self.bot.engine
        run = await engine.get_run(self.run.run_id)
        self.checklist.workflow_id = run.workflow_id
        self.checklist.status = run.status if run.status != "pending" else "running"
        async for ev in engine.watch(self.run.run_id, after=0):
            self.apply(ev)
            if ev.id > self.offset:
                try:
                    await self.side_effects(ev)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("run %s: rendering event %s failed", self.run.run_id, ev.type)
                self.offset = ev.id
                self.maybe_half_done = False
                await self.bot.store.save_offset(self.run.run_id, ev.id)
            self.refresh()
        if self.updater is not None:
            await self.updater.flush()

    def apply(self, ev: WorkflowEvent) -> None:
        """Fold one event into the checklist (pure; replayed from offset 0 on every start)."""
        cl = self.checklist
        path = ev.path or ""
        if ev.type == "step.started":
            line = cl.step(path, ev.step_id)
            line.state, line.attempts, line.note = "running", int(ev.data.get("attempt", 1)), ""
        elif ev.type == "step.retrying":
            line = cl.step(path, ev.step_id)
            line.state, line.note = "retrying", clip_note(ev.data.get("error"))
        elif ev.type == "step.succeeded":
            cl.step(path, ev.step_id).state = "done"
            cl.step(path, ev.step_id).note = ""
        elif ev.type == "step.failed":
            line = cl.step(path, ev.step_id)
            line.state, line.note = "failed", clip_note(ev.data.get("error"))
        elif ev.type == "step.suspended":
            line = cl.step(path, ev.step_id)
            line.state = "waiting" if ev.data.get("event") else "suspended"
            line.note = f"waiting for event {ev.data['event']}" if ev.data.get("event") else "waiting for approval"
            self.payloads[path] = ev.data.get("payload")
            if not ev.data.get("event"):
                self.open_approvals.add(path)
        elif ev.type == "run.resumed":
            line = cl.step(path, ev.step_id)
            decision = ev.data.get("data") or {}
            line.state, line.note = "running", describe_decision(decision, ev.data)
            self.open_approvals.discard(path)
            cl.status = "running"
        elif ev.type == "event.received":
            cl.step(path, ev.step_id).state = "done"
        elif ev.type == "run.suspended":
            cl.status = "suspended"
        elif ev.type == "run.waiting":
            cl.status = "waiting"
        elif ev.type in ("run.started", "run.recovered", "run.released"):
            cl.status = "running"
        elif ev.type == "run.finished":
            cl.status = ev.data.get("status", "success")
            error = ev.data.get("error") or {}
            cl.error = error.get("message")
        elif ev.type == "run.canceled":
            cl.status = "canceled"
            cl.error = f"Canceled by {blocks.mention(ev.data.get('by'))}."

    def refresh(self) -> None:
        if self.updater is not None:
            self.updater.set(*blocks.root_message(self.checklist))

    async def side_effects(self, ev: WorkflowEvent) -> None:
        bot, run = self.bot, self.run
        if ev.type == "run.started" and not ev.data.get("rerun_of"):
            await bot.remember(run, f"Run {run.run_id} of workflow {ev.data.get('workflow_id')} was started by "
                                    f"{ev.data.get('started_by') or 'someone'} with input {summary(ev.data.get('input'))}.")
        elif ev.type == "step.succeeded":
            text = bot.readable_output(self.checklist.workflow_id, ev.step_id, ev.data.get("output"))
            if text:
                await bot.post_in_thread(run, text)
        elif ev.type == "step.suspended" and not ev.data.get("event"):
            await self.post_approval(ev)
        elif ev.type == "run.resumed":
            await self.show_decision(ev)
        elif ev.type == "run.finished":
            error = ev.data.get("error") or {}
            text, blocks_ = blocks.result_reply(ev.data.get("status", "success"), ev.data.get("output"),
                                                error.get("message"), error.get("path"))
            await bot.post_in_thread(run, text, blocks_)
            await bot.remember(run, f"The run finished with status {ev.data.get('status')}: {text}")
            await self.withdraw_approvals(f"the run {ev.data.get('status', 'finished')}.")
        elif ev.type == "run.canceled":
            by = blocks.mention(ev.data.get("by"))
            text, blocks_ = blocks.result_reply("canceled", None, f"Canceled by {by}.", None)
            await bot.post_in_thread(run, text, blocks_)
            await self.withdraw_approvals(f"the run was canceled by {by}.")

    async def post_approval(self, ev: WorkflowEvent) -> None:
        path = ev.path or ""
        if await self.bot.store.get_approval(self.run.run_id, path) is not None:
            return
        ts = await self.find_approval_message(path) if self.maybe_half_done else None
        if ts is None:
            text, blocks_ = blocks.approval_message(self.run.run_id, path, ev.data.get("payload"), ev.data.get("expires_at"))
            ts = await self.bot.post_in_thread(self.run, text, blocks_)
            # The thread's agents should know what the run waits for, even if Slack did not take the message.
            await self.bot.remember(self.run, f"Step {path} is waiting for approval: {summary(ev.data.get('payload'))}.")
        if ts:
            await self.bot.store.add_approval(SlackApproval(
                run_id=self.run.run_id, path=path, channel_id=self.run.channel_id, message_ts=ts, created_at=time.time(),
            ))

    async def withdraw_approvals(self, why: str) -> None:
        """Take the buttons off approvals the ended run no longer waits for, so nobody clicks in vain."""
        for path in sorted(self.open_approvals):
            approval = await self.bot.store.get_approval(self.run.run_id, path)
            if approval is not None:
                text, blocks_ = blocks.withdrawn_message(self.run.run_id, path, self.payloads.get(path), why)
                await self.bot.slack_call("chat_update", channel=approval.channel_id, ts=approval.message_ts,
                                          text=text, blocks=blocks_)

    async def find_approval_message(self, path: str) -> str | None:
        """The ts of this step's approval message if a previous process posted it without recording it."""
        if not self.run.root_ts:
            return None
        cursor = None
        for _ in range(20):  # 20 pages of 200: far more than any thread we would post approvals in
            data = await self.bot.slack_call("conversations_replies", channel=self.run.channel_id, ts=self.run.root_ts,
                                             limit=200, cursor=cursor)
            if data is None:
                return None
            for message in data.get("messages") or []:
                if message.get("bot_id") and blocks.shows_step(message, self.run.run_id, path):
                    return str(message["ts"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def show_decision(self, ev: WorkflowEvent) -> None:
        path = ev.path or ""
        approval = await self.bot.store.get_approval(self.run.run_id, path)
        if approval is None:
            return
        decision = ev.data.get("data") or {}
        approved = bool(decision.get("approved", True)) if isinstance(decision, dict) else True
        text, blocks_ = blocks.decided_message(
            self.run.run_id, path, self.payloads.get(path), approved, ev.data.get("by"),
            decision.get("reason") if isinstance(decision, dict) else None, expired=bool(ev.data.get("expired")),
        )
        await self.bot.slack_call("chat_update", channel=approval.channel_id, ts=approval.message_ts, text=text, blocks=blocks_)
        verdict = "approved" if approved else "rejected"
        await self.bot.remember(self.run, f"Step {path} was {verdict} by {ev.data.get('by') or 'someone'}.")


def summary(value: Any) -> str:
    """A one-line plain-text rendering of an input or payload, for the thread's memory."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in value.items() if v not in (None, "")) or "(none)"
    return clip_note(value if value is not None else "(none)")


def clip_note(value: Any) -> str:
    text = str(value or "")
    return text if len(text) <= 120 else text[:119] + "…"


def describe_decision(decision: Any, data: dict[str, Any]) -> str:
    if data.get("expired"):
        return "approval expired"
    if isinstance(decision, dict) and "approved" in decision:
        verdict = "approved" if decision["approved"] else "rejected"
        return f"{verdict} by {data.get('by') or 'someone'}"
    return f"resumed by {data.get('by') or 'someone'}"
