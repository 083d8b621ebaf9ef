"""What the inspector asks Slack: sign-in (OpenID Connect), channel membership, and links to threads.

All through slack_sdk's client on ``SLACK_API_URL`` (the local emulator in tests and the sandbox). Slack's
errors are translated once, here, into :class:`SlackUnavailable` or :class:`SignInFailed`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import ClientError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from .config import SlackSignIn

log = logging.getLogger("threadflow.inspector")

#: How long a person's channel list is reused before Slack is asked again.
MEMBERSHIP_TTL = 60.0


class SlackUnavailable(Exception):
    """Slack did not answer a question the inspector must have answered (fail closed: show nothing)."""


class SignInFailed(Exception):
    """Slack refused the sign-in (a stale or forged code, another workspace); the message says which."""


@dataclass(frozen=True)
class SlackIdentity:
    user: str
    team: str
    name: str


class SlackDirectory:
    """Membership and permalinks with the bot token; sign-in with the app's client id and secret."""

    def __init__(self, api_url: str, bot_token: str | None, sign_in: SlackSignIn | None = None) -> None:
        self.api_url = api_url
        self.bot = AsyncWebClient(token=bot_token, base_url=api_url) if bot_token else None
        self.sign_in = sign_in
        self._anonymous = AsyncWebClient(base_url=api_url)
        self._channels: dict[str, tuple[float, frozenset[str]]] = {}
        self._permalinks: dict[tuple[str, str], str] = {}
        self._team: str | None = None

    async def channels_of(self, user: str) -> frozenset[str]:
        """The channels ``user`` belongs to (``users.conversations``), cached for a minute."""
        cached = self._channels.get(user)
        if cached is not None and time.monotonic() - cached[0] < MEMBERSHIP_TTL:
            return cached[1]
        if self.bot is None:
            raise SlackUnavailable("no SLACK_BOT_TOKEN to ask Slack which channels you belong to")
        found: set[str] = set()
        cursor: str | None = None
        try:
            while True:
                resp = await self.bot.users_conversations(
                    user=user, types="public_channel,private_channel,mpim,im", limit=200, cursor=cursor,
                    exclude_archived=True,
                )
                found.update(str(c["id"]) for c in resp.get("channels") or [])
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except (SlackApiError, ClientError, TimeoutError) as exc:
            raise SlackUnavailable(f"Slack did not say which channels you belong to ({_why(exc)})") from exc
        channels = frozenset(found)
        self._channels[user] = (time.monotonic(), channels)
        return channels

    async def permalink(self, channel: str, ts: str) -> str | None:
        """A link to the message (the run's thread); None if Slack cannot give one right now."""
        key = (channel, ts)
        if key in self._permalinks:
            return self._permalinks[key]
        if self.bot is None:
            return None
        try:
            resp = await self.bot.chat_getPermalink(channel=channel, message_ts=ts)
        except (SlackApiError, ClientError, TimeoutError) as exc:
            log.info("no permalink for %s/%s: %s", channel, ts, _why(exc))
            return None
        link = resp.get("permalink")
        if isinstance(link, str):
            self._permalinks[key] = link
            return link
        return None

    async def team(self) -> str | None:
        """The bot's workspace: people from another workspace may not sign in."""
        if self._team is None and self.bot is not None:
            try:
                self._team = (await self.bot.auth_test()).get("team_id")
            except (SlackApiError, ClientError, TimeoutError) as exc:
                raise SlackUnavailable(f"Slack did not confirm the bot's workspace ({_why(exc)})") from exc
        return self._team

    async def identify(self, code: str, redirect_uri: str) -> SlackIdentity:
        """Exchange the sign-in code for the person's identity (``openid.connect.token`` + ``userInfo``)."""
        if self.sign_in is None:
            raise SignInFailed("Sign in with Slack is not configured.")
        try:
            # The client's id and secret as form fields (Slack takes either those or HTTP Basic; slack_sdk's
            # helper uses aiohttp's deprecated BasicAuth).
            token = await self._anonymous.api_call("openid.connect.token", data={
                "client_id": self.sign_in.client_id, "client_secret": self.sign_in.client_secret, "code": code,
                "redirect_uri": redirect_uri,
            })
            info = await self._anonymous.openid_connect_userInfo(token=token["access_token"])
        except SlackApiError as exc:
            raise SignInFailed(f"Slack refused the sign-in ({_why(exc)}); try again.") from exc
        except (ClientError, TimeoutError) as exc:
            raise SlackUnavailable(f"Slack did not answer the sign-in ({_why(exc)})") from exc
        user = info.get("https://slack.com/user_id") or info.get("sub")
        team = info.get("https://slack.com/team_id")
        if not user or not team:
            raise SignInFailed("Slack's answer did not say who you are; try again.")
        expected = await self.team()
        if expected is not None and team != expected:
            raise SignInFailed("You signed in to another Slack workspace than the bot's; pick the bot's workspace.")
        return SlackIdentity(user=str(user), team=str(team), name=str(info.get("name") or user))


def _why(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or "error")
    return type(exc).__name__
