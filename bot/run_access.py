"""Who may see and act on a run from Slack: the people who can see the channel it was started in.

A run belongs to the workspace (and Enterprise Grid org) and the channel it was started in. A request about
it (``/flow status``, ``runs``, ``cancel``, an Approve click) is answered only when it comes

- from the same workspace (for an org-wide install: the same org), and
- from the run's own channel, or from a person the bot can verify is a member of that channel
  (``conversations.members``, cached briefly). When the bot cannot ask (a channel it is not in, Slack
  refusing), only requests from the run's own channel count.

Everywhere else the run does not exist: the answer is word for word the one for an id nobody ever used
(:func:`no_such_run`), so it leaks nothing. Runs with no Slack channel (started from the CLI without one)
are not visible from Slack at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from storage.slack_store import SlackRun, SlackStore

from .slack import SlackCallError, SlackClient
from .slack.workspace import in_workspace

log = logging.getLogger("threadflow.bot.access")

#: How long a channel's member list is reused before Slack is asked again.
MEMBERSHIP_TTL = 60.0
MAX_CACHED_CHANNELS = 10_000

ClientFor = Callable[[str, "str | None"], Awaitable["SlackClient | None"]]


class Requester(BaseModel):
    """Who asks about runs, and from where (a slash command, a click, a message)."""

    model_config = ConfigDict(frozen=True)

    team_id: str
    channel_id: str
    user_id: str
    enterprise_id: str | None = None


def no_such_run(run_id: str, command: str = "/flow") -> str:
    """The one answer for a run id that does not exist and for a run the person may not see."""
    shown = run_id.replace("`", "'")[:64]
    return (f":warning: Run '{shown}' does not exist here (no such run in the channels you can see). "
            f"List the runs you can see with `{command} runs`.")


class Placed(Protocol):
    """Something that belongs to a channel of a workspace: a run's Slack record, a schedule."""

    @property
    def team_id(self) -> str | None: ...
    @property
    def enterprise_id(self) -> str | None: ...
    @property
    def channel_id(self) -> str | None: ...


def same_workspace(run: Placed, who: Requester) -> bool:
    """The request comes from the run's workspace, or from its Enterprise Grid org when both are in one."""
    if run.enterprise_id and who.enterprise_id:
        return run.enterprise_id == who.enterprise_id
    return bool(run.team_id) and run.team_id == who.team_id


class RunAccess:
    """The isolation rule above, with a short cache of channel members per workspace."""

    def __init__(self, store: SlackStore, client_for: ClientFor, *, ttl: float = MEMBERSHIP_TTL) -> None:
        self.store = store
        self.client_for = client_for
        self.ttl = ttl
        self._members: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}

    async def visible_run(self, who: Requester, run_id: str) -> SlackRun | None:
        """The run's Slack record when ``who`` may see it; None when it does not exist or they may not."""
        run = await self.store.get_run(run_id)
        if run is None or not await self.may_see(who, run):
            return None
        return run

    async def visible_runs(self, who: Requester, *, limit: int = 15, scan: int = 200) -> list[SlackRun]:
        """The newest runs ``who`` may see, among the workspace's ``scan`` newest."""
        shown: list[SlackRun] = []
        for run in await self.store.recent_runs(who.team_id, who.enterprise_id, limit=scan):
            if await self.may_see(who, run):
                shown.append(run)
                if len(shown) >= limit:
                    break
        return shown

    async def may_see(self, who: Requester, run: Placed) -> bool:
        """``who`` may see what belongs to ``run``'s channel (a run, a schedule); nothing without a channel."""
        if not who.user_id or not who.channel_id or not run.channel_id or not same_workspace(run, who):
            return False
        if run.channel_id == who.channel_id:
            return True
        members = await self._members_of(run)
        return members is not None and who.user_id in members

    async def _members_of(self, run: Placed) -> frozenset[str] | None:
        """The channel's members, or None when the bot cannot find out (then only the channel itself sees)."""
        assert run.team_id is not None and run.channel_id is not None  # may_see checked both
        key = (run.enterprise_id or run.team_id, run.channel_id)
        cached = self._members.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        members: frozenset[str] | None
        client = await self.client_for(run.team_id, run.enterprise_id)
        if client is None:
            members = None  # the workspace uninstalled the app: nobody can be verified
        else:
            try:
                with in_workspace(run.team_id, run.enterprise_id):
                    members = await client.channel_members(run.channel_id)
            except SlackCallError as exc:
                log.info("cannot check who is in channel %s (%s); its runs show only there", run.channel_id, exc)
                members = None
        if len(self._members) >= MAX_CACHED_CHANNELS:
            self._members.clear()  # a bounded cache: asking Slack again is always correct
        self._members[key] = (now, members)
        return members
