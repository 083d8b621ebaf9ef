"""Slack's assistant container (an app's "assistant view"): threads in a side panel, opened by a person.

Opening the container starts a thread in the person's direct messages with the app: Slack posts the thread's
root there and sends the app ``assistant_thread_started`` (with the channel the person was looking at as the
thread's context). The app answers with ``assistant.threads.setSuggestedPrompts`` (buttons that send a
prepared message), ``assistant.threads.setStatus`` ("is thinking...", gone when the app replies or after two
minutes) and ``assistant.threads.setTitle``. What the person types there arrives as an ordinary ``message``
in the DM thread (``channel_type: im``).

Checked as Slack documents: ``channel_not_found`` / ``invalid_thread_ts`` for an unknown thread; at most ten
``loading_messages``; every prompt has a ``title`` and a ``message``; an app without the assistant view
(:meth:`AssistantView.disable`) gets ``not_agent_app`` from the methods that need it, and people cannot open
its container at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .delivery import BotDelivery, DeliveryResult
from .state import Json, Message, WorkspaceState
from .web_api import ApiError, Handler

#: Seconds an unanswered "is thinking..." status stays up.
STATUS_TIMEOUT = 120.0
MAX_LOADING_MESSAGES = 10


@dataclass
class AssistantThread:
    channel: str
    thread_ts: str
    user: str
    context: Json
    title: str | None = None
    status: str = ""
    status_at: float = 0.0
    loading_messages: list[str] = field(default_factory=list)
    prompts: list[Json] = field(default_factory=list)
    prompts_title: str | None = None

    def to_json(self, now: float, last_bot_reply: float) -> Json:
        shown = bool(self.status) and now - self.status_at < STATUS_TIMEOUT and last_bot_reply < self.status_at
        return {"channel": self.channel, "thread_ts": self.thread_ts, "user": self.user, "context": self.context,
                "title": self.title, "status": self.status if shown else "", "status_at": self.status_at,
                "loading_messages": self.loading_messages,
                "prompts": self.prompts, "prompts_title": self.prompts_title}


class AssistantView:
    """The assistant threads of one workspace; :meth:`install` adds the methods to the Web API's table."""

    def __init__(self, state: WorkspaceState, delivery: BotDelivery) -> None:
        self.state = state
        self.delivery = delivery
        self.enabled = True
        self.threads: dict[tuple[str, str], AssistantThread] = {}

    def install(self, methods: dict[str, Handler]) -> None:
        """Add these methods to the Web API's table (they answer errors by raising its ``ApiError``)."""
        methods["assistant.threads.setStatus"] = self.set_status
        methods["assistant.threads.setSuggestedPrompts"] = self.set_suggested_prompts
        methods["assistant.threads.setTitle"] = self.set_title

    def disable(self) -> None:
        """The app's assistant view is off (Agents & AI Apps not enabled in its settings)."""
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    # -- a person ----------------------------------------------------------------------------------

    async def open_thread(self, user: str, *, context_channel: str | None = None,
                          **opts: Any) -> tuple[AssistantThread, DeliveryResult | None]:
        """``user`` opens the app's container (from ``context_channel``): a new thread, announced to the app."""
        if not self.enabled:
            raise LookupError("the app has no assistant view (enable it first)")
        if user not in self.state.users:
            raise LookupError(f"no user {user}")
        channel = self.state.im_channel(user)
        root = self.state.add_message(channel.id, text="New assistant thread", user=user)
        context: Json = {"team_id": self.state.team_id, "enterprise_id": None}
        if context_channel:
            context["channel_id"] = context_channel
        thread = self.threads[(channel.id, root.ts)] = AssistantThread(channel.id, root.ts, user, context)
        self._changed(thread)
        if not self.delivery.bot_url and self.delivery.socket is None:
            return thread, None
        event = {"type": "assistant_thread_started", "event_ts": self.state.next_ts(),
                 "assistant_thread": {"user_id": user, "context": context, "channel_id": channel.id,
                                      "thread_ts": root.ts}}
        result = await self.delivery.send_event(self.delivery.event_envelope(event), **opts)
        return thread, result

    def thread(self, channel: str, thread_ts: str) -> AssistantThread | None:
        return self.threads.get((channel, thread_ts))

    def threads_of(self, user: str) -> list[AssistantThread]:
        return [t for t in self.threads.values() if t.user == user]

    def snapshot(self) -> list[Json]:
        now = self.state.clock()
        return [t.to_json(now, self._last_bot_reply(t)) for t in self.threads.values()]

    # -- methods -----------------------------------------------------------------------------------

    def set_status(self, params: Json, caller: str) -> Json:
        thread = self._thread(params)
        loading = params.get("loading_messages") or []
        if not isinstance(loading, list) or len(loading) > MAX_LOADING_MESSAGES:
            raise ApiError("invalid_arguments")
        if not isinstance(params.get("status"), str):
            raise ApiError("invalid_arguments")
        thread.status, thread.status_at = params["status"], self.state.clock()
        thread.loading_messages = [str(m) for m in loading]
        self._changed(thread)
        return {}

    def set_suggested_prompts(self, params: Json, caller: str) -> Json:
        if not self.enabled:
            raise ApiError("not_agent_app")
        thread = self._thread(params)
        prompts = params.get("prompts")
        if not isinstance(prompts, list) or not all(
                isinstance(p, dict) and isinstance(p.get("title"), str) and p["title"]
                and isinstance(p.get("message"), str) and p["message"] for p in prompts):
            raise ApiError("invalid_arguments")
        thread.prompts = [{"title": p["title"], "message": p["message"]} for p in prompts]
        thread.prompts_title = params.get("title") or None
        self._changed(thread)
        return {}

    def set_title(self, params: Json, caller: str) -> Json:
        if not self.enabled:
            raise ApiError("not_agent_app")
        thread = self._thread(params)
        if not isinstance(params.get("title"), str) or not params["title"]:
            raise ApiError("invalid_arguments")
        thread.title = params["title"]
        self._changed(thread)
        return {}

    # -- helpers -----------------------------------------------------------------------------------

    def _thread(self, params: Json) -> AssistantThread:
        channel = self.state.resolve_channel(params.get("channel_id"))
        if channel is None:
            raise ApiError("channel_not_found")
        thread = self.threads.get((channel.id, str(params.get("thread_ts") or "")))
        if thread is None:
            raise ApiError("invalid_thread_ts")
        return thread

    def _last_bot_reply(self, thread: AssistantThread) -> float:
        replies = [m for m in self.state.thread_messages(thread.channel, thread.thread_ts)
                   if m.bot_id and m.ts != thread.thread_ts]
        return max((self._created(m) for m in replies), default=0.0)

    @staticmethod
    def _created(msg: Message) -> float:
        return float(msg.ts)

    def _changed(self, thread: AssistantThread) -> None:
        self.state.notify("assistant.updated", thread=thread.to_json(self.state.clock(), self._last_bot_reply(thread)))


__all__ = ["AssistantThread", "AssistantView", "STATUS_TIMEOUT"]
