"""Chatting with agents in threads: a reply in a run's thread, or a mention anywhere, gets an answer there.

Each Slack thread is a memory thread, so the agent answering knows what the run's steps did. Slack
retries events (same ``event_id``) and sends a mention inside a thread as both ``app_mention`` and
``message``: a message is answered once, keyed by its channel and ``ts`` (insert-if-absent).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from workflows.errors import ThreadflowError

if TYPE_CHECKING:
    from .app import SlackBot

log = logging.getLogger("threadflow.bot.chat")

ASSISTANT_INSTRUCTIONS = (
    "You are threadflow's assistant in a Slack thread. The thread's history holds what the workflow run's "
    "steps and agents said and decided, and what people asked. Answer briefly and concretely, referring to "
    "that history when it is relevant. If you don't know, say so."
)

_MENTION = re.compile(r"<@[A-Z0-9]+>")


class ThreadChat:
    def __init__(self, bot: SlackBot) -> None:
        self.bot = bot
        self._assistant: Any = None

    async def close(self) -> None:
        if self._assistant is not None:
            close = getattr(self._assistant.model, "aclose", None)
            if close is not None:
                await close()

    def assistant(self) -> Any:
        if self._assistant is None:
            from workflows.agent import Agent
            from workflows.models import resolve_model

            model = resolve_model(self.bot.settings.model_name, self.bot.settings)
            self._assistant = Agent("assistant", ASSISTANT_INSTRUCTIONS, model=model, memory=self.bot.engine.memory)
        return self._assistant

    async def on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("bot_id"):
            return
        self.bot.spawn(self.answer(body.get("team_id", ""), event, event.get("thread_ts") or event["ts"]))

    async def on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("bot_id") or event.get("subtype") not in (None, "thread_broadcast"):
            return
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts"):
            return  # top-level chatter is not ours; mentions arrive as app_mention
        self.bot.spawn(self.answer(body.get("team_id", ""), event, thread_ts, require_known_thread=True))

    async def answer(self, team: str, event: dict[str, Any], thread_ts: str, *, require_known_thread: bool = False) -> None:
        from .app import resource_id_for, thread_id_for

        bot = self.bot
        channel, user, ts = event.get("channel", ""), event.get("user", ""), event.get("ts", "")
        thread_id = thread_id_for(team, channel, thread_ts)
        slack_run = await bot.store.run_for_thread(thread_id)
        if require_known_thread and slack_run is None and not await self._bot_knows_thread(thread_id):
            return
        if not await bot.store.first_time(f"message:{team}:{channel}:{ts}"):
            return  # a retry, or the other half of a mention in a thread
        text = _MENTION.sub("", event.get("text") or "").strip() or "Hello!"
        agent = self.agent_for(slack_run.run_id if slack_run else None)
        if agent is None:
            return
        try:
            wf_id = (await bot.engine.get_run(slack_run.run_id)).workflow_id if slack_run else None
            agent = self.agent_for_workflow(wf_id) if wf_id else agent
            # A thread bound to this bot's engine: shared agents stay free of any one database.
            thread = bot.engine.memory.thread(thread_id, resource_id_for(team, channel))
            result = await agent.generate(text, thread=thread, author=user)
            reply = result.text or "(no answer)"
        except ThreadflowError as exc:
            reply = f":warning: I could not answer: {exc}"
        except Exception as exc:
            log.exception("thread chat failed")
            reply = f":warning: I could not answer ({type(exc).__name__})."
        await bot.slack_call("chat_postMessage", channel=channel, thread_ts=thread_ts, text=reply)

    def agent_for(self, run_id: str | None) -> Any:
        if self.bot.engine.memory is None:
            return None
        return self.assistant()

    def agent_for_workflow(self, workflow_id: str) -> Any:
        """The workflow's designated chat agent, or the default assistant."""
        wf = self.bot.engine.workflows.get(workflow_id)
        chat_agent = wf.options.chat_agent if wf else None
        if chat_agent is not None:
            return chat_agent
        return self.assistant()

    async def _bot_knows_thread(self, thread_id: str) -> bool:
        """A thread the bot was mentioned in before is one it follows."""
        memory = self.bot.engine.memory
        if memory is None:
            return False
        return await memory.store.get_thread(thread_id) is not None
