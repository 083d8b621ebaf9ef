"""Re-run from a step ("time travel"): which recorded results a new run may reuse.

A new run reuses every result recorded under the top-level nodes *before* the one that contains
``from_step``; the walk then executes from that node on (optionally with new input for the step).
"""

from __future__ import annotations

from typing import Any

from storage.records import RunProgress, RunRecord, StepResultRecord

from .errors import InvalidInput, UsageError
from .executor import BRANCH_PREFIX, ITEMS_PREFIX
from .step import Step, parse_model
from .versions import describe_version
from .workflow import CommittedWorkflow, segment_node

#: Records of what the walk decided once and reuses (a branch's choice, a foreach's list), by the node's path.
_DECISIONS = (BRANCH_PREFIX, ITEMS_PREFIX)


def top_segment(path: str) -> str:
    """``validate#2/check`` -> ``validate``; ``review[3]/approve`` -> ``review``."""
    return segment_node(path.split("/", 1)[0])


def recorded_at(path: str) -> str | None:
    """The path in the workflow a result record is of: a step's own; the node's for a decision (``__branch__/x``:
    ``x``); None for what a re-run does not keep (a re-run's new input, failed attempts)."""
    if not path.startswith("__"):
        return path
    for prefix in _DECISIONS:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


def plan_rerun(
    wf: CommittedWorkflow, original: RunRecord, progress: RunProgress, from_step: str
) -> tuple[list[StepResultRecord], str, Step[Any, Any] | None]:
    """Return (results to copy, the path re-run starts at, the step definition)."""
    matches = [r for r in progress.results.values() if r.kind == "step" and (r.path == from_step or r.step_id == from_step)]
    start_path = min(matches, key=lambda r: r.started_at or r.finished_at).path if matches else from_step
    # By path (nested workflows may each have a step of this id); by id alone only if the path names no step.
    step_def = wf.find_step_at(start_path) or wf.find_step(from_step)
    if not matches and step_def is None:
        known = ", ".join(sorted({r.step_id for r in progress.results.values() if r.kind == "step"})) or "none"
        raise UsageError(
            f"Run {original.id} has no step {from_step!r} to re-run from. Steps it ran: {known}."
        )
    target = top_segment(start_path)
    order: dict[str, int] = {}
    for index, node in enumerate(wf.root.children):
        ids = {node.id, *node.step_ids()}
        for i in ids:
            order.setdefault(i, index)
    if target not in order:
        raise UsageError(f"Step {from_step!r} is not a step of workflow {wf.id!r}.")
    cutoff = order[target]
    # The branches taken and the lists picked before the cutoff are kept too: evaluated again (the world changed
    # since), the re-run could take another branch than the results it keeps came from.
    copied = [
        r for r in progress.results.values()
        if (at := recorded_at(r.path)) is not None and order.get(top_segment(at), cutoff) < cutoff
    ]
    if original.workflow_fingerprint != wf.fingerprint:
        _check_fit(wf, original, copied)
    return copied, start_path, step_def


def _check_fit(wf: CommittedWorkflow, original: RunRecord, copied: list[StepResultRecord]) -> None:
    """Moving a run onto another version: the results it keeps must fit that version's steps."""
    for r in sorted(copied, key=lambda r: r.finished_at):
        step = wf.find_step_at(r.path) if r.kind == "step" else None
        if step is None or step.output is None:
            continue
        try:
            parse_model(step.output, r.output, f"recorded output of step {r.path!r}")
        except InvalidInput as exc:
            where = describe_version(wf.version, wf.fingerprint)
            raise UsageError(
                f"Run {original.id} cannot keep its result of step {r.path!r} on version {where} of {wf.id!r}: "
                f"{exc} Re-run from {top_segment(r.path)!r} (or an earlier step) instead."
            ) from None
