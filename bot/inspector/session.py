"""Who is looking: the signed session cookie, the viewer it names, and CSRF tokens.

The cookie is the session itself (JSON, HMAC-SHA256 signed with the inspector's secret, 12 hours), so any
replica with the same THREADFLOW_UI_SECRET can read it and nothing is stored server-side. It is
``HttpOnly`` and ``SameSite=Lax``; every state-changing request must also carry the session's CSRF token
(a hidden form field), and a request from another site is refused even before that is checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

COOKIE = "threadflow_ui"
MAX_AGE = 12 * 3600


@dataclass(frozen=True)
class Viewer:
    """An operator sees and may do everything; a Slack user sees their channels' runs and follows the rules."""

    kind: Literal["operator", "slack"]
    name: str
    user: str | None = None
    team: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def actor(self) -> str:
        """Who an action is recorded as (``by``): the Slack user id, or ``operator``."""
        return self.user or "operator"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "user": self.user, "team": self.team}

    @classmethod
    def from_json(cls, data: Any) -> Viewer | None:
        if not isinstance(data, dict) or data.get("kind") not in ("operator", "slack"):
            return None
        return cls(kind=data["kind"], name=str(data.get("name") or ""), user=data.get("user"), team=data.get("team"))


OPERATOR = Viewer(kind="operator", name="operator")


def token_digest(token: str) -> str:
    """What a session keeps of the operator token it was made with (never the token itself)."""
    return hashlib.sha256(b"threadflow-ui-token:" + token.encode()).hexdigest()[:32]


class Session:
    """The decoded cookie; ``changed`` sessions are written back on the response."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.changed = data is None
        if "csrf" not in self.data:
            self.data["csrf"] = secrets.token_urlsafe(24)
            self.data["iat"] = int(time.time())
            self.changed = True

    @property
    def csrf(self) -> str:
        return str(self.data["csrf"])

    @property
    def viewer(self) -> Viewer | None:
        return Viewer.from_json(self.data.get("viewer"))

    def sign_in(self, viewer: Viewer) -> None:
        """A new session for the person: a fresh CSRF token, nothing carried over from before sign-in."""
        self.data = {"csrf": secrets.token_urlsafe(24), "iat": int(time.time()), "viewer": viewer.to_json()}
        self.changed = True

    def bind_to_token(self, token: str) -> None:
        """An operator signed in with ``THREADFLOW_UI_TOKEN``: the session lasts only as long as that token."""
        self.data["tok"] = token_digest(token)

    def bound_to(self, token: str | None) -> bool:
        """False for an operator session made with a token that is no longer the configured one."""
        bound = self.data.get("tok")
        return bound is None or (token is not None and hmac.compare_digest(str(bound), token_digest(token)))

    def sign_out(self) -> None:
        self.data = {"csrf": secrets.token_urlsafe(24), "iat": int(time.time())}
        self.changed = True

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.changed = True

    def pop(self, key: str) -> Any:
        if key in self.data:
            self.changed = True
        return self.data.pop(key, None)

    def flash(self, message: str) -> None:
        self.set("flash", message[:500])

    def check_csrf(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


def encode(data: dict[str, Any], secret: bytes) -> str:
    body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    sig = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{sig}"


def decode(value: str | None, secret: bytes) -> dict[str, Any] | None:
    """The session in a cookie, or None when it is missing, forged or expired."""
    if not value or "." not in value:
        return None
    body, _, sig = value.rpartition(".")
    if not hmac.compare_digest(sig, hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    if not isinstance(data, dict) or time.time() - float(data.get("iat") or 0) > MAX_AGE:
        return None
    return data


def save(response: web.StreamResponse, session: Session, secret: bytes, *, secure: bool) -> None:
    response.set_cookie(COOKIE, encode(session.data, secret), max_age=MAX_AGE, httponly=True, samesite="Lax",
                        secure=secure, path="/")


def cross_site(request: web.Request, also: str | None = None) -> str | None:
    """Why a state-changing request looks like it came from another site (None if it does not).

    ``also``: the inspector's public address (behind a TLS proxy the request itself says ``http``).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = {f"{request.scheme}://{request.host}"}
    if also:
        allowed.add(also.rstrip("/"))
    if origin.rstrip("/") not in allowed:
        return f"Origin {origin} is not this inspector"
    return None


SESSION: web.RequestKey[Session] = web.RequestKey("threadflow_session", Session)
#: None while nobody is signed in (only the sign-in pages answer then).
VIEWER: web.RequestKey[Viewer | None] = web.RequestKey("threadflow_viewer", object)  # type: ignore[arg-type]
