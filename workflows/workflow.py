"""The workflow builder: ``Workflow(...).then(a).parallel([b, c]).commit()``.

``commit()`` freezes the builder into a :class:`CommittedWorkflow` (a tree of nodes) after checking it:
duplicate step ids, steps that are not steps, and schema mismatches between consecutive nodes, each with
an error that says what to change.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union

from pydantic import BaseModel

from .errors import DefinitionError, InvalidInput
from .graph import (
    BranchNode,
    Condition,
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
    WorkflowOptions,
)
from .step import RetryPolicy, Step, parse_data, validate_id
from .versions import check_version, fingerprint_of, schema_shape

Runnable = Union[Step[Any, Any], "CommittedWorkflow"]  # noqa: UP007 (forward reference)


class Workflow:
    """A workflow under construction. Every method returns the builder, so calls chain."""

    def __init__(
        self,
        id: str,
        *,
        input: type[BaseModel] | None = None,
        output: type[BaseModel] | None = None,
        description: str | None = None,
        retry: RetryPolicy | None = None,
        suspend_ttl: float | None = None,
        approvers: Sequence[str] | None = None,
        chat_agent: Any = None,
        version: str | None = None,
        step_timeout: float | None = None,
        max_recoveries: int | None = None,
        title: str | None = None,
    ) -> None:
        validate_id(id, "workflow")
        if step_timeout is not None and not step_timeout > 0:
            raise DefinitionError(f"Workflow {id!r}: step_timeout must be a positive number of seconds.")
        if max_recoveries is not None and max_recoveries < 1:
            raise DefinitionError(f"Workflow {id!r}: max_recoveries must be 1 or more (how many times a run may be "
                                  "taken over from a process that died while executing it).")
        self.id = id
        self.version = check_version(id, version)
        self.input = input
        self.output = output
        self.description = description
        self.options = WorkflowOptions(
            retry=retry, suspend_ttl=suspend_ttl, approvers=tuple(approvers) if approvers else None, chat_agent=chat_agent,
            step_timeout=step_timeout, max_recoveries=max_recoveries,
            title=title.strip() if title and title.strip() else None,
        )
        self._nodes: list[Node] = []
        self._auto = 0
        self._committed = False

    def _auto_id(self, kind: str) -> str:
        self._auto += 1
        return f"{kind}-{self._auto}"

    def _add(self, node: Node) -> Workflow:
        if self._committed:
            raise DefinitionError(f"Workflow {self.id!r} is already committed; build a new Workflow to change it.")
        self._nodes.append(node)
        return self

    def then(self, runnable: Runnable) -> Workflow:
        """Run a step (or a committed workflow) on the previous node's output."""
        return self._add(_node_for(runnable, self.id))

    def parallel(self, runnables: Sequence[Runnable]) -> Workflow:
        """Run several steps at once on the same input; the output maps each step id to its output."""
        if not runnables:
            raise DefinitionError(f"Workflow {self.id!r}: .parallel() needs at least one step.")
        children = [_node_for(r, self.id) for r in runnables]
        return self._add(ParallelNode(id=self._auto_id("parallel"), children=children))

    def branch(self, branches: Sequence[tuple[Condition, Runnable]]) -> Workflow:
        """Run every step whose condition holds for the input (conditions may be async); output keyed by step id."""
        if not branches:
            raise DefinitionError(f"Workflow {self.id!r}: .branch() needs at least one (condition, step) pair.")
        pairs: list[tuple[Condition, Node]] = []
        for pair in branches:
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0])):
                raise DefinitionError(
                    f"Workflow {self.id!r}: .branch() takes (condition, step) pairs, e.g. [(lambda x: x.big, big_step)]."
                )
            pairs.append((pair[0], _node_for(pair[1], self.id)))
        return self._add(BranchNode(id=self._auto_id("branch"), branches=pairs))

    def dowhile(self, runnable: Runnable, condition: Condition, *, max_iterations: int = 10) -> Workflow:
        """Run the step, then again on its own output while ``condition(output)`` holds."""
        return self._loop(runnable, condition, until=False, max_iterations=max_iterations)

    def dountil(self, runnable: Runnable, condition: Condition, *, max_iterations: int = 10) -> Workflow:
        """Run the step, then again on its own output until ``condition(output)`` holds."""
        return self._loop(runnable, condition, until=True, max_iterations=max_iterations)

    def _loop(self, runnable: Runnable, condition: Condition, *, until: bool, max_iterations: int) -> Workflow:
        if max_iterations < 1:
            raise DefinitionError(f"Workflow {self.id!r}: max_iterations must be at least 1.")
        body = _node_for(runnable, self.id)
        return self._add(LoopNode(id=body.id, body=body, condition=condition, until=until, max_iterations=max_iterations))

    def foreach(self, runnable: Runnable, *, concurrency: int = 1, items: Callable[[Any], Any] | None = None) -> Workflow:
        """Run the step once per item of the incoming list (or of ``items(input)``); output is the list of outputs."""
        if concurrency < 1:
            raise DefinitionError(f"Workflow {self.id!r}: foreach concurrency must be at least 1.")
        body = _node_for(runnable, self.id)
        return self._add(ForeachNode(id=body.id, body=body, concurrency=concurrency, items=items))

    def map(self, fn: Callable[..., Any], *, output: type[BaseModel] | None = None, id: str | None = None) -> Workflow:
        """Reshape data between steps: ``fn(value)`` or ``fn(value, ctx)``. Must be pure (it is re-run on replay)."""
        node_id = id or self._auto_id("map")
        validate_id(node_id, "map")
        return self._add(MapNode(id=node_id, fn=fn, output=output))

    def sleep(self, seconds: float, *, id: str | None = None) -> Workflow:
        """Pause the run; the wake time is stored, so the sleep survives a restart."""
        if seconds < 0:
            raise DefinitionError(f"Workflow {self.id!r}: sleep seconds must not be negative.")
        return self._add(SleepNode(id=id or self._auto_id("sleep"), seconds=seconds))

    def sleep_until(self, when: datetime | Callable[[Any], datetime], *, id: str | None = None) -> Workflow:
        """Pause the run until a time (or ``when(input)``); naive datetimes are taken as UTC."""
        return self._add(SleepNode(id=id or self._auto_id("sleep"), until=when))

    def wait_for_event(
        self, name: str, schema: type[BaseModel] | None = None, *, id: str | None = None, timeout: float | None = None
    ) -> Workflow:
        """Wait until ``engine.send_event(run_id, name, data)``; output the data (validated by ``schema``)."""
        node_id = id or f"wait-{name}"
        validate_id(node_id, "wait_for_event")
        return self._add(WaitForEventNode(id=node_id, event=name, schema=schema, timeout=timeout))

    def commit(self) -> CommittedWorkflow:
        """Check the workflow and freeze it. Raises DefinitionError with what to fix."""
        if not self._nodes:
            raise DefinitionError(f"Workflow {self.id!r} has no steps; add one with .then(step) before .commit().")
        root = SequenceNode(id=self.id, children=list(self._nodes))
        _check_unique_ids(self.id, root)
        _check_schemas(self.id, self.input, self.output, root)
        self._committed = True
        return CommittedWorkflow(
            id=self.id, input=self.input, output=self.output, description=self.description, root=root, options=self.options,
            version=self.version,
        )


@dataclass
class CommittedWorkflow:
    """A checked, frozen workflow: register it with an engine, or use it as a step of another workflow."""

    id: str
    input: type[BaseModel] | None
    output: type[BaseModel] | None
    description: str | None
    root: SequenceNode
    options: WorkflowOptions = field(default_factory=WorkflowOptions)
    #: The explicit version (``Workflow(id=..., version="2")``), or None.
    version: str | None = None

    def __repr__(self) -> str:
        version = f", version={self.version!r}" if self.version else ""
        return f"CommittedWorkflow(id={self.id!r}{version}, fingerprint={self.fingerprint[:8]!r})"

    @property
    def fingerprint(self) -> str:
        """A hash of the id, the version and the tree (step ids, kinds, nesting, schemas), not of step code.

        Runs record it at start and only a definition with the same fingerprint executes them.
        """
        found = self.__dict__.get("_fingerprint")
        if found is None:
            found = self.__dict__["_fingerprint"] = fingerprint_of(self.id, self.version, [
                schema_shape(self.input), schema_shape(self.output), self.root.shape(),
            ])
        return str(found)

    def parse_input(self, data: Any, *, known_keys_only: bool = True) -> Any:
        """Validate the run's input; the JSON-ready form is what gets stored.

        Keys the model does not have are an error (a misspelt field would otherwise be dropped silently), unless
        ``known_keys_only`` is False: input stored by an earlier version of the workflow, carried over.
        """
        where = f"input of workflow {self.id!r}"
        if self.input is None and known_keys_only and data not in (None, {}):
            # Nothing declares what the input is for: it would be dropped, or reach a step that does not expect it.
            raise InvalidInput(where, f"it takes no input (it declares no input model), but got {_preview(data)}; "
                               f"leave the input out, or declare the workflow with Workflow(id={self.id!r}, "
                               "input=YourModel)")
        return parse_data(self.input, data, where, known_keys_only=known_keys_only)

    def input_schema(self) -> dict[str, Any] | None:
        return self.input.model_json_schema() if self.input else None

    def find_step(self, step_id: str) -> Step[Any, Any] | None:
        """The step with this id anywhere in the tree (nested workflows included)."""
        index = self.__dict__.get("_steps_by_id")
        if index is None:
            # The tree never changes once committed; every resume looks its step up.
            index = {}
            for s in self.steps():
                index.setdefault(s.id, s)
            self.__dict__["_steps_by_id"] = index
        return index.get(step_id)

    def node_at(self, path: str) -> Node | None:
        """The node a run's path names (``release/approve``, ``review[3]/approve#1``), or None.

        Unlike :meth:`find_step`, two nested workflows that each have a step ``approve`` are told apart: the
        path is followed workflow by workflow (loop ``#i`` and foreach ``[i]`` marks are ignored).
        """
        found = self._locate(path)
        return found[0] if found else None

    def find_step_at(self, path: str) -> Step[Any, Any] | None:
        """The step at a run's path (see :meth:`node_at`), or None if the path names no step."""
        node = self.node_at(path)
        return node.step if isinstance(node, StepNode) else None

    def workflows_at(self, path: str) -> tuple[CommittedWorkflow, ...]:
        """The workflows enclosing the node at ``path``, innermost first, this one last (just this one if the
        path names nothing): where a step's workflow-level options (retry, suspend_ttl, approvers) come from."""
        found = self._locate(path)
        return found[1] if found else (self,)

    def option_at(self, path: str, name: str) -> Any:
        """A workflow option for the node at ``path``: its innermost enclosing workflow's that sets it, else None."""
        for wf in self.workflows_at(path):
            value = getattr(wf.options, name)
            if value is not None:
                return value
        return None

    def _locate(self, path: str) -> tuple[Node, tuple[CommittedWorkflow, ...]] | None:
        cache: dict[tuple[str, ...], tuple[Node, tuple[CommittedWorkflow, ...]] | None] = self.__dict__.setdefault(
            "_located", {})  # the tree never changes once committed; resumes and nested steps look their paths up
        # By the path without its loop and foreach marks: as many entries as the tree has nodes, however many items.
        segments = tuple(_PATH_MARKS.sub("", s) for s in path.split("/"))
        try:
            return cache[segments]
        except KeyError:
            pass
        found = self._follow(segments)
        if len(cache) < _MAX_LOCATED:  # a path typed by a person may name nothing: do not let those pile up
            cache[segments] = found
        return found

    def _follow(self, segments: Sequence[str]) -> tuple[Node, tuple[CommittedWorkflow, ...]] | None:
        wf: CommittedWorkflow = self
        enclosing: tuple[CommittedWorkflow, ...] = (self,)
        for i, segment in enumerate(segments):
            node = _named_child(wf.root, segment)
            if node is None:
                return None
            if i == len(segments) - 1:
                return node, enclosing
            if not isinstance(node, WorkflowNode):
                return None
            wf = node.workflow
            enclosing = (wf, *enclosing)
        return None

    def steps(self) -> list[Step[Any, Any]]:
        out: list[Step[Any, Any]] = []
        _collect_steps(self.root, out)
        return out


def _node_for(runnable: Any, workflow_id: str) -> Node:
    if isinstance(runnable, Step):
        return StepNode(id=runnable.id, step=runnable)
    if isinstance(runnable, CommittedWorkflow):
        return WorkflowNode(id=runnable.id, workflow=runnable)
    if isinstance(runnable, Workflow):
        raise DefinitionError(
            f"Workflow {workflow_id!r}: nested workflow {runnable.id!r} must be committed first: "
            f"use {runnable.id!r}.commit() before adding it."
        )
    raise DefinitionError(
        f"Workflow {workflow_id!r}: expected a step (made with @step) or a committed workflow, got {runnable!r}."
    )


#: Loop iteration (``#2``) and foreach item (``[3]``) marks at the end of a path segment.
_PATH_MARKS = re.compile(r"(#\d+|\[\d+\])+$")


def segment_node(segment: str) -> str:
    """The node a path segment names, without its loop iteration or foreach item marks: ``review[3]`` -> ``review``."""
    return _PATH_MARKS.sub("", segment)


#: How many looked-up paths a committed workflow remembers.
_MAX_LOCATED = 4096


def _named_child(root: Node, segment: str) -> Node | None:
    """The node under ``root`` (within the same workflow) whose path segment is ``segment``.

    Sequences, parallels, branches, loops and foreaches add no segment of their own (a loop or foreach
    marks its body's), so the search goes through them.
    """
    for node in _walk(root)[1:]:
        if isinstance(node, SequenceNode | ParallelNode | BranchNode | LoopNode | ForeachNode):
            continue
        if node.id == segment:
            return node
    return None


def _walk(node: Node) -> list[Node]:
    children: list[Node] = []
    if isinstance(node, SequenceNode | ParallelNode):
        children = list(node.children)
    elif isinstance(node, BranchNode):
        children = [n for _, n in node.branches]
    elif isinstance(node, LoopNode | ForeachNode):
        children = [node.body]
    return [node] + [d for c in children for d in _walk(c)]


def _check_unique_ids(workflow_id: str, root: SequenceNode) -> None:
    seen: set[str] = set()
    for node in _walk(root)[1:]:
        if isinstance(node, LoopNode | ForeachNode):
            continue  # they share their body's id; the body is checked
        if isinstance(node, ParallelNode | BranchNode | SequenceNode):
            continue
        if node.id in seen:
            raise DefinitionError(
                f"Workflow {workflow_id!r} uses the id {node.id!r} twice. Step ids must be unique within a workflow "
                "(their results are stored under them); give one of the steps another id."
            )
        seen.add(node.id)


def _collect_steps(node: Node, out: list[Step[Any, Any]]) -> None:
    for n in _walk(node):
        if isinstance(n, StepNode):
            out.append(n.step)
        elif isinstance(n, WorkflowNode):
            _collect_steps(n.workflow.root, out)


def _check_schemas(
    workflow_id: str, wf_input: type[BaseModel] | None, wf_output: type[BaseModel] | None, root: SequenceNode
) -> None:
    previous_model = wf_input
    previous_name = f"the input of workflow {workflow_id!r}"
    for node in root.children:
        if isinstance(node, ForeachNode):
            previous_model, previous_name = None, f"foreach {node.id!r}"
            continue
        expected = node.input_model
        if isinstance(node, ParallelNode):
            for child in node.children:
                _check_pair(workflow_id, previous_model, previous_name, child.input_model, f"step {child.id!r}")
        elif isinstance(node, BranchNode):
            for _, child in node.branches:
                _check_pair(workflow_id, previous_model, previous_name, child.input_model, f"step {child.id!r}")
        elif not isinstance(node, MapNode | SleepNode | WaitForEventNode):
            _check_pair(workflow_id, previous_model, previous_name, expected, f"step {node.id!r}")
        if isinstance(node, SleepNode):
            continue  # passes its input through
        previous_model, previous_name = node.output_model, f"step {node.id!r}"
        if isinstance(node, LoopNode):
            _check_pair(workflow_id, node.body.output_model, f"step {node.id!r}", node.body.input_model,
                        f"the next iteration of {node.id!r}")
    if wf_output is not None:
        _check_pair(workflow_id, previous_model, previous_name, wf_output, f"the output of workflow {workflow_id!r}")


def _check_pair(
    workflow_id: str,
    produced: type[BaseModel] | None,
    producer: str,
    expected: type[BaseModel] | None,
    consumer: str,
) -> None:
    if produced is None or expected is None or produced is expected:
        return
    produced_fields = produced.model_fields
    for name, info in expected.model_fields.items():
        keys = {name, info.alias} - {None}
        source = next((produced_fields[k] for k in keys if k in produced_fields), None)
        if source is None:
            if info.is_required():
                raise DefinitionError(
                    f"Workflow {workflow_id!r}: {consumer} needs field {name!r}, which {producer} does not provide "
                    f"({produced.__name__} has: {', '.join(produced_fields) or 'no fields'}). "
                    "Add a .map(...) between them to reshape the data."
                )
            continue
        if not _compatible(source.annotation, info.annotation):
            raise DefinitionError(
                f"Workflow {workflow_id!r}: field {name!r} is {_type_name(source.annotation)} in {producer} "
                f"but {consumer} expects {_type_name(info.annotation)}. Add a .map(...) to convert it."
            )


def _compatible(produced: Any, expected: Any) -> bool:
    """A loose check: only plainly different simple types (str vs int, one model vs another) are mismatches."""
    if produced == expected or expected is Any or produced is Any:
        return True
    expected_args = typing.get_args(expected)
    if expected_args and type(None) in expected_args or typing.get_origin(expected) in (typing.Union,):
        return True
    if isinstance(produced, type) and isinstance(expected, type):
        if issubclass(produced, BaseModel) and issubclass(expected, BaseModel):
            return set(expected.model_fields) <= set(produced.model_fields) or all(
                not f.is_required() for f in expected.model_fields.values()
            )
        if expected is float and produced is int:
            return True
        return issubclass(produced, expected)
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _preview(data: Any) -> str:
    """A short rendering of input that was refused (enough to recognise it, never a whole document)."""
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
