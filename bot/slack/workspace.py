"""Which workspace a Slack call is for, and where its token comes from.

One bot process serves every workspace that installed the app. The workspace of the work at hand is set
once where the work enters: by a bolt middleware for each Slack request (from bolt's context), and by the
delivery service for each run it renders (from the run's record). Tasks a listener spawns inherit it
(asyncio copies context variables into new tasks). :class:`bot.slack.SlackClient` reads it to pick the
token (through a :class:`TokenSource`) and the pacing scope, so one workspace's rate limits never hold up
another's, and a call never goes out with another workspace's token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Workspace:
    """A Slack workspace (``team_id``), in an Enterprise Grid org (``enterprise_id``) or not."""

    team_id: str
    enterprise_id: str | None = None


_current: ContextVar[Workspace | None] = ContextVar("threadflow_slack_workspace", default=None)


def current_workspace() -> Workspace | None:
    return _current.get()


@contextmanager
def in_workspace(team_id: str, enterprise_id: str | None = None) -> Iterator[Workspace]:
    """Slack calls inside this block are made for (and with the token of) this workspace."""
    workspace = Workspace(team_id, enterprise_id or None)
    token = _current.set(workspace)
    try:
        yield workspace
    finally:
        _current.reset(token)


def set_workspace(team_id: str, enterprise_id: str | None = None) -> Workspace:
    """Set the workspace for the rest of the current task (a bolt request's task: see ``bot.middleware``)."""
    workspace = Workspace(team_id, enterprise_id or None)
    _current.set(workspace)
    return workspace


class TokenSource(Protocol):
    async def token_for(self, workspace: Workspace | None) -> str | None:
        """The bot token to call Slack with for ``workspace``; None when the app is not installed there."""
        ...
