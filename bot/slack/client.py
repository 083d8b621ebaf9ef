"""The one way the bot talks to Slack's Web API: typed calls, paced, with Slack's errors sorted.

Every call is paced (:mod:`bot.slack.pacing`) and ends in a result or one of the errors in
:mod:`bot.slack.errors`. The underlying slack_sdk client retries nothing by itself: the outbox decides
when a delivery is tried again (it survives restarts), and interactive calls retry briefly here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from .errors import (
    MAYBE_DONE_CODES,
    NOT_IDEMPOTENT,
    TRANSIENT_CODES,
    NotInstalled,
    Permanent,
    RateLimited,
    SlackCallError,
    Transient,
)
from .pacing import Pacer
from .workspace import TokenSource, current_workspace

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("threadflow.bot.slack")

T = TypeVar("T")

#: Seconds a Web API call may take before it counts as a timeout (Slack answers in well under a second).
DEFAULT_TIMEOUT = 10.0


class Posted(NamedTuple):
    """Where a posted message lives."""

    channel: str
    ts: str


def delivery_metadata(delivery_id: str) -> dict[str, Any]:
    """Message metadata that names the outbox row a post delivers, so a half-done post can be found again."""
    return {"event_type": "threadflow_delivery", "event_payload": {"delivery_id": delivery_id}}


def ts_of_delivery(messages: list[dict[str, Any]], delivery_id: str) -> str | None:
    """Where the message posted with ``delivery_metadata(delivery_id)`` is among ``messages`` (None: not there)."""
    for message in messages:
        payload = ((message.get("metadata") or {}).get("event_payload")) or {}
        if payload.get("delivery_id") == delivery_id and message.get("ts"):
            return str(message["ts"])
    return None


def make_web_client(token: str | None, base_url: str, timeout: float = DEFAULT_TIMEOUT) -> AsyncWebClient:
    """slack_sdk's client with no retry handlers of its own: retries are decided by the caller."""
    return AsyncWebClient(token=token, base_url=base_url, timeout=int(max(1, timeout)), retry_handlers=[])


class SlackClient:
    """Typed, paced Web API calls for one app installation."""

    def __init__(self, web: AsyncWebClient, pacer: Pacer, metrics: Metrics | None = None, *, team_id: str = "",
                 tokens: TokenSource | None = None) -> None:
        self.web = web
        self.pacer = pacer
        self.metrics = metrics
        self.team_id = team_id
        #: Where each workspace's token comes from (OAuth installs); None: the web client's one token.
        self.tokens = tokens

    @property
    def scope_team(self) -> str:
        """The workspace whose rate limits a call now counts against (see :mod:`bot.slack.workspace`)."""
        workspace = current_workspace()
        return workspace.team_id if workspace is not None else self.team_id

    async def call(self, method: str, *, channel: str | None = None, pace: bool = True, **params: Any) -> dict[str, Any]:
        """Call ``method`` (``chat.postMessage``); returns Slack's answer or raises a :class:`SlackCallError`."""
        team = self.scope_team
        if self.tokens is not None:
            try:
                token = await self.tokens.token_for(current_workspace())
            except Transient as exc:  # its token expired and Slack did not answer the refresh: later
                self._count(method, exc)
                raise
            if token is None:
                self._count(method, NotInstalled(method, team))
                raise NotInstalled(method, team)
            params["token"] = token
        if pace:
            await self.pacer.wait(team, method, channel)
        fn = getattr(self.web, method.replace(".", "_"))
        try:
            response = await fn(**({"channel": channel} if channel is not None else {}), **params)
        except SlackApiError as exc:
            error = self._classify(method, exc)
            if isinstance(error, RateLimited):
                await self.pacer.hold(team, method, channel, error.retry_after)
            self._count(method, error)
            raise error from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientConnectorDNSError) as exc:
            self._count(method, Transient(method, "connect"))
            raise Transient(method, f"could not connect ({type(exc).__name__})") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._count(method, Transient(method, "connection"))
            raise Transient(method, f"no answer ({type(exc).__name__})", maybe_delivered=True) from None
        self._count(method, None)
        return dict(response.data) if isinstance(response.data, dict) else {}

    @staticmethod
    def _classify(method: str, exc: SlackApiError) -> SlackCallError:
        response = exc.response
        status = getattr(response, "status_code", 200)
        data = response.data if response is not None and isinstance(response.data, dict) else {}
        code = str(data.get("error") or "unknown_error")
        if status == 429 or code == "ratelimited":
            headers = getattr(response, "headers", {}) or {}
            raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
            try:
                retry_after = max(0.0, float(raw if not isinstance(raw, list) else raw[0]))
            except ValueError:
                retry_after = 1.0
            return RateLimited(method, retry_after)
        if status >= 500 or code in TRANSIENT_CODES:
            maybe_done = status >= 500 or code in MAYBE_DONE_CODES
            return Transient(method, f"HTTP {status} {code}", maybe_delivered=maybe_done and method in NOT_IDEMPOTENT,
                             answered=True)
        return Permanent(method, code)

    def _count(self, method: str, error: SlackCallError | None) -> None:
        if self.metrics is not None:
            self.metrics.slack_call(method, ok=error is None, ratelimited=isinstance(error, RateLimited))

    # -- typed calls -------------------------------------------------------------------------------------

    async def post_message(self, channel: str, text: str, *, blocks: list[dict[str, Any]] | None = None,
                           thread_ts: str | None = None, metadata: dict[str, Any] | None = None) -> Posted:
        params: dict[str, Any] = {"text": text}
        if blocks is not None:
            params["blocks"] = blocks
        if thread_ts is not None:
            params["thread_ts"] = thread_ts
        if metadata is not None:
            params["metadata"] = metadata
        data = await self.call("chat.postMessage", channel=channel, **params)
        return Posted(str(data.get("channel") or channel), str(data["ts"]))

    async def update_message(self, channel: str, ts: str, text: str, *,
                             blocks: list[dict[str, Any]] | None = None) -> Posted:
        params: dict[str, Any] = {"ts": ts, "text": text}
        if blocks is not None:
            params["blocks"] = blocks
        data = await self.call("chat.update", channel=channel, **params)
        return Posted(str(data.get("channel") or channel), str(data.get("ts") or ts))

    async def post_ephemeral(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> None:
        params: dict[str, Any] = {"user": user, "text": text}
        if thread_ts:
            params["thread_ts"] = thread_ts
        await self.call("chat.postEphemeral", channel=channel, **params)

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        # A trigger id expires 3 seconds after the click: never wait for a slot.
        await self.call("views.open", pace=False, trigger_id=trigger_id, view=view)

    async def thread_replies(self, channel: str, ts: str, *, oldest: float | None = None,
                             limit: int = 15) -> list[dict[str, Any]]:
        """The thread's replies since ``oldest``, with their metadata (one page: used to find a half-done post)."""
        return await self._messages("conversations.replies", channel, oldest, limit, ts=ts)

    async def channel_history(self, channel: str, *, oldest: float | None = None,
                              limit: int = 15) -> list[dict[str, Any]]:
        """The channel's messages since ``oldest``, with their metadata (one page: used to find a half-done post)."""
        return await self._messages("conversations.history", channel, oldest, limit)

    async def _messages(self, method: str, channel: str, oldest: float | None, limit: int,
                        **params: Any) -> list[dict[str, Any]]:
        params.update(limit=limit, include_all_metadata=True)
        if oldest is not None:
            params["oldest"] = f"{oldest:.6f}"
        data = await self.call(method, channel=channel, **params)
        return [m for m in data.get("messages") or [] if isinstance(m, dict)]

    async def channel_members(self, channel: str) -> frozenset[str]:
        """Everyone in ``channel`` (``conversations.members``, every page); raises when the bot cannot ask."""
        members: set[str] = set()
        cursor = ""
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            data = await self.call("conversations.members", channel=channel, **params)
            members.update(str(m) for m in data.get("members") or [])
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return frozenset(members)

    # -- AI apps: streamed answers and the assistant container -------------------------------------------

    async def start_stream(self, channel: str, thread_ts: str, *, chunks: list[dict[str, Any]],
                           recipient_team_id: str | None = None, recipient_user_id: str | None = None,
                           task_display_mode: str | None = None) -> Posted:
        """``chat.startStream``: a new message in the thread that is then appended to (``append_stream``)."""
        params: dict[str, Any] = {"thread_ts": thread_ts, "chunks": chunks}
        for key, value in (("recipient_team_id", recipient_team_id), ("recipient_user_id", recipient_user_id),
                           ("task_display_mode", task_display_mode)):
            if value:
                params[key] = value
        data = await self.call("chat.startStream", channel=channel, **params)
        return Posted(str(data.get("channel") or channel), str(data["ts"]))

    async def append_stream(self, channel: str, ts: str, chunks: list[dict[str, Any]]) -> None:
        await self.call("chat.appendStream", channel=channel, ts=ts, chunks=chunks)

    async def stop_stream(self, channel: str, ts: str, *, chunks: list[dict[str, Any]] | None = None,
                          blocks: list[dict[str, Any]] | None = None, metadata: dict[str, Any] | None = None) -> None:
        params: dict[str, Any] = {"ts": ts}
        if chunks:
            params["chunks"] = chunks
        if blocks:
            params["blocks"] = blocks
        if metadata is not None:
            params["metadata"] = metadata
        await self.call("chat.stopStream", channel=channel, **params)

    async def set_assistant_status(self, channel: str, thread_ts: str, status: str, *,
                                   loading_messages: list[str] | None = None) -> None:
        """``assistant.threads.setStatus``: "is thinking..." under the thread (``""`` clears it)."""
        params: dict[str, Any] = {"channel_id": channel, "thread_ts": thread_ts, "status": status}
        if loading_messages:
            params["loading_messages"] = loading_messages
        await self.call("assistant.threads.setStatus", **params)

    async def set_suggested_prompts(self, channel: str, thread_ts: str, prompts: list[dict[str, str]], *,
                                    title: str | None = None) -> None:
        params: dict[str, Any] = {"channel_id": channel, "thread_ts": thread_ts, "prompts": prompts}
        if title:
            params["title"] = title
        await self.call("assistant.threads.setSuggestedPrompts", **params)

    async def set_assistant_title(self, channel: str, thread_ts: str, title: str) -> None:
        await self.call("assistant.threads.setTitle", channel_id=channel, thread_ts=thread_ts, title=title)


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 4, max_wait: float = 30.0,
                       retry_errors_after_delivery: bool = True) -> T:
    """Retry an interactive call a few times: after 429s (as long as ``Retry-After`` allows) and transient
    failures that cannot have reached Slack. Used where a person is waiting and there is no outbox row.

    A post Slack answered with a 5xx may have been made: it is tried again (a duplicate rather than an answer
    lost) unless ``retry_errors_after_delivery`` is False, for a caller that looks it up first. A post with no
    answer at all is never tried again here."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except RateLimited as exc:
            if attempt == attempts or exc.retry_after > max_wait:
                raise
            await asyncio.sleep(exc.retry_after)
        except Transient as exc:
            retry_anyway = exc.answered and retry_errors_after_delivery
            if attempt == attempts or (exc.maybe_delivered and not retry_anyway):
                raise
            await asyncio.sleep(min(max_wait, 0.25 * 2 ** attempt) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")  # pragma: no cover
