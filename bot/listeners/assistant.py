"""Slack's assistant container, served through bolt's ``AsyncAssistant``.

When a person opens the app's assistant view, Slack starts a thread in their DM with the app
(``assistant_thread_started``): the bot offers the registered workflows as suggested prompts ("Deploy an
app", "Ask for approval": each sends ``run WORKFLOW``). What the person then writes in the thread is either

- ``run WORKFLOW [input]`` (a prompt, or typed; ``/flow run ...`` works too): the run starts *in that thread*:
  its checklist, its agents' answers and its approval cards are replies there, and the thread is the run's
  memory thread. Only a registered workflow's id after ``run`` makes it a command ("Run me through ..." is a
  question), but for ``/flow run ...`` and a bare ``run WORD``, which are commands whatever the word: an unknown
  id there is answered with the known ones;
- anything else: an agent answers, streamed, with "is thinking..." under the thread while it works (the run's
  chat agent when the thread has a run, else the default assistant).

The first message names the thread (``assistant.threads.setTitle``). An assistant thread is a memory thread
like any channel thread (``slack:TEAM:CHANNEL:THREAD_TS``); the channel the person was looking at (Slack's
"thread context") is kept in that memory thread's metadata, not fetched back from Slack.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.assistant.thread_context import AssistantThreadContext
from slack_bolt.context.assistant.thread_context_store.async_store import AsyncAssistantThreadContextStore
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant

from storage.errors import DatabaseUnavailable
from workflows.errors import ThreadflowError, UsageError

from .. import blocks
from ..answers import answer_with_agent, show_thinking
from ..commands import parse_run_input, split_run_args
from ..delivery.service import resource_id_for, thread_id_for
from ..deps import BotDeps
from ..run_start import StartRequest, start_run_in_channel
from ..slack import SlackCallError, with_retries
from ..slack.text import from_slack
from ..slack.workspace import current_workspace
from .chat import ThreadChat

log = logging.getLogger("threadflow.bot.assistant")

#: Slack shows a handful of suggested prompts; more would not fit the container.
MAX_PROMPTS = 4
PROMPTS_TITLE = "Start a workflow, or ask me anything"
TITLE_LIMIT = 80
_RUN = re.compile(r"^\s*(/\S+\s+)?run\s+(\S.*)$", re.IGNORECASE | re.DOTALL)


def suggested_prompts(deps: BotDeps) -> list[dict[str, str]]:
    """One prompt per registered workflow (its title, else its id), each sending ``run WORKFLOW``."""
    found = sorted(deps.engine.workflows.values(), key=lambda wf: (wf.options.title is None, wf.id))
    return [{"title": wf.options.title or f"Run {wf.id}", "message": f"run {wf.id}"} for wf in found[:MAX_PROMPTS]]


def run_command(text: str, workflows: Container[str]) -> str | None:
    """The arguments of ``run WORKFLOW [input]`` when ``text`` is that command, else None (a question for the agent).

    Plain words starting with "run" are a command only when the next one is a registered workflow's id: "Run me
    through what deploy-app does" is a question. ``/flow run ...`` and a bare ``run WORD`` are commands whatever
    the word, so a mistyped id is answered with the known ones rather than by an agent guessing."""
    found = _RUN.match(text)
    if found is None:
        return None
    slash, args = found.group(1), found.group(2)
    words = args.split(maxsplit=1)
    return args if slash or len(words) == 1 or words[0] in workflows else None


class MemoryThreadContextStore(AsyncAssistantThreadContextStore):
    """Slack's thread context kept in the memory thread's metadata (bolt's default store reads it back
    from Slack with ``conversations.replies``, rate-limited to a call a minute for most apps)."""

    def __init__(self, deps: BotDeps, team_id: str = "") -> None:
        self.deps = deps
        self.team_id = team_id

    def _team(self) -> str:
        """The workspace of the request at hand (bolt does not pass it to the store), else the fixed one."""
        workspace = current_workspace()
        return self.team_id or (workspace.team_id if workspace is not None else "")

    async def save(self, *, channel_id: str, thread_ts: str, context: dict[str, str]) -> None:
        memory = self.deps.engine.memory
        if memory is None:
            return
        team = self._team()
        thread_id = thread_id_for(team, channel_id, thread_ts)
        await memory.store.ensure_thread(thread_id, resource_id_for(team, channel_id))
        await memory.store.update_thread(thread_id, metadata={"slack_context": dict(context)})

    async def find(self, *, channel_id: str, thread_ts: str) -> AssistantThreadContext | None:
        memory = self.deps.engine.memory
        if memory is None:
            return None
        row = await memory.store.get_thread(thread_id_for(self._team(), channel_id, thread_ts))
        context = (row.metadata or {}).get("slack_context") if row is not None else None
        return AssistantThreadContext(context) if context else None


class AssistantThreads:
    """The listeners of the assistant container; :meth:`register` adds them to the app."""

    def __init__(self, deps: BotDeps, chat: ThreadChat) -> None:
        self.deps = deps
        self.chat = chat

    def register(self, app: AsyncApp) -> AsyncAssistant:
        assistant = AsyncAssistant(thread_context_store=MemoryThreadContextStore(self.deps))
        assistant.thread_started(self.on_thread_started)
        assistant.thread_context_changed(self.on_context_changed)
        assistant.user_message(self.on_user_message)
        app.assistant(assistant)
        return assistant

    # -- listeners (ack at once; the work runs in the background) -----------------------------------------

    async def on_thread_started(self, body: dict[str, Any], payload: dict[str, Any]) -> None:
        self.deps.background.spawn(self.thread_started(str(body.get("team_id") or ""), payload))

    async def on_context_changed(self, body: dict[str, Any], payload: dict[str, Any]) -> None:
        thread = payload.get("assistant_thread") or {}
        self.deps.background.spawn(self.remember_context(str(body.get("team_id") or ""), thread))

    async def on_user_message(self, body: dict[str, Any], payload: dict[str, Any], context: AsyncBoltContext) -> None:
        if payload.get("subtype") not in (None, "file_share"):
            return
        self.deps.background.spawn(self.user_message(str(body.get("team_id") or ""), payload,
                                                     bot_user=context.bot_user_id))

    # -- the work -----------------------------------------------------------------------------------------

    async def thread_started(self, team: str, event: dict[str, Any]) -> None:
        thread = event.get("assistant_thread") or {}
        channel, thread_ts = str(thread.get("channel_id") or ""), str(thread.get("thread_ts") or "")
        if not channel or not thread_ts:
            return
        await self.remember_context(team, thread)
        try:
            await self.deps.store.set_feature(team, "assistant", "seen")
            await with_retries(lambda: self.deps.slack.set_suggested_prompts(
                channel, thread_ts, suggested_prompts(self.deps), title=PROMPTS_TITLE))
        except SlackCallError as exc:
            log.warning("could not offer the workflows in assistant thread %s: %s", thread_ts, exc)

    async def remember_context(self, team: str, thread: dict[str, Any]) -> None:
        channel, thread_ts = str(thread.get("channel_id") or ""), str(thread.get("thread_ts") or "")
        context = thread.get("context")
        if channel and thread_ts and isinstance(context, dict):
            await MemoryThreadContextStore(self.deps, team).save(channel_id=channel, thread_ts=thread_ts,
                                                                 context=context)

    async def user_message(self, team: str, event: dict[str, Any], *, bot_user: str | None = None) -> None:
        """What the person typed in the thread (as typed: Slack's escaping undone, see ``from_slack``)."""
        deps = self.deps
        channel, user = str(event.get("channel") or ""), str(event.get("user") or "")
        ts, thread_ts = str(event.get("ts") or ""), str(event.get("thread_ts") or "")
        if not await deps.store.mark_seen(f"message:{team}:{channel}:{ts}"):
            return  # Slack retried the event
        memory = deps.engine.memory
        if memory is None:
            return
        text = from_slack(event.get("text") or "", bot_user=bot_user)
        thread_id = thread_id_for(team, channel, thread_ts)
        row = await memory.store.ensure_thread(thread_id, resource_id_for(team, channel))
        if not row.title and text:
            await self.name_thread(thread_id, channel, thread_ts, text)
        args = run_command(text, self.deps.engine.workflows)
        if args is not None:
            await self.start_workflow(team, channel, user, thread_ts, args)
            return
        await show_thinking(deps, channel, thread_ts)
        slack_run = await deps.store.run_for_thread(thread_id)
        workflow_id = None
        if slack_run is not None:
            try:
                workflow_id = (await deps.engine.get_run(slack_run.run_id)).workflow_id
            except ThreadflowError:
                slack_run = None
        thread = memory.thread(thread_id, resource_id_for(team, channel),
                               run_id=slack_run.run_id if slack_run else None)
        await answer_with_agent(deps, self.chat.agent_for_workflow(workflow_id), text or "Hello!", thread=thread,
                                author=user, team=team, channel=channel, thread_ts=thread_ts)

    async def name_thread(self, thread_id: str, channel: str, thread_ts: str, text: str) -> None:
        title = " ".join(text.split())
        title = title if len(title) <= TITLE_LIMIT else title[: TITLE_LIMIT - 1] + "…"
        await self.deps.engine.memory.store.update_thread(thread_id, title=title)
        try:
            await self.deps.slack.set_assistant_title(channel, thread_ts, title)
        except SlackCallError as exc:
            log.info("could not title assistant thread %s: %s", thread_ts, exc)

    async def start_workflow(self, team: str, channel: str, user: str, thread_ts: str, args: str) -> None:
        deps = self.deps
        try:
            workflow_id, raw = split_run_args(args)
            wf = deps.engine.get_workflow(workflow_id)
            workspace = current_workspace()
            request = StartRequest(team_id=team, channel_id=channel, user_id=user, workflow_id=wf.id,
                                   data=parse_run_input(wf, raw), thread_ts=thread_ts,
                                   enterprise_id=workspace.enterprise_id if workspace is not None else None)
        except UsageError as exc:
            await self.reply(channel, thread_ts, f":warning: {blocks.escape(str(exc))}")
            return
        try:
            outcome = await start_run_in_channel(deps, request)
        except DatabaseUnavailable:
            return  # the run's root message, in this thread, says it was not started (logged there too)
        if outcome.problem is not None:
            await self.reply(channel, thread_ts, f":warning: {blocks.escape(outcome.problem)}")

    async def reply(self, channel: str, thread_ts: str, text: str) -> None:
        try:
            await with_retries(lambda: self.deps.slack.post_message(channel, text, thread_ts=thread_ts))
        except SlackCallError as exc:
            log.error("could not reply in assistant thread %s: %s", thread_ts, exc)


__all__ = ["AssistantThreads", "MemoryThreadContextStore", "suggested_prompts"]
