"""The inspector's configuration, and the rule that keeps it off the network without sign-in."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

if TYPE_CHECKING:  # (only a type here: ``bot.cli`` imports InspectorError without loading the settings' stack)
    from ..settings import Settings


class InspectorError(Exception):
    """The inspector cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class SlackSignIn:
    """Sign in with Slack (OpenID Connect): the app's client id and secret, on the Web API at ``api_url``."""

    client_id: str
    client_secret: str
    api_url: str

    @property
    def authorize_url(self) -> str:
        """Slack's consent page: ``https://slack.com/openid/connect/authorize`` for the real API URL."""
        return urljoin(self.api_url, "../openid/connect/authorize")


@dataclass
class InspectorConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    #: THREADFLOW_UI_TOKEN: one operator who may see and do everything.
    token: str | None = None
    slack: SlackSignIn | None = None
    #: The bot token and Web API the inspector reads channel membership and thread links with.
    bot_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    #: Sign-in is offered but not required (the sandbox: try signing in as alice or bob).
    sign_in_optional: bool = False
    #: THREADFLOW_UI_URL: the inspector's public address (for the sign-in redirect); else the request's.
    public_url: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: THREADFLOW_APPROVERS, as the Slack buttons use them.
    approvers: tuple[str, ...] = ()
    #: Why Sign in with Slack is off although SLACK_CLIENT_ID is set (installs through OAuth, no bot token).
    slack_off: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, host: str | None = None, port: int | None = None) -> InspectorConfig:
        slack, slack_off = None, None
        if settings.oauth_enabled and settings.slack_bot_token is None:
            # The client id and secret are the installs' (many workspaces): no single bot token to ask Slack which
            # channels a person is in, or which workspace is the bot's. Nobody signs in with Slack (fail closed:
            # a person sees no run, and no stranger from another workspace may start one); operators still do.
            slack_off = ("Sign in with Slack is off: installs come through OAuth and the inspector needs "
                         "SLACK_BOT_TOKEN to ask Slack which channels a person belongs to")
        elif settings.slack_client_id or settings.slack_client_secret:
            if not (settings.slack_client_id and settings.slack_client_secret):
                raise InspectorError("Sign in with Slack needs both SLACK_CLIENT_ID and SLACK_CLIENT_SECRET "
                                     "(from the Slack app's Basic Information page).")
            if settings.slack_bot_token is None:
                raise InspectorError("Sign in with Slack needs SLACK_BOT_TOKEN too: the inspector asks Slack "
                                     "which channels a person belongs to.")
            slack = SlackSignIn(settings.slack_client_id, settings.slack_client_secret.get_secret_value(),
                                settings.slack_api_url)
        token = settings.ui_token.get_secret_value().strip() if settings.ui_token else None
        return cls(
            host=host or settings.ui_host, port=settings.ui_port if port is None else port, token=token or None,
            slack=slack, bot_token=settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None,
            slack_api_url=settings.slack_api_url, public_url=settings.ui_url,
            secret=settings.ui_secret.get_secret_value().encode() if settings.ui_secret else secrets.token_bytes(32),
            approvers=tuple(settings.approvers), slack_off=slack_off,
        )

    @property
    def sign_in_configured(self) -> bool:
        return self.token is not None or self.slack is not None

    @property
    def sign_in_required(self) -> bool:
        """Configured sign-in is required everywhere (a proxy in front of a loopback address is exposure too)."""
        return self.sign_in_configured and not self.sign_in_optional

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine when nobody has to sign in."""
        if not is_loopback(self.host) and not self.sign_in_required:
            slack = "" if self.slack_off else " or SLACK_CLIENT_ID and SLACK_CLIENT_SECRET (Sign in with Slack)"
            raise InspectorError(
                f"The inspector will not listen on {self.host or 'every address'} without sign-in: anyone who can "
                f"reach it could read every run and approve steps. Set THREADFLOW_UI_TOKEN (one operator){slack}, "
                "or keep --host 127.0.0.1." + (f" {self.slack_off}." if self.slack_off else "")
            )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; never 0.0.0.0 or an empty host (every address)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
