"""Bolt middleware the bot adds after bolt's own (which has verified the request's signature by then).

Registered with ``app.use``, so they run for every request however it arrived (HTTP or Socket Mode).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.middleware.ignoring_self_events.async_ignoring_self_events import AsyncIgnoringSelfEvents
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from storage.slack_store import SlackStore

from .slack.workspace import set_workspace

log = logging.getLogger("threadflow.bot.middleware")

Next = Callable[[], Awaitable[BoltResponse]]


def _header(req: AsyncBoltRequest, name: str) -> str:
    value: Any = req.headers.get(name) or req.headers.get(name.title())
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return str(value or "")


class ReplayGuard:
    """A validly signed request whose exact signature was seen before is a replay, never a Slack retry.

    A byte-identical request is someone replaying a captured one within the 5-minute timestamp window: Slack
    never retries slash commands or clicks. Event retries (``X-Slack-Retry-Num``) may repeat a signature;
    those pass, and the per-message dedupe answers each message once. Socket Mode requests carry no
    signature (the connection itself is authenticated), so they pass.
    """

    def __init__(self, store: SlackStore) -> None:
        self.store = store

    async def process(self, req: AsyncBoltRequest, resp: BoltResponse, next: Next) -> BoltResponse | None:
        if req.mode != "http":
            return await next()
        if _header(req, "x-slack-retry-num") and req.raw_body.lstrip().startswith("{"):
            return await next()
        signature = _header(req, "x-slack-signature")
        if signature and not await self.store.mark_seen(f"signature:{signature}"):
            log.warning("refused a replayed Slack request (same signature seen before)")
            return BoltResponse(status=401, body='{"error": "replayed request"}',
                                headers={"content-type": ["application/json"]})
        return await next()


def malformed_interaction(body: Any) -> str | None:
    """What is wrong with an interaction payload bolt would choke on (it answers those with a 500)."""
    if not isinstance(body, dict) or body.get("type") not in ("block_actions", "view_submission"):
        return None
    user = body.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        return "no user"
    if body["type"] == "block_actions":
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "no actions"
        if not all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions):
            return "an action without action_id"
    elif not isinstance(body.get("view"), dict):
        return "no view"
    return None


async def reject_malformed(req: AsyncBoltRequest, resp: BoltResponse, next: Next) -> BoltResponse | None:
    """Interactions without the fields every listener relies on get a 400 instead of a listener crash."""
    problem = malformed_interaction(req.body)
    if problem is not None:
        log.warning("refused a malformed Slack interaction: %s", problem)
        return BoltResponse(status=400, body=f'{{"error": "malformed request: {problem}"}}',
                            headers={"content-type": ["application/json"]})
    return await next()


class IgnoreOwnEventsButDeletions(AsyncIgnoringSelfEvents):
    """Bolt's filter of the bot's own events, except that someone deleting one of the bot's messages is news:
    a deleted approval card must be posted again (bolt would drop ``message_deleted`` as a self event)."""

    @classmethod
    def _is_self_event(cls, auth_result: Any, user_id: str | None, bot_id: str | None, body: dict[str, Any]) -> bool:
        event = body.get("event")
        if isinstance(event, dict) and event.get("type") == "message" and event.get("subtype") == "message_deleted":
            return False
        return bool(super()._is_self_event(auth_result, user_id, bot_id, body))


async def enter_workspace(req: AsyncBoltRequest, resp: BoltResponse, next: Next) -> BoltResponse | None:
    """Everything this request leads to (and the tasks it spawns) calls Slack for its own workspace.

    bolt runs the listeners after the middleware chain has returned, not inside it, so the workspace is set
    for the rest of the task handling this one request (each request is handled in a task of its own, with
    its own copy of the context variables) rather than inside a ``with`` block."""
    context = req.context
    set_workspace(str(context.team_id or ""), context.enterprise_id or None)
    return await next()
