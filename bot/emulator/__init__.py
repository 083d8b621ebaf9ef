"""Local Slack emulator: a fake Web API, signed deliveries to the bot, and observable state.

Used by the bot's tests (real HTTP, real slack_sdk/bolt) and by the ``threadflow dev`` sandbox.
"""

from .assistant import AssistantThread, AssistantView
from .delivery import DeliveryResult, sign
from .oauth import OAuthProvider, install_app
from .openid import OpenIdProvider
from .server import SlackEmulator, UserPost
from .state import (
    ApiCall,
    Change,
    Channel,
    Delivery,
    Ephemeral,
    Message,
    ResponseUrl,
    Subscription,
    User,
    View,
    WorkspaceState,
)
from .streams import Stream, Streams

__all__ = [
    "ApiCall",
    "AssistantThread",
    "AssistantView",
    "Change",
    "Channel",
    "Delivery",
    "DeliveryResult",
    "Ephemeral",
    "Message",
    "OAuthProvider",
    "OpenIdProvider",
    "ResponseUrl",
    "SlackEmulator",
    "Stream",
    "Streams",
    "Subscription",
    "User",
    "UserPost",
    "View",
    "WorkspaceState",
    "install_app",
    "sign",
]
