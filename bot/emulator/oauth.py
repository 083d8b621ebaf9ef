"""Installing an app through OAuth, as the emulator's Slack serves it (``oauth.v2.access``, token rotation).

- ``GET /oauth/v2/authorize?client_id&scope&state&redirect_uri[&team&user&org_wide=1]``: Slack's consent
  page; here the person (``user``, default ``U0ALICE``) in workspace ``team`` (default: the first one)
  clicks "Allow" at once, and is redirected to ``redirect_uri`` (or the app's registered one) with ``code``
  and ``state``. ``org_wide=1`` installs on the whole Enterprise Grid org of that workspace.
- ``POST /api/oauth.v2.access`` (client id and secret as HTTP Basic or form fields): exchanges the code,
  once, for a bot token of that workspace; with token rotation on, the token expires (``expires_in``) and
  comes with a ``refresh_token``; ``grant_type=refresh_token`` trades a refresh token (once) for a new pair.
  An expired token gets ``token_expired`` from every method.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from .state import Json

if TYPE_CHECKING:
    from .server import SlackEmulator

CODE_TTL = 600.0


@dataclass
class OAuthApp:
    client_id: str
    client_secret: str
    redirect_url: str | None = None
    token_rotation: bool = False
    expires_in: int = 43200
    scopes: list[str] = field(default_factory=list)


@dataclass
class _Code:
    client_id: str
    team_id: str
    user: str
    redirect_uri: str | None
    scopes: str
    org_wide: bool
    issued: float


@dataclass
class Grant:
    """A bot token one install produced (the latest of its rotation chain)."""

    client_id: str
    team_id: str
    org_wide: bool
    scopes: str
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None


class OAuthProvider:
    def __init__(self, emulator: SlackEmulator) -> None:
        self.emulator = emulator
        self.apps: dict[str, OAuthApp] = {}
        self._codes: dict[str, _Code] = {}
        self.grants: list[Grant] = []
        #: token -> when it expires (rotating tokens only).
        self.expiry: dict[str, float] = {}

    def register_app(self, client_id: str, client_secret: str, *, redirect_url: str | None = None,
                     token_rotation: bool = False, expires_in: int = 43200) -> OAuthApp:
        app = OAuthApp(client_id, client_secret, redirect_url, token_rotation, expires_in)
        self.apps[client_id] = app
        return app

    def install(self, app: web.Application) -> None:
        app.router.add_get("/oauth/v2/authorize", self.authorize)

    # -- the consent page --------------------------------------------------------------------------
    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        app = self.apps.get(q.get("client_id", ""))
        if app is None:
            return web.Response(status=400, text="invalid_client_id: no app with this client_id")
        redirect_uri = q.get("redirect_uri") or app.redirect_url
        if not redirect_uri:
            return web.Response(status=400, text="bad_redirect_uri: the app has no redirect URL")
        if app.redirect_url and q.get("redirect_uri") and q["redirect_uri"] != app.redirect_url:
            return web.Response(status=400, text="bad_redirect_uri: does not match the app's redirect URL")
        workspace = self.emulator.workspace(q.get("team") or None)
        user = q.get("user") or "U0ALICE"
        if user not in workspace.state.users:
            return web.Response(status=400, text=f"no user {user} in workspace {workspace.state.team_id}")
        org_wide = q.get("org_wide") in ("1", "true")
        if org_wide and not workspace.state.enterprise_id:
            return web.Response(status=400, text="org_wide needs a workspace in an Enterprise Grid org")
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Code(app.client_id, workspace.state.team_id, user, q.get("redirect_uri"),
                                  q.get("scope", ""), org_wide, time.time())
        sep = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(f"{redirect_uri}{sep}{urlencode({'code': code, 'state': q.get('state', '')})}")

    # -- oauth.v2.access ----------------------------------------------------------------------------
    def _client(self, request_headers: Any, params: Json) -> OAuthApp | None:
        client_id, client_secret = params.get("client_id"), params.get("client_secret")
        auth = request_headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return None
        app = self.apps.get(str(client_id or ""))
        if app is None or not secrets.compare_digest(app.client_secret, str(client_secret or "")):
            return None
        return app

    def access(self, headers: Any, params: Json) -> Json:
        app = self._client(headers, params)
        if app is None:
            return {"ok": False, "error": "invalid_client"}
        if params.get("grant_type") == "refresh_token":
            return self._refresh(app, str(params.get("refresh_token") or ""))
        code = self._codes.pop(str(params.get("code") or ""), None)
        if code is None or code.client_id != app.client_id or time.time() - code.issued > CODE_TTL:
            return {"ok": False, "error": "invalid_code"}
        if code.redirect_uri and params.get("redirect_uri") != code.redirect_uri:
            return {"ok": False, "error": "bad_redirect_uri"}
        grant = Grant(app.client_id, code.team_id, code.org_wide, code.scopes, "")
        self._issue(app, grant)
        self.grants.append(grant)
        out = self._token_answer(grant)
        out["authed_user"] = {"id": code.user}
        return out

    def _refresh(self, app: OAuthApp, refresh_token: str) -> Json:
        grant = next((g for g in self.grants if g.refresh_token and g.client_id == app.client_id
                      and secrets.compare_digest(g.refresh_token, refresh_token)), None)
        if grant is None:
            return {"ok": False, "error": "invalid_refresh_token"}
        self._issue(app, grant)  # the old access token works until it expires; the refresh token is used up
        return self._token_answer(grant)

    def _issue(self, app: OAuthApp, grant: Grant) -> None:
        workspace = self.emulator.workspace(grant.team_id)
        if app.token_rotation:
            token = f"xoxe.xoxb-{grant.team_id}-{secrets.token_hex(12)}"
            grant.refresh_token = f"xoxe-1-{secrets.token_hex(16)}"
            grant.expires_at = time.time() + app.expires_in
            self.expiry[token] = grant.expires_at
        else:
            token = f"xoxb-{grant.team_id}-{secrets.token_hex(12)}"
        grant.access_token = token
        workspace.state.tokens[token] = workspace.state.bot_user_id

    def _token_answer(self, grant: Grant) -> Json:
        state = self.emulator.workspace(grant.team_id).state
        enterprise = ({"id": state.enterprise_id, "name": f"{state.enterprise_id} org"}
                      if state.enterprise_id else None)
        out: Json = {"ok": True, "access_token": grant.access_token, "token_type": "bot", "scope": grant.scopes,
                     "bot_user_id": state.bot_user_id, "app_id": state.app_id,
                     "team": None if grant.org_wide else {"id": state.team_id, "name": state.team_domain},
                     "enterprise": enterprise, "is_enterprise_install": grant.org_wide}
        if grant.refresh_token is not None and grant.expires_at is not None:
            out["refresh_token"] = grant.refresh_token
            out["expires_in"] = max(0, int(grant.expires_at - time.time()))
        return out

    def expired(self, token: str) -> bool:
        at = self.expiry.get(token)
        return at is not None and time.time() >= at

    def revoke(self, team_id: str) -> None:
        """The workspace's tokens stop working (uninstall, revocation)."""
        state = self.emulator.workspace(team_id).state
        for grant in [g for g in self.grants if g.team_id == team_id]:
            self.grants.remove(grant)
        state.tokens.clear()


async def install_app(bot_base_url: str, team: str, *, user: str = "U0ALICE", org_wide: bool = False) -> str:
    """Install the app the way a person does in a browser: "Add to Slack" on the bot's ``/slack/install``
    page, "Allow" on the emulator's authorize page (as ``user`` of ``team``), back to ``/slack/oauth_redirect``
    with the code and the state cookie. Returns the bot's closing page; raises when any step fails."""
    import html
    import re

    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bot_base_url}/slack/install") as resp:
            page = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"/slack/install answered HTTP {resp.status}")
            cookie = resp.headers.get("Set-Cookie", "").split(";")[0]
        match = re.search(r'href="([^"]*oauth/v2/authorize[^"]*)"', page)
        if match is None:
            raise RuntimeError("no Add to Slack link on /slack/install")
        authorize = html.unescape(match.group(1)) + "&" + urlencode(
            {"team": team, "user": user, **({"org_wide": "1"} if org_wide else {})})
        async with http.get(authorize, allow_redirects=False) as resp:
            if resp.status != 302:
                raise RuntimeError(f"the authorize page refused: {await resp.text()}")
            back = resp.headers["Location"]
        async with http.get(back, headers={"Cookie": cookie}, allow_redirects=False) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"/slack/oauth_redirect answered HTTP {resp.status}")
            return text
