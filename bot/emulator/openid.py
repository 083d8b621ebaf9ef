"""Sign in with Slack (OpenID Connect) and channel membership, as the emulator's Slack serves them.

The run inspector signs people in with Slack and shows each person the runs of the channels they belong
to, so the emulator answers the same calls Slack does, over HTTP:

- ``GET /openid/connect/authorize?response_type=code&scope=openid…&client_id&redirect_uri&state&nonce``:
  Slack's consent page; here a person picks who to sign in as, and is redirected back with ``code`` and
  ``state``.
- ``POST /api/openid.connect.token`` (``client_id``, ``client_secret``, ``code``, ``redirect_uri``; form or
  HTTP Basic): exchanges the code, once, for a user token and an ``id_token``.
- ``openid.connect.userInfo`` (the user token): the person's claims (``sub``, ``https://slack.com/team_id``…).
- ``users.conversations`` and ``conversations.members``: who is in which channel. A channel nobody set
  members for has every workspace member in it; ``set_members`` makes one private to some people.
- ``chat.getPermalink``: ``/archives/CHANNEL/pTS``, which opens that thread on the sandbox page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from .state import ApiCall, Json, WorkspaceState
from .web_api import ApiError, SlackWebApi

CODE_TTL = 600.0


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    user: str
    nonce: str | None
    issued: float


class OpenIdProvider:
    """Slack's OpenID Connect endpoints and membership methods on one emulated workspace."""

    def __init__(self, state: WorkspaceState, web_api: SlackWebApi) -> None:
        self.state = state
        self.web_api = web_api
        self.clients: dict[str, str] = {}
        self._grants: dict[str, _Grant] = {}
        self._members: dict[str, set[str]] = {}

    # -- setup -------------------------------------------------------------------------------------
    def register_client(self, client_id: str, client_secret: str) -> None:
        """An app allowed to sign people in (Slack: the app's Client ID and Client Secret)."""
        self.clients[client_id] = client_secret

    def set_members(self, channel: str, users: list[str]) -> None:
        """Make ``channel`` hold exactly these people (and the bot, which must be in it to post)."""
        self._members[channel] = {*users, self.state.bot_user_id}

    def members_of(self, channel: str) -> list[str]:
        explicit = self._members.get(channel)
        if explicit is not None:
            return sorted(explicit)
        chan = self.state.channels.get(channel)
        if chan is not None and chan.is_im:
            return sorted({chan.user or "", self.state.bot_user_id} - {""})
        return sorted(self.state.users)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/openid/connect/authorize", self.authorize_page)
        app.router.add_post("/openid/connect/authorize", self.authorize_grant)
        app.router.add_post("/api/openid.connect.token", self.token)
        app.router.add_route("*", "/api/chat.getPermalink", self.get_permalink)
        app.router.add_get("/archives/{channel}/{p}", self.open_permalink)
        self.web_api.methods.update({
            "openid.connect.userInfo": self.user_info,
            "users.conversations": self.users_conversations,
            "conversations.members": self.conversations_members,
        })

    # -- the browser side --------------------------------------------------------------------------
    def _check_request(self, params: dict[str, str]) -> str | None:
        if params.get("response_type") != "code":
            return "response_type must be code"
        if "openid" not in (params.get("scope") or "").split():
            return "scope must include openid"
        if params.get("client_id") not in self.clients:
            return "unknown client_id"
        if not (params.get("redirect_uri") or "").startswith(("http://", "https://")):
            return "redirect_uri must be an http(s) URL"
        return None

    async def authorize_page(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        problem = self._check_request(params)
        if problem is not None:
            return web.Response(status=400, text=f"Sign in with Slack: {problem}.")
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items()
        )
        people = [u for u in self.state.users.values() if not u.bot_id]
        buttons = "".join(
            f'<button name="user" value="{html.escape(u.id)}">Continue as {html.escape(u.name)}</button>'
            for u in people
        )
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in with Slack</title>"
            "<style>body{font:15px system-ui;margin:4rem auto;max-width:26rem}button{display:block;width:100%;"
            "margin:.5rem 0;padding:.7rem;font:inherit;border:1px solid #ccc;border-radius:6px;background:#fff;"
            "cursor:pointer}button:hover{background:#f4ede4}</style></head><body>"
            f"<h1>Sign in to {html.escape(self.state.team_domain)}</h1>"
            "<p>The local Slack emulator: pick who you are.</p>"
            f'<form method="post" action="/openid/connect/authorize">{hidden}{buttons}</form></body></html>'
        )
        return web.Response(text=body, content_type="text/html")

    async def authorize_grant(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        problem = self._check_request(form)
        user = form.get("user", "")
        if problem is None and (user not in self.state.users or self.state.users[user].bot_id):
            problem = "unknown user"
        if problem is not None:
            return web.Response(status=400, text=f"Sign in with Slack: {problem}.")
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(form["client_id"], form["redirect_uri"], user, form.get("nonce"), time.time())
        query = urlencode({"code": code, **({"state": form["state"]} if "state" in form else {})})
        sep = "&" if "?" in form["redirect_uri"] else "?"
        raise web.HTTPFound(f"{form['redirect_uri']}{sep}{query}")

    # -- the Web API side --------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        """``openid.connect.token``: authenticated by the client's id and secret, not by a token."""
        params = await SlackWebApi.parse_params(request)
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                cid, secret = "", ""
            params.setdefault("client_id", cid)
            params.setdefault("client_secret", secret)
        call = ApiCall("openid.connect.token", {k: v for k, v in params.items() if k != "client_secret"},
                       request.method, request.content_type, None, self.state.clock())
        try:
            body: Json = {"ok": True, **self._exchange(params)}
        except ApiError as exc:
            body = {"ok": False, "error": exc.error}
        call.response = {k: v for k, v in body.items() if k not in ("access_token", "id_token")}
        self.state.record_call(call)
        return web.json_response(body)

    async def get_permalink(self, request: web.Request) -> web.Response:
        """``chat.getPermalink``: served here (not in SlackWebApi) because the link needs this server's address."""
        params = await SlackWebApi.parse_params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else params.pop("token", None)
        channel, ts = str(params.get("channel") or ""), str(params.get("message_ts") or "")
        if token not in self.state.tokens:
            body: Json = {"ok": False, "error": "not_authed" if not token else "invalid_auth"}
        elif channel not in self.state.channels:
            body = {"ok": False, "error": "channel_not_found"}
        elif self.state.find_message(ts, channel) is None:
            body = {"ok": False, "error": "message_not_found"}
        else:
            link = f"{request.scheme}://{request.host}/archives/{channel}/p{ts.replace('.', '')}"
            body = {"ok": True, "channel": channel, "permalink": link}
        call = ApiCall("chat.getPermalink", params, request.method, request.content_type, token, self.state.clock())
        call.response = body
        self.state.record_call(call)
        return web.json_response(body)

    async def open_permalink(self, request: web.Request) -> web.Response:
        digits = request.match_info["p"].lstrip("p")
        ts = f"{digits[:-6]}.{digits[-6:]}" if len(digits) > 6 else digits
        raise web.HTTPFound(f"/#thread={request.match_info['channel']}:{ts}")

    def _exchange(self, params: Json) -> Json:
        client_id = str(params.get("client_id") or "")
        secret = self.clients.get(client_id)
        if secret is None:
            raise ApiError("invalid_client_id")
        if not hmac.compare_digest(secret, str(params.get("client_secret") or "")):
            raise ApiError("bad_client_secret")
        grant = self._grants.pop(str(params.get("code") or ""), None)  # single use
        if grant is None or grant.client_id != client_id or time.time() - grant.issued > CODE_TTL:
            raise ApiError("invalid_code")
        if params.get("redirect_uri") and params["redirect_uri"] != grant.redirect_uri:
            raise ApiError("bad_redirect_uri")
        access = f"xoxp-{secrets.token_hex(12)}"
        self.state.tokens[access] = grant.user
        claims = {**self._claims(grant.user), "iss": "https://slack.com", "aud": client_id,
                  "iat": int(time.time()), "exp": int(time.time()) + 3600, "auth_time": int(time.time())}
        if grant.nonce:
            claims["nonce"] = grant.nonce
        return {"access_token": access, "token_type": "Bearer", "id_token": _jwt(claims, secret)}

    def _claims(self, user_id: str) -> Json:
        user = self.state.users[user_id]
        return {
            "sub": user.id, "https://slack.com/user_id": user.id, "https://slack.com/team_id": self.state.team_id,
            "https://slack.com/team_domain": self.state.team_domain, "name": user.name.title(),
            "given_name": user.name.title(), "email": f"{user.name}@{self.state.team_domain}.example",
            "email_verified": True, "locale": "en-US",
        }

    def user_info(self, params: Json, caller: str) -> Json:
        if self.state.users[caller].bot_id:
            raise ApiError("invalid_auth")  # a bot token is not a person's sign-in
        return self._claims(caller)

    def users_conversations(self, params: Json, caller: str) -> Json:
        user = str(params.get("user") or caller)
        if user not in self.state.users:
            raise ApiError("user_not_found")
        types = set(str(params.get("types") or "public_channel").split(","))
        chans = []
        for chan in self.state.channels.values():
            kind = "im" if chan.is_im else "public_channel"
            if kind in types and user in self.members_of(chan.id) and caller in self.members_of(chan.id):
                chans.append(chan.to_api() | {"name": chan.name})
        page, meta = self.web_api._page(chans, params)
        return {"channels": page, **meta}

    def conversations_members(self, params: Json, caller: str) -> Json:
        channel = self.state.channels.get(str(params.get("channel") or ""))
        if channel is None:
            raise ApiError("channel_not_found")
        page, meta = self.web_api._page(self.members_of(channel.id), params)
        return {"members": page, **meta}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: Json, key: str) -> str:
    """An ``id_token`` signed with the client secret (HS256; Slack signs with RS256 keys it publishes)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"
