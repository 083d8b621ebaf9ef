"""What a Slack Web API call can end in, sorted by what the caller should do about it.

    SlackCallError           the call did not do what was asked
     ├── RateLimited          HTTP 429: wait ``retry_after`` seconds, then try again
     ├── Transient            5xx, timeouts, dropped connections: try again later with backoff
     └── Permanent            Slack refused for good (``code``): retrying the same call cannot help

``Transient.maybe_delivered`` says the request may have reached Slack before the failure (a timeout, a
connection dropped mid-answer, a 5xx to a post): a post retried blindly could appear twice.
"""

from __future__ import annotations

#: Error codes Slack answers that are worth retrying (outages and overload, not the request's fault).
TRANSIENT_CODES = frozenset({
    "internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited", "team_added_to_org",
})

#: Methods a repeat of which adds something again (a second message, a stream's text twice), and the answers that do
#: not prove Slack did nothing: a 5xx (a gateway's answer after the work was done) and Slack's own "it's possible
#: some aspect of the operation succeeded" codes. Such a failure ``maybe_delivered``, like a timeout.
NOT_IDEMPOTENT = frozenset({"chat.postMessage", "chat.startStream", "chat.appendStream"})
MAYBE_DONE_CODES = frozenset({"internal_error", "fatal_error"})

#: Codes that mean the app lost access to the workspace (token revoked, app uninstalled, account gone).
ACCESS_LOST_CODES = frozenset({
    "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "no_permission",
    "missing_scope", "team_access_not_granted", "ekm_access_denied",
})

#: Codes where a shorter or plainer message may still get through.
TOO_LARGE_CODES = frozenset({"msg_too_long", "invalid_blocks", "invalid_blocks_format", "too_many_attachments"})


class SlackCallError(Exception):
    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"Slack {method} failed: {message}")
        self.method = method


class RateLimited(SlackCallError):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(method, f"rate limited (retry after {retry_after:g} s)")
        self.retry_after = retry_after


class Transient(SlackCallError):
    """``maybe_delivered``: the request may have taken effect (see the module's docstring); ``answered``: Slack (or a
    gateway) answered with an error, rather than not at all."""

    def __init__(self, method: str, reason: str, *, maybe_delivered: bool = False, answered: bool = False) -> None:
        super().__init__(method, reason)
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        self.answered = answered


class Permanent(SlackCallError):
    def __init__(self, method: str, code: str) -> None:
        super().__init__(method, code)
        self.code = code

    @property
    def access_lost(self) -> bool:
        return self.code in ACCESS_LOST_CODES

    @property
    def too_large(self) -> bool:
        return self.code in TOO_LARGE_CODES


def describe_for_people(exc: SlackCallError, command: str = "/flow") -> str:
    """What to tell the person whose command could not be carried out, in one sentence that is true."""
    if isinstance(exc, RateLimited):
        return (f"Slack is rate-limiting me in this channel right now (retry after {exc.retry_after:g} s); "
                "nothing was started. Try again in a minute.")
    if isinstance(exc, Transient):
        return "Slack did not answer in time or is having trouble; nothing was started. Try again in a minute."
    assert isinstance(exc, Permanent)
    if exc.code in ("not_in_channel", "channel_not_found"):
        return "I could not post in this channel. Invite me with `/invite @threadflow` and try again."
    if exc.code == "is_archived":
        return "This channel is archived, so I cannot post in it."
    if exc.access_lost:
        return "My access to this workspace was revoked or is missing a permission; ask an admin to reinstall the app."
    return f"Slack refused my message ({exc.code}); nothing was started."


class NotInstalled(Permanent):
    """The app has no token for the workspace (never installed, uninstalled, tokens revoked): nothing is sent."""

    def __init__(self, method: str, team_id: str) -> None:
        super().__init__(method, "not_installed")
        self.team_id = team_id
