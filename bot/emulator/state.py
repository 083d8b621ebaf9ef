"""In-memory Slack workspace state shared by the emulator's Web API, deliveries and test helpers.

Everything lives in one object so that the fake Web API, the event deliveries and the
assertions in tests all see the same truth, and every mutation goes through ``notify`` so
``wait_for`` and ``subscribe`` (the future sandbox page's live feed) never need polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass
class Channel:
    """A conversation; ``is_im`` channels are the bot's DMs with ``user``."""

    id: str
    name: str
    is_im: bool = False
    user: str | None = None

    def to_api(self) -> Json:
        if self.is_im:
            return {"id": self.id, "is_im": True, "user": self.user, "created": 1700000000}
        return {"id": self.id, "name": self.name, "is_channel": True, "is_im": False,
                "is_private": False, "is_member": True, "created": 1700000000}


@dataclass
class User:
    """A workspace member; the bot is a user too (``bot_id`` set), exactly as in Slack."""

    id: str
    name: str
    bot_id: str | None = None

    def to_api(self, team_id: str) -> Json:
        profile: Json = {"display_name": self.name, "real_name": self.name.title(), "team": team_id}
        if self.bot_id:
            profile["bot_id"] = self.bot_id
        return {"id": self.id, "team_id": team_id, "name": self.name, "real_name": self.name.title(),
                "deleted": False, "is_bot": self.bot_id is not None, "is_admin": False,
                "tz": "UTC", "tz_offset": 0, "profile": profile}


@dataclass
class Message:
    """A channel message or thread reply; ``to_api`` renders Slack's wire shape."""

    channel: str
    ts: str
    team: str
    text: str = ""
    user: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    blocks: list[Json] | None = None
    attachments: list[Json] | None = None
    thread_ts: str | None = None
    reply_broadcast: bool = False
    metadata: Json | None = None
    edited: Json | None = None
    replies: list[str] = field(default_factory=list)  # reply ts values when this is a parent
    reply_users: list[str] = field(default_factory=list)
    parent_user_id: str | None = None
    files: list[Json] | None = None

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def to_api(self) -> Json:
        out: Json = {"type": "message", "ts": self.ts, "text": self.text, "team": self.team}
        for key in ("user", "bot_id", "app_id", "blocks", "attachments", "metadata", "edited",
                    "parent_user_id", "files"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.replies:
            out.update(reply_count=len(self.replies), reply_users=list(self.reply_users),
                       reply_users_count=len(self.reply_users), latest_reply=self.replies[-1])
        if self.reply_broadcast:
            out["subtype"] = "thread_broadcast"
        elif self.files:
            out["subtype"] = "file_share"
            out["upload"] = False
        return out


@dataclass
class Ephemeral:
    """A message visible only to ``user``; Slack never returns these from history APIs."""

    channel: str
    user: str
    ts: str
    text: str = ""
    blocks: list[Json] | None = None
    thread_ts: str | None = None
    source: str = "chat.postEphemeral"

    def to_api(self) -> Json:
        out: Json = {"type": "message", "ts": self.ts, "text": self.text, "is_ephemeral": True}
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        return out


@dataclass
class ApiCall:
    """One Web API request as received, so tests can assert on what the bot actually sent."""

    method: str
    params: Json
    http_method: str
    content_type: str
    token: str | None
    time: float
    status: int = 200
    response: Json | None = None


@dataclass
class View:
    """A modal opened with views.open; ``view`` is the rendered view object (with ``state``)."""

    id: str
    user: str
    view: Json
    trigger_id: str | None = None
    closed: bool = False


@dataclass
class ResponseUrl:
    """A response_url handed to the bot, with Slack's 5-use budget and the bodies posted to it."""

    id: str
    kind: str  # "command" | "block_actions" | "view_submission"
    user: str
    channel: str
    message_ts: str | None = None
    thread_ts: str | None = None
    is_ephemeral: bool = False
    uses: int = 0
    posts: list[Json] = field(default_factory=list)


@dataclass
class Delivery:
    """One signed request sent to the bot (slash command, interaction or event)."""

    kind: str
    status: int
    body: bytes
    content_type: str
    response_body: str
    headers: dict[str, str]
    event_id: str | None = None
    time: float = field(default_factory=time.time)


@dataclass
class Change:
    """A state change notification; ``data`` is JSON-ready so it can go straight into SSE."""

    seq: int
    kind: str
    data: Json

    def to_json(self) -> Json:
        return asdict(self)


class Subscription:
    """Async iterator of ``Change``s; closing it (or the emulator stopping) ends the iteration.

    Bounded so a stalled browser tab cannot grow memory without limit: the oldest changes are
    dropped and counted in ``dropped`` so the consumer can resync from ``snapshot()``.
    """

    def __init__(self, state: WorkspaceState, maxsize: int = 1000) -> None:
        self._state = state
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._maxsize = maxsize
        self.dropped = 0
        self.closed = False

    def _push(self, change: Change | None) -> None:
        if change is not None and self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(change)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._state._subscribers.discard(self)
            self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # keep later __anext__ calls ending too
            raise StopAsyncIteration
        return item

    async def get(self, timeout: float | None = None) -> Change:  # noqa: ASYNC109
        """Next change, raising ``TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def truthy(value: Any) -> bool:
    """Slack accepts booleans as true/false/1/0 in forms and queries."""
    return value is True or str(value).lower() in {"1", "true", "yes"}


class WorkspaceState:
    """The whole fake workspace; synchronous mutations, async observation."""

    def __init__(self, bot_token: str, *, team_id: str = "T0TEAM", team_domain: str = "threadflow-dev",
                 app_id: str = "A0APP", clock: Callable[[], float] = time.time) -> None:
        self.team_id, self.team_domain, self.app_id = team_id, team_domain, app_id
        #: The Enterprise Grid org this workspace belongs to (None: a standalone workspace), and whether the app
        #: is installed on the whole org (then every payload says ``is_enterprise_install``).
        self.enterprise_id: str | None = None
        self.org_wide_install = False
        self.bot_user_id, self.bot_id = "U0BOT", "B0BOT"
        self.clock = clock
        self.channels: dict[str, Channel] = {"C0GENERAL": Channel("C0GENERAL", "general")}
        self.users: dict[str, User] = {
            "U0ALICE": User("U0ALICE", "alice"), "U0BOB": User("U0BOB", "bob"),
            "U0BOT": User("U0BOT", "threadflow", bot_id="B0BOT")}
        self.tokens: dict[str, str] = {bot_token: "U0BOT"}
        self._messages: dict[str, list[Message]] = {}
        self.ephemeral_messages: list[Ephemeral] = []
        self.api_calls: list[ApiCall] = []
        self.views: dict[str, View] = {}
        self.response_urls: dict[str, ResponseUrl] = {}
        self.triggers: dict[str, tuple[str, float]] = {}  # trigger_id -> (user, issued at)
        self.deliveries: list[Delivery] = []
        self._last_micros = 0
        self._counter = 0
        self._seq = 0
        self._changed = asyncio.Event()
        self._subscribers: set[Subscription] = set()

    # -- ids and notifications -------------------------------------------------------------
    def next_ts(self) -> str:
        """Slack-style ``seconds.micros`` ts, strictly increasing even within one microsecond."""
        self._last_micros = max(int(self.clock() * 1_000_000), self._last_micros + 1)
        return f"{self._last_micros // 1_000_000}.{self._last_micros % 1_000_000:06d}"

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:08d}"

    def notify(self, kind: str, /, **data: Any) -> None:
        """Record a change: wake ``wait_for`` waiters and fan out to subscribers."""
        self._seq += 1
        change = Change(self._seq, kind, data)
        for sub in list(self._subscribers):
            sub._push(change)
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def close_subscriptions(self) -> None:
        for sub in list(self._subscribers):
            sub.close()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Return the first truthy ``predicate()`` result, re-checking only after state changes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed  # capture before checking so no change slips between
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    # -- lookups ---------------------------------------------------------------------------
    def im_channel(self, user_id: str) -> Channel:
        """The bot's DM with ``user_id`` (Slack lets chat.postMessage target a user id)."""
        cid = "D" + user_id[1:]
        if cid not in self.channels:
            self.channels[cid] = Channel(cid, user_id, is_im=True, user=user_id)
        return self.channels[cid]

    def resolve_channel(self, channel_id: str | None) -> Channel | None:
        if channel_id in self.users:
            return self.im_channel(channel_id)
        return self.channels.get(channel_id or "")

    def find_message(self, ts: str, channel: str | None = None) -> Message | None:
        chans = [channel] if channel else list(self._messages)
        for cid in chans:
            for msg in self._messages.get(cid, []):
                if msg.ts == ts:
                    return msg
        return None

    def find_ephemeral(self, ts: str) -> Ephemeral | None:
        return next((e for e in self.ephemeral_messages if e.ts == ts), None)

    def channel_messages(self, channel: str) -> list[Message]:
        """Top-level messages (plus thread broadcasts), oldest first, as the channel shows them."""
        return [m for m in self._messages.get(channel, []) if not m.is_reply or m.reply_broadcast]

    def thread_messages(self, channel: str, ts: str) -> list[Message]:
        parent = self.find_message(ts, channel)
        if parent is None:
            return []
        root = parent.thread_ts or parent.ts
        return [m for m in self._messages.get(channel, []) if m.ts == root or m.thread_ts == root]

    # -- mutations -------------------------------------------------------------------------
    def add_message(self, channel: str, *, text: str = "", user: str | None = None,
                    blocks: list[Json] | None = None, thread_ts: str | None = None, **extra: Any) -> Message:
        """Store a message; a ``thread_ts`` pointing at a reply is normalised to its root."""
        sender = self.users.get(user or "")
        msg = Message(channel=channel, ts=self.next_ts(), team=self.team_id, text=text, user=user,
                      blocks=blocks, **extra)
        if sender is not None and sender.bot_id and msg.bot_id is None:
            msg.bot_id, msg.app_id = sender.bot_id, self.app_id
        if thread_ts is not None:
            parent = self.find_message(thread_ts, channel)
            if parent is None:
                raise KeyError(thread_ts)
            root = self.find_message(parent.thread_ts or parent.ts, channel) or parent
            root.thread_ts = root.ts
            msg.thread_ts, msg.parent_user_id = root.ts, root.user
            root.replies.append(msg.ts)
            if user and user not in root.reply_users:
                root.reply_users.append(user)
        self._messages.setdefault(channel, []).append(msg)
        self.notify("message.posted", channel=channel, ts=msg.ts, message=msg.to_api())
        return msg

    def update_message(self, msg: Message, *, editor: str | None, **fields: Any) -> Message:
        """Apply chat.update semantics: omitted blocks/attachments are kept, like Slack does."""
        for key, value in fields.items():
            if value is not None:
                setattr(msg, key, value)
        msg.edited = {"user": editor, "ts": self.next_ts()}
        self.notify("message.updated", channel=msg.channel, ts=msg.ts, message=msg.to_api())
        return msg

    def delete_message(self, msg: Message) -> None:
        self._messages[msg.channel].remove(msg)
        if msg.is_reply:
            root = self.find_message(msg.thread_ts or "", msg.channel)
            if root is not None and msg.ts in root.replies:
                root.replies.remove(msg.ts)
        self.notify("message.deleted", channel=msg.channel, ts=msg.ts)

    def add_ephemeral(self, channel: str, user: str, *, text: str = "", blocks: list[Json] | None = None,
                      thread_ts: str | None = None, source: str = "chat.postEphemeral") -> Ephemeral:
        eph = Ephemeral(channel, user, self.next_ts(), text, blocks, thread_ts, source)
        self.ephemeral_messages.append(eph)
        self.notify("ephemeral.posted", channel=channel, user=user, ts=eph.ts, message=eph.to_api())
        return eph

    def record_call(self, call: ApiCall) -> None:
        self.api_calls.append(call)
        self.notify("api.call", method=call.method, status=call.status,
                    ok=bool(call.response and call.response.get("ok")))

    def record_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.notify("delivery", kind=delivery.kind, status=delivery.status, event_id=delivery.event_id)

    def file_object(self, spec: Json, user: str) -> Json:
        """A file as Slack describes it in a ``file_share`` message (the bot never downloads it)."""
        file_id = self.next_id("F")
        name = str(spec.get("name") or "file.txt")
        return {"id": file_id, "created": int(self.clock()), "timestamp": int(self.clock()), "name": name,
                "title": spec.get("title", name), "mimetype": spec.get("mimetype", "text/plain"),
                "filetype": name.rsplit(".", 1)[-1], "user": user, "size": int(spec.get("size", 42)),
                "mode": "hosted", "is_external": False, "is_public": True,
                "url_private": f"https://files.slack.com/files-pri/{self.team_id}-{file_id}/{name}",
                "permalink": f"https://{self.team_domain}.slack.com/files/{user}/{file_id}/{name}"}

    def issue_trigger(self, user: str) -> str:
        trigger_id = f"{self.next_id('')}.{self.team_id}.{self.next_id('trig')}"
        self.triggers[trigger_id] = (user, self.clock())
        return trigger_id

    def issue_response_url(self, kind: str, user: str, channel: str, **extra: Any) -> ResponseUrl:
        ru = ResponseUrl(self.next_id("R"), kind, user, channel, **extra)
        self.response_urls[ru.id] = ru
        return ru

    def snapshot(self) -> Json:
        """JSON-ready picture of the workspace, for a page that then follows ``subscribe()``."""
        return {
            "seq": self._seq,
            "team": {"id": self.team_id, "domain": self.team_domain},
            "channels": [c.to_api() | {"name": c.name} for c in self.channels.values()],
            "users": [u.to_api(self.team_id) for u in self.users.values()],
            "messages": {cid: [m.to_api() for m in msgs] for cid, msgs in self._messages.items()},
            "ephemerals": [e.to_api() | {"channel": e.channel, "user": e.user}
                           for e in self.ephemeral_messages],
            "views": [{"id": v.id, "user": v.user, "closed": v.closed, "view": v.view}
                      for v in self.views.values()],
        }
