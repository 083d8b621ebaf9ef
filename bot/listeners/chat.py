"""Chatting with agents: a reply in a run's thread, a mention anywhere, or a direct message gets an answer.

Each Slack thread is a memory thread, so the agent answering knows what the run's steps did; a direct
message conversation is one memory thread of its own. Answers stream into the thread as they are written
(:mod:`bot.answers`), with feedback buttons under them. Slack retries events (same ``event_id``) and sends a
mention inside a thread as both ``app_mention`` and ``message``: a message is answered once, keyed by its
channel and ``ts`` (insert-if-absent). Replies that carry files (``file_share``) are answered like any other
(by their text); the bot never downloads the files.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext

from workflows.errors import ThreadflowError

from ..answers import answer_with_agent
from ..delivery.service import resource_id_for, thread_id_for
from ..deps import BotDeps
from ..slack.text import from_slack

log = logging.getLogger("threadflow.bot.chat")

ASSISTANT_INSTRUCTIONS = (
    "You are threadflow's assistant in a Slack thread. The thread's history holds what the workflow run's "
    "steps and agents said and decided, and what people asked. Answer briefly and concretely, referring to "
    "that history when it is relevant. If you don't know, say so."
)

#: Message subtypes that are a person saying something (the rest are joins, edits, deletions, ...).
SPOKEN_SUBTYPES = (None, "thread_broadcast", "file_share")


class ThreadChat:
    def __init__(self, deps: BotDeps) -> None:
        self.deps = deps
        self._assistant: Any = None

    async def close(self) -> None:
        if self._assistant is not None:
            close = getattr(self._assistant.model, "aclose", None)
            if close is not None:
                await close()

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)

    def default_agent(self) -> Any:
        if self._assistant is None:
            from workflows.agent import Agent
            from workflows.models import resolve_model

            settings = self.deps.settings
            model = resolve_model(settings.model_name, settings)
            self._assistant = Agent("assistant", ASSISTANT_INSTRUCTIONS, model=model, memory=self.deps.engine.memory)
        return self._assistant

    def agent_for_workflow(self, workflow_id: str | None) -> Any:
        """The workflow's designated chat agent, or the default assistant."""
        wf = self.deps.engine.workflows.get(workflow_id) if workflow_id else None
        chat_agent = wf.options.chat_agent if wf else None
        return chat_agent if chat_agent is not None else self.default_agent()

    # -- listeners ---------------------------------------------------------------------------------------

    async def on_mention(self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("bot_id"):
            return
        thread_ts = event.get("thread_ts") or event["ts"]
        self.deps.background.spawn(self.answer(body.get("team_id", ""), event, thread_ts,
                                               bot_user=context.bot_user_id))

    async def on_message(self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext) -> None:
        team = body.get("team_id", "")
        subtype = event.get("subtype")
        if subtype == "message_deleted":
            self.deps.background.spawn(self.on_deleted(event, team))
            return
        if event.get("bot_id") or subtype not in SPOKEN_SUBTYPES:
            return
        thread_ts = event.get("thread_ts")
        if event.get("channel_type") == "im":
            self.deps.background.spawn(self.answer(team, event, thread_ts, direct=True, bot_user=context.bot_user_id))
            return
        if not thread_ts or thread_ts == event.get("ts"):
            return  # top-level chatter in a channel is not ours; mentions arrive as app_mention
        self.deps.background.spawn(self.answer(team, event, thread_ts, require_known_thread=True,
                                               bot_user=context.bot_user_id))

    async def on_deleted(self, event: dict[str, Any], team: str = "") -> None:
        """Someone deleted a message the bot shows: an approval card that still matters is posted again."""
        row = await self.deps.store.message_at(event.get("channel", ""), str(event.get("deleted_ts") or ""))
        if row is None or row.kind != "approval" or row.run_id is None or (team and row.team_id != team):
            return
        log.warning("approval card %s was deleted in Slack; it will be posted again", row.key)
        await self.deps.store.forget_ts(row.key)
        slack_run = await self.deps.store.get_run(row.run_id)
        if slack_run is not None:
            self.deps.delivery.nudge(row.run_id)
            await self.deps.delivery.ensure_rendering(slack_run)

    # -- answering ---------------------------------------------------------------------------------------

    async def answer(self, team: str, event: dict[str, Any], thread_ts: str | None, *,
                     require_known_thread: bool = False, direct: bool = False, bot_user: str | None = None) -> None:
        """Answer a person's message; ``bot_user`` is the bot's user id (its mention is not part of the question)."""
        deps = self.deps
        channel, user, ts = event.get("channel", ""), event.get("user", ""), event.get("ts", "")
        thread_id = thread_id_for(team, channel, thread_ts or ("dm" if direct else ts))
        slack_run = await deps.store.run_for_thread(thread_id)
        if require_known_thread and slack_run is None and not await self._bot_knows_thread(thread_id):
            return
        if not await deps.store.mark_seen(f"message:{team}:{channel}:{ts}"):
            return  # a retry, or the other half of a mention in a thread
        if deps.engine.memory is None:
            return
        text = from_slack(event.get("text") or "", bot_user=bot_user) or "Hello!"
        reply_in = thread_ts if thread_ts or not direct else None
        try:
            workflow_id = (await deps.engine.get_run(slack_run.run_id)).workflow_id if slack_run else None
        except ThreadflowError as exc:
            log.warning("thread chat: the run of %s is gone (%s); answering without it", thread_id, exc)
            slack_run, workflow_id = None, None
        agent = self.agent_for_workflow(workflow_id)
        # In a run's thread the answer is about the run: its agent call is recorded with the run (so
        # ``threadflow show RUN --context`` lists it, with the feedback people give it).
        thread = deps.engine.memory.thread(thread_id, resource_id_for(team, channel),
                                           run_id=slack_run.run_id if slack_run else None)
        await answer_with_agent(deps, agent, text, thread=thread, author=user, team=team, channel=channel,
                                thread_ts=reply_in)

    async def _bot_knows_thread(self, thread_id: str) -> bool:
        """A thread the bot was mentioned in before is one it follows."""
        memory = self.deps.engine.memory
        if memory is None:
            return False
        return await memory.store.get_thread(thread_id) is not None
