"""Re-run from a step ("time travel"): which recorded results a new run may reuse.

A new run reuses every result recorded under the top-level nodes *before* the one that contains
``from_step``; the walk then executes from that node on (optionally with new input for the step).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from storage.records import RunProgress, RunRecord, StepResultRecord

from .errors import InvalidInput, UsageError
from .executor import BRANCH_PREFIX, ITEMS_PREFIX, join
from .graph import BranchNode, Node, StepNode, WorkflowNode
from .step import Step, parse_model
from .versions import describe_version
from .workflow import CommittedWorkflow, _walk, segment_node

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
    first = min(matches, key=lambda r: r.started_at or r.finished_at) if matches else None
    start_path = first.path if first else from_step
    # By path (nested workflows may each have a step of this id); by id alone only if the path names no step.
    step_def = wf.find_step_at(start_path)
    if step_def is None:
        # Moved onto a version where the step sits elsewhere (``gate`` now ``review/gate``): its path there.
        moved_to = step_path(wf, first.step_id if first else from_step)
        if moved_to is not None:
            start_path, step_def = moved_to, wf.find_step_at(moved_to)
        else:
            step_def = wf.find_step(from_step)
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
        _check_branches(wf, original, copied)
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


def _check_branches(wf: CommittedWorkflow, original: RunRecord, copied: list[StepResultRecord]) -> None:
    """Moving a run onto another version: a kept branch choice must name branches that version's branch has.

    The walk takes a kept choice as it is: one naming a branch the new version renamed or dropped would run no
    branch at all, silently. It is not evaluated again either: the results kept after it came from the branch the
    original took. The command says where to re-run from, as for a kept result that does not fit.
    (A kept foreach list needs no such check: its items go to the new body, whose steps check them.)
    """
    branches = dict(branch_paths(wf.root))
    for r in copied:
        if not r.path.startswith(BRANCH_PREFIX):
            continue
        at = "/".join(segment_node(s) for s in r.path[len(BRANCH_PREFIX):].split("/"))
        node = branches.get(at)
        chosen = [str(c) for c in (r.output or {}).get("chosen") or []]
        if node is None:
            continue  # no branch there now: nothing reads the choice (what the new version has there runs afresh)
        there = [n.id for _, n in node.branches]
        gone = [c for c in chosen if c not in there]
        if gone:
            where = describe_version(wf.version, wf.fingerprint)
            first = next((n.step.id for _, n in node_paths(node) if isinstance(n, StepNode)), None)
            instead = f"Re-run from {first!r} (the branch's first step) or an earlier step instead" if first else (
                f"Re-run from a step before {top_segment(at)!r} instead")
            raise UsageError(
                f"Run {original.id} cannot keep the branch it took at {at!r} on version {where} of {wf.id!r}: it "
                f"ran {', '.join(map(repr, gone))}, which that version's branch does not have (it has: "
                f"{', '.join(map(repr, there)) or 'none'}). {instead}, so the branch is chosen again."
            )


def step_path(wf: CommittedWorkflow, step_id: str) -> str | None:
    """The path of the step ``step_id`` in ``wf``'s tree, nested workflows included (``review/gate``); the first
    one in the tree's order when nested workflows each have a step of that id."""
    return next((path for path, node in node_paths(wf.root) if isinstance(node, StepNode) and node.step.id == step_id),
                None)


def branch_paths(root: Node) -> Iterator[tuple[str, BranchNode]]:
    """Every branch node of the tree, nested workflows included, with its path (no loop or foreach marks)."""
    for path, node in node_paths(root):
        if isinstance(node, BranchNode):
            yield path, node


def node_paths(root: Node, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every node under ``root`` with the path a run records it at (without loop and foreach marks), nested
    workflows' nodes included: a node's path is its workflow's path and its id."""
    for node in _walk(root)[1:]:  # (in one workflow: a nested one's nodes come from its WorkflowNode)
        path = join(prefix, node.id)
        yield path, node
        if isinstance(node, WorkflowNode):
            yield from node_paths(node.workflow.root, path)
