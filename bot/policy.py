"""Who may act on a run: one rule for the Slack buttons, the CLI-facing bot commands and the run inspector."""

from __future__ import annotations

from collections.abc import Iterable

from storage.records import RunRecord
from workflows import Engine


def approvers_for(engine: Engine, run: RunRecord, path: str, configured: Iterable[str] = ()) -> set[str]:
    """Who may decide the suspended step at ``path`` (the suspension's path, ``release/approve``): the step's
    approvers, else those of the workflows around it (innermost first, the run's own workflow last), else the
    configured ones (``THREADFLOW_APPROVERS``), else the person who started the run.

    The step is looked up by its path, never by its id alone: two nested workflows may each have a step
    ``approve``, and each is decided by its own people. It is read from the run's own workflow version: a
    newer version registered beside it must not change who may decide a run that started on the old one. A
    version not registered here gives nobody but the configured approvers and the starter a say (its resume
    fails with a clear error anyway)."""
    started_by = run.started_by
    wf = engine.workflow_of(run)
    step = wf.find_step_at(path) if wf else None
    workflow_approvers = wf.option_at(path, "approvers") if wf else None
    for candidates in (step.approvers if step else None, workflow_approvers, tuple(configured)):
        if candidates:
            return set(candidates)
    return {started_by} if started_by else set()


def may_cancel(user: str, started_by: str | None, configured: Iterable[str] = ()) -> bool:
    """The configured approvers and the person who started a run may cancel it."""
    return user in set(configured) | ({started_by} if started_by else set())
