"""Who may see which runs, and who may act on them: the same rules as in Slack.

- An operator (no sign-in on 127.0.0.1, or THREADFLOW_UI_TOKEN) sees every run and may do everything, as
  the ``threadflow`` CLI may.
- A person signed in with Slack sees the runs started in the Slack channels they belong to, in their own
  workspace (the same rule as ``/flow status`` in Slack, :mod:`bot.run_access`), plus runs they started themselves (from the inspector's forms). Any other run is "not found" for them (404), so
  they cannot even learn that it exists.
- Approving or rejecting a suspension follows ``bot.policy.approvers_for`` (the step's approvers, else the
  workflow's around it, else THREADFLOW_APPROVERS, else the person who started the run), as the Slack buttons do.
  Cancel, re-run and send-event follow ``bot.policy.may_cancel`` (the approvers and the run's starter).
"""

from __future__ import annotations

from storage.records import RunRecord
from storage.run_queries import RunQueries, Visibility
from workflows import Engine

from ..policy import approvers_for, may_cancel
from .session import Viewer
from .slack import SlackDirectory


class Access:
    def __init__(self, engine: Engine, queries: RunQueries, directory: SlackDirectory | None,
                 approvers: tuple[str, ...]) -> None:
        self.engine = engine
        self.queries = queries
        self.directory = directory
        self.approvers = approvers

    async def visibility(self, viewer: Viewer) -> Visibility | None:
        """The runs ``viewer`` may see (None: all of them). Raises SlackUnavailable rather than guess."""
        if viewer.is_operator:
            return None
        channels: frozenset[str] = frozenset()
        if self.directory is not None and viewer.user:
            channels = await self.directory.channels_of(viewer.user)
        return Visibility(channels=channels, user=viewer.user, team=viewer.team)

    async def can_see(self, viewer: Viewer, run: RunRecord) -> bool:
        seen = await self.visibility(viewer)
        if seen is None:
            return True
        if seen.user and run.started_by == seen.user:
            return True
        place = (await self.queries.places_of([run.id])).get(run.id)
        if place is None:
            return False
        team, channel = place
        return channel in seen.channels and (not seen.team or team == seen.team)

    def deciders(self, run: RunRecord, path: str) -> set[str]:
        """Who may decide the suspension at ``path`` (its path, not its step id: nested workflows may share ids)."""
        return approvers_for(self.engine, run, path, self.approvers)

    def may_decide(self, viewer: Viewer, run: RunRecord, path: str) -> bool:
        return viewer.is_operator or (viewer.user is not None and viewer.user in self.deciders(run, path))

    def may_act(self, viewer: Viewer, run: RunRecord) -> bool:
        """Cancel, re-run from a step, send an event."""
        return viewer.is_operator or (viewer.user is not None and may_cancel(viewer.user, run.started_by, self.approvers))
