"""Re-run from a step ("time travel"): which recorded results a new run may reuse.

A new run reuses every result recorded under the top-level nodes *before* the one that contains
``from_step``; the walk then executes from that node on (optionally with new input for the step).
"""

from __future__ import annotations

import re
from typing import Any

from storage.records import RunProgress, RunRecord, StepResultRecord

from .errors import UsageError
from .step import Step
from .workflow import CommittedWorkflow

_SEGMENT_SUFFIX = re.compile(r"(#\d+|\[\d+\])+$")


def top_segment(path: str) -> str:
    """``validate#2/check`` -> ``validate``; ``review[3]/approve`` -> ``review``."""
    return _SEGMENT_SUFFIX.sub("", path.split("/", 1)[0])


def plan_rerun(
    wf: CommittedWorkflow, original: RunRecord, progress: RunProgress, from_step: str
) -> tuple[list[StepResultRecord], str, Step[Any, Any] | None]:
    """Return (results to copy, the path re-run starts at, the step definition)."""
    matches = [r for r in progress.results.values() if r.kind == "step" and (r.path == from_step or r.step_id == from_step)]
    step_def = wf.find_step(from_step)
    if not matches and step_def is None:
        known = ", ".join(sorted({r.step_id for r in progress.results.values() if r.kind == "step"})) or "none"
        raise UsageError(
            f"Run {original.id} has no step {from_step!r} to re-run from. Steps it ran: {known}."
        )
    start_path = min(matches, key=lambda r: r.started_at or r.finished_at).path if matches else from_step
    target = top_segment(start_path)
    order: dict[str, int] = {}
    for index, node in enumerate(wf.root.children):
        ids = {node.id, *node.step_ids()}
        for i in ids:
            order.setdefault(i, index)
    if target not in order:
        raise UsageError(f"Step {from_step!r} is not a step of workflow {wf.id!r}.")
    cutoff = order[target]
    copied = [
        r for r in progress.results.values()
        if not r.path.startswith("__") and order.get(top_segment(r.path), cutoff) < cutoff
    ]
    return copied, start_path, step_def
