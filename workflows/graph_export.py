"""A committed workflow's tree exported as a graph of nodes and edges, for drawing (the run inspector).

Each node that shows recorded work has a ``key``: the path of its step instances with loop iterations and
foreach items left out (``terraform-round#2/validate`` and ``terraform-round#0/validate`` both have the key
``terraform-round/validate``). :func:`path_key` makes that key from a run's path, so a run's step statuses
find their node. Loops, foreach and nested workflows are clusters (``parent``) around their body.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from .graph import (
    BranchNode,
    ForeachNode,
    LoopNode,
    MapNode,
    Node,
    ParallelNode,
    SequenceNode,
    SleepNode,
    StepNode,
    WaitForEventNode,
    WorkflowNode,
)
from .workflow import CommittedWorkflow

NodeKind = Literal[
    "start", "end", "step", "agent", "approval", "workflow", "parallel", "branch", "join", "loop", "foreach",
    "map", "sleep", "wait",
]

_INSTANCE = re.compile(r"(#\d+|\[\d+\])(?=/|$)")


def path_key(path: str) -> str:
    """The graph key of a step instance's path: ``review[3]/approve`` -> ``review/approve``."""
    return _INSTANCE.sub("", path)


class GraphNode(BaseModel):
    id: str
    kind: NodeKind
    label: str
    #: The path key of the step instances this node shows (None for nodes that record nothing).
    key: str | None = None
    #: The cluster (loop, foreach, nested workflow) this node is drawn inside.
    parent: str | None = None
    detail: str | None = None


class GraphEdge(BaseModel):
    source: str
    target: str
    label: str | None = None
    #: The edge back to the start of a loop's body (the next iteration).
    back: bool = False


class WorkflowGraph(BaseModel):
    workflow_id: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]

    def keys(self) -> set[str]:
        return {n.key for n in self.nodes if n.key is not None}


def workflow_graph(wf: CommittedWorkflow) -> WorkflowGraph:
    """The workflow as a graph: start -> its nodes in order (fan-out and join for parallel/branch) -> end."""
    builder = _Builder()
    start = builder.add(GraphNode(id="__start__", kind="start", label="start"))
    entries, exits = builder.build(wf.root, "", None)
    end = builder.add(GraphNode(id="__end__", kind="end", label="end"))
    builder.connect([start], entries)
    builder.connect(exits, [end])
    return WorkflowGraph(workflow_id=wf.id, nodes=builder.nodes, edges=builder.edges)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[GraphNode] = []
        self.edges: list[GraphEdge] = []

    def add(self, node: GraphNode) -> str:
        self.nodes.append(node)
        return node.id

    def connect(self, sources: list[str], targets: list[str], label: str | None = None, *, back: bool = False) -> None:
        for s in sources:
            for t in targets:
                self.edges.append(GraphEdge(source=s, target=t, label=label, back=back))

    def build(self, node: Node, prefix: str, parent: str | None) -> tuple[list[str], list[str]]:
        """Add ``node`` (under path ``prefix``); return the ids edges should enter and leave it by."""
        path = _join(prefix, node.id)
        if isinstance(node, StepNode):
            step = node.step
            agent = step.metadata.get("agent") if step.metadata else None
            kind: NodeKind = "approval" if step.suspend is not None else "agent" if agent else "step"
            detail = f"agent {agent}" if agent else step.description
            nid = self.add(GraphNode(id=path, kind=kind, label=step.id, key=path, parent=parent, detail=detail))
            return [nid], [nid]
        if isinstance(node, SequenceNode):
            first: list[str] = []
            last: list[str] = []
            for i, child in enumerate(node.children):
                entries, exits = self.build(child, prefix, parent)
                if i == 0:
                    first = entries
                else:
                    self.connect(last, entries)
                last = exits
            return first, last
        if isinstance(node, WorkflowNode):
            cluster = self.add(GraphNode(id=path, kind="workflow", label=node.workflow.id, key=path, parent=parent,
                                         detail=node.workflow.description))
            return self.build(node.workflow.root, path, cluster)
        if isinstance(node, ParallelNode | BranchNode):
            is_branch = isinstance(node, BranchNode)
            children = [n for _, n in node.branches] if isinstance(node, BranchNode) else node.children
            fork = self.add(GraphNode(id=path, kind="branch" if is_branch else "parallel",
                                      label="branch" if is_branch else "parallel", parent=parent,
                                      detail="every branch whose condition holds" if is_branch else "all at once"))
            join = self.add(GraphNode(id=f"{path}/__join__", kind="join", label="", parent=parent))
            for child in children:
                entries, exits = self.build(child, prefix, parent)
                self.connect([fork], entries, "if" if is_branch else None)
                self.connect(exits, [join])
            return [fork], [join]
        if isinstance(node, LoopNode):
            word = "until" if node.until else "while"
            cluster = self.add(GraphNode(
                id=f"{path}/__loop__", kind="loop", label=f"repeat {word} condition", parent=parent,
                detail=f"at most {node.max_iterations} iterations", key=None,
            ))
            entries, exits = self.build(node.body, prefix, cluster)
            self.connect(exits, entries, "next iteration", back=True)
            return entries, exits
        if isinstance(node, ForeachNode):
            cluster = self.add(GraphNode(
                id=f"{path}/__foreach__", kind="foreach", label="for each item", parent=parent,
                detail=f"{node.concurrency} at a time",
            ))
            return self.build(node.body, prefix, cluster)
        if isinstance(node, MapNode):
            nid = self.add(GraphNode(id=path, kind="map", label=node.id, parent=parent, detail="reshapes the data"))
            return [nid], [nid]
        if isinstance(node, SleepNode):
            detail = f"sleep {node.seconds:g} s" if node.seconds is not None else "sleep until a time"
            nid = self.add(GraphNode(id=path, kind="sleep", label=node.id, key=path, parent=parent, detail=detail))
            return [nid], [nid]
        if isinstance(node, WaitForEventNode):
            nid = self.add(GraphNode(id=path, kind="wait", label=node.id, key=path, parent=parent,
                                     detail=f"waits for event {node.event!r}"))
            return [nid], [nid]
        raise TypeError(f"unknown node {node!r}")
