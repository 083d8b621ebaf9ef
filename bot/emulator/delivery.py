"""Requests from "Slack" to the bot: signed slash commands, interactions and Events API callbacks.

Payloads mirror what Slack sends field for field, because bolt's listeners and the bot's
own parsing key off them; the signature uses Slack's v0 scheme so the bot's real request
verification runs in tests instead of being switched off.
"""

from __future__ import annotations

import hashlib
import hmac
import json as _json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from .socket_mode import SocketModeServer
from .state import Delivery, Json, Message, WorkspaceState

STALE_SECONDS = 600  # SignatureVerifier rejects anything older than 5 minutes


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's request signature: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class DeliveryResult:
    """The bot's HTTP answer plus the ids a test needs to follow up (response_url, trigger, event)."""

    status: int
    body: str
    headers: dict[str, str]
    payload: Json
    response_url_id: str | None = None
    response_url: str | None = None
    trigger_id: str | None = None
    event_id: str | None = None
    extra: Json = field(default_factory=dict)

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or ``None`` when empty or not JSON."""
        try:
            return _json.loads(self.body) if self.body else None
        except ValueError:
            return None


def find_action(blocks: list[Json] | None, action_id: str, block_id: str | None = None) -> tuple[str, Json]:
    """Locate an interactive element by ``action_id`` in actions and context_actions blocks and section accessories."""
    for block in blocks or []:
        if block_id is not None and block.get("block_id") != block_id:
            continue
        candidates = list(block.get("elements") or []) if block.get("type") in ("actions", "context_actions") else []
        if isinstance(block.get("accessory"), dict):
            candidates.append(block["accessory"])
        for element in candidates:
            if element.get("action_id") == action_id:
                return block.get("block_id") or "", element
    raise LookupError(f"no interactive element with action_id={action_id!r} in message blocks")


def action_payload(block_id: str, element: Json, value: str | None, action_ts: str) -> Json:
    """One entry of ``actions`` for the clicked/selected element, shaped per element type."""
    kind = element.get("type", "button")
    action: Json = {"action_id": element.get("action_id"), "block_id": block_id, "type": kind,
                    "action_ts": action_ts}
    if kind == "button":
        action["text"] = element.get("text", {"type": "plain_text", "text": ""})
        action["value"] = value if value is not None else element.get("value", "")
        if "style" in element:
            action["style"] = element["style"]
    elif kind == "feedback_buttons":  # value picks the button: its value, or "positive" / "negative"
        buttons = {"positive": element.get("positive_button") or {}, "negative": element.get("negative_button") or {}}
        chosen = buttons.get(value or "positive") or next(
            (b for b in buttons.values() if b.get("value") == value), buttons["positive"])
        action["value"], action["text"] = chosen.get("value", ""), chosen.get("text")
    elif kind in ("static_select", "radio_buttons"):
        options = element.get("options") or []
        chosen = next((o for o in options if o.get("value") == value), options[0] if options else None)
        action["selected_option"] = chosen
    elif value is not None:
        action["value"] = value
    return action


class BotDelivery:
    """Builds and sends signed requests to ``bot_url`` and records each in the state."""

    def __init__(self, state: WorkspaceState, signing_secret: str, bot_url: str | None = None, *,
                 timeout: float = 10.0, verification_token: str = "verification-token") -> None:
        self.state = state
        self.signing_secret = signing_secret
        self.bot_url = bot_url
        self.timeout = timeout
        self.verification_token = verification_token
        self.response_url_base = ""
        #: When a bot is connected in Socket Mode, requests go over its socket instead of HTTP.
        self.socket: SocketModeServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._events: dict[str, bytes] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport -------------------------------------------------------------------------
    def signed_headers(self, body: bytes, content_type: str, *, forge_signature: bool = False,
                       stale_timestamp: bool = False) -> dict[str, str]:
        """Headers Slack adds; the tamper flags produce requests a correct verifier must reject."""
        timestamp = str(int(time.time()) - (STALE_SECONDS if stale_timestamp else 0))
        secret = ("forged-" + self.signing_secret) if forge_signature else self.signing_secret
        return {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
                "X-Slack-Signature": sign(secret, timestamp, body),
                "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}

    async def send(self, kind: str, body: bytes, content_type: str, payload: Json, *,
                   event_id: str | None = None, retry_num: int | None = None, retry_reason: str | None = None,
                   forge_signature: bool = False, stale_timestamp: bool = False) -> DeliveryResult:
        if self.socket is not None and self.socket.connected.is_set():
            status, text = await self.socket.send(kind, payload, timeout=self.timeout, retry_attempt=retry_num or 0,
                                                  retry_reason=retry_reason or "")
            self.state.record_delivery(Delivery(kind, status, body, "socket_mode", text, {}, event_id))
            return DeliveryResult(status, text, {}, payload, event_id=event_id)
        if not self.bot_url:
            raise RuntimeError("SlackEmulator.bot_url is not set; nowhere to deliver to")
        headers = self.signed_headers(body, content_type, forge_signature=forge_signature,
                                      stale_timestamp=stale_timestamp)
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        async with self._session.post(self.bot_url, data=body, headers=headers) as resp:
            text = await resp.text()
            result = DeliveryResult(resp.status, text, dict(resp.headers), payload, event_id=event_id)
        self.state.record_delivery(Delivery(kind, resp.status, body, content_type, text, headers, event_id))
        return result

    async def send_form(self, kind: str, form: Json, payload: Json, **opts: Any) -> DeliveryResult:
        body = urlencode(form).encode()
        return await self.send(kind, body, "application/x-www-form-urlencoded", payload, **opts)

    async def send_interaction(self, payload: Json, **opts: Any) -> DeliveryResult:
        """Interactions arrive as a form with a single ``payload`` field holding JSON."""
        return await self.send_form(payload["type"], {"payload": _json.dumps(payload)}, payload, **opts)

    async def send_event(self, envelope: Json, **opts: Any) -> DeliveryResult:
        body = _json.dumps(envelope).encode()
        self._events[envelope["event_id"]] = body
        return await self.send("event_callback", body, "application/json", envelope,
                               event_id=envelope["event_id"], **opts)

    async def redeliver(self, event_id: str, *, retry_num: int = 1, retry_reason: str = "http_timeout",
                        **opts: Any) -> DeliveryResult:
        """Resend the identical body (same event_id), as Slack does after a slow or failed ack."""
        body = self._events[event_id]
        return await self.send("event_callback", body, "application/json", _json.loads(body),
                               event_id=event_id, retry_num=retry_num, retry_reason=retry_reason, **opts)

    # -- payload builders ------------------------------------------------------------------
    def user_obj(self, user_id: str) -> Json:
        name = self.state.users[user_id].name
        return {"id": user_id, "username": name, "name": name, "team_id": self.state.team_id}

    def team_obj(self) -> Json:
        out: Json = {"id": self.state.team_id, "domain": self.state.team_domain}
        if self.state.enterprise_id:
            out["enterprise_id"] = self.state.enterprise_id
        return out

    def enterprise_obj(self) -> Json | None:
        return {"id": self.state.enterprise_id, "name": f"{self.state.enterprise_id} org"} if self.state.enterprise_id else None

    def channel_obj(self, channel_id: str) -> Json:
        return {"id": channel_id, "name": self.state.channels[channel_id].name}

    def slash_command_form(self, command: str, text: str, user: str, channel: str, response_url: str,
                           trigger_id: str) -> dict[str, str]:
        return {"token": self.verification_token, "team_id": self.state.team_id,
                "team_domain": self.state.team_domain, "channel_id": channel,
                "channel_name": self.state.channels[channel].name, "user_id": user,
                "user_name": self.state.users[user].name, "command": command, "text": text,
                "api_app_id": self.state.app_id,
                "is_enterprise_install": "true" if self.state.org_wide_install else "false",
                **({"enterprise_id": self.state.enterprise_id, "enterprise_name": f"{self.state.enterprise_id} org"}
                   if self.state.enterprise_id else {}),
                "response_url": response_url, "trigger_id": trigger_id}

    def block_actions_payload(self, *, user: str, channel: str, message: Json | None, message_ts: str,
                              is_ephemeral: bool, actions: list[Json], response_url: str,
                              trigger_id: str) -> Json:
        container: Json = {"type": "message", "message_ts": message_ts, "channel_id": channel,
                           "is_ephemeral": is_ephemeral}
        if message and message.get("thread_ts"):
            container["thread_ts"] = message["thread_ts"]
        payload: Json = {"type": "block_actions", "user": self.user_obj(user), "api_app_id": self.state.app_id,
                         "token": self.verification_token, "container": container, "trigger_id": trigger_id,
                         "team": self.team_obj(), "enterprise": self.enterprise_obj(),
                         "is_enterprise_install": self.state.org_wide_install,
                         "channel": self.channel_obj(channel), "state": {"values": {}},
                         "response_url": response_url, "actions": actions}
        if message is not None:  # Slack omits the message for ephemeral sources
            payload["message"] = message
        return payload

    def view_submission_payload(self, *, user: str, view: Json, trigger_id: str) -> Json:
        return {"type": "view_submission", "team": self.team_obj(), "user": self.user_obj(user),
                "api_app_id": self.state.app_id, "token": self.verification_token, "trigger_id": trigger_id,
                "view": view, "response_urls": [], "is_enterprise_install": self.state.org_wide_install,
                "enterprise": self.enterprise_obj()}

    def event_envelope(self, event: Json) -> Json:
        return {"token": self.verification_token, "team_id": self.state.team_id,
                "context_team_id": self.state.team_id, "api_app_id": self.state.app_id, "event": event,
                "type": "event_callback", "event_id": self.state.next_id("Ev"),
                "event_time": int(time.time()),
                **({"enterprise_id": self.state.enterprise_id} if self.state.enterprise_id else {}),
                "is_enterprise_install": self.state.org_wide_install,
                "authorizations": [{"enterprise_id": self.state.enterprise_id,
                                    "team_id": None if self.state.org_wide_install else self.state.team_id,
                                    "user_id": self.state.bot_user_id, "is_bot": True,
                                    "is_enterprise_install": self.state.org_wide_install}],
                "is_ext_shared_channel": False}

    def message_events(self, msg: Message) -> list[Json]:
        """The events Slack emits for a new message: ``message``, plus ``app_mention`` if the bot is @-ed.

        Messages from bots carry ``bot_id`` (and ``bot_profile``) so the bot can skip its own.
        """
        channel = self.state.channels[msg.channel]
        base: Json = {"user": msg.user, "text": msg.text, "ts": msg.ts, "event_ts": msg.ts,
                      "channel": msg.channel, "team": msg.team}
        if msg.blocks is not None:
            base["blocks"] = msg.blocks
        if msg.is_reply:
            base.update(thread_ts=msg.thread_ts, parent_user_id=msg.parent_user_id)
        if msg.files:
            base.update(subtype="file_share", files=msg.files, upload=False, display_as_bot=False)
        if msg.bot_id:
            base.update(bot_id=msg.bot_id, app_id=msg.app_id,
                        bot_profile={"id": msg.bot_id, "app_id": msg.app_id, "name": "threadflow",
                                     "team_id": msg.team})
        else:
            base["client_msg_id"] = str(uuid.uuid4())
        events = [{"type": "message", **base, "channel_type": "im" if channel.is_im else "channel"}]
        if not msg.bot_id and f"<@{self.state.bot_user_id}>" in msg.text:
            events.append({"type": "app_mention", **base})
        return events
