"""Who may act on a run: one rule for the Slack buttons, the CLI-facing bot commands and the run inspector."""

from __future__ import annotations

from collections.abc import Iterable

from storage.records import RunRecord
from workflows import Engine


def approvers_for(engine: Engine, run: RunRecord, step_id: str, configured: Iterable[str] = ()) -> set[str]:
    """Who may decide a suspended step: the step's approvers, else the workflow's, else the configured
    ones (``THREADFLOW_APPROVERS``), else the person who started the run.

    The step is read from the run's own workflow version: a newer version registered beside it must not
    change who may decide a run that started on the old one. A version not registered here gives nobody
    but the configured approvers and the starter a say (its resume fails with a clear error anyway)."""
    started_by = run.started_by
    wf = engine.workflow_of(run)
    step = wf.find_step(step_id) if wf else None
    for candidates in (step.approvers if step else None, wf.options.approvers if wf else None, tuple(configured)):
        if candidates:
            return set(candidates)
    return {started_by} if started_by else set()


def may_cancel(user: str, started_by: str | None, configured: Iterable[str] = ()) -> bool:
    """The configured approvers and the person who started a run may cancel it."""
    return user in set(configured) | ({started_by} if started_by else set())
