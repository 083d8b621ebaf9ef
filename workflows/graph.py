"""The compiled tree a committed workflow runs as. Each node knows its id, and the models it takes and gives.

A node instance's *path* is its position in a run: ``deploy/validate#2`` (third loop iteration) or
``review[3]/approve`` (fourth foreach item, inside a nested workflow). Step results and suspensions are
keyed by path, which is what makes recovery, resume and re-run one walk over recorded results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, create_model

from .step import RetryPolicy, Step
from .versions import schema_shape

if TYPE_CHECKING:
    from .workflow import CommittedWorkflow

Condition = Callable[[Any], Any]


@dataclass
class Node:
    id: str

    @property
    def input_model(self) -> type[BaseModel] | None:
        return None

    @property
    def output_model(self) -> type[BaseModel] | None:
        return None

    def step_ids(self) -> list[str]:
        """Ids of every step under this node (used for duplicate checks and path lookups)."""
        return []

    def shape(self) -> list[Any]:
        """What a run's recorded paths depend on: kind, id, schemas and children, never code.

        A workflow's fingerprint hashes its root's shape (see ``versions.py``): two commits with the same
        shape can continue each other's runs; a different shape is a different version.
        """
        return [type(self).__name__, self.id]


@dataclass
class StepNode(Node):
    step: Step[Any, Any]

    @property
    def input_model(self) -> type[BaseModel] | None:
        return self.step.input

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.step.output

    def step_ids(self) -> list[str]:
        return [self.step.id]

    def shape(self) -> list[Any]:
        s = self.step
        return [*super().shape(), s.id, *(schema_shape(m) for m in (s.input, s.output, s.suspend, s.resume))]


@dataclass
class WorkflowNode(Node):
    """A committed workflow used as a step of another; it runs inline, under its own path prefix."""

    workflow: CommittedWorkflow

    @property
    def input_model(self) -> type[BaseModel] | None:
        return self.workflow.input

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.workflow.output

    def step_ids(self) -> list[str]:
        return [self.id]

    def shape(self) -> list[Any]:
        inner = self.workflow
        return [*super().shape(), schema_shape(inner.input), schema_shape(inner.output), inner.root.shape()]


@dataclass
class SequenceNode(Node):
    children: list[Node]

    @property
    def input_model(self) -> type[BaseModel] | None:
        return self.children[0].input_model if self.children else None

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.children[-1].output_model if self.children else None

    def step_ids(self) -> list[str]:
        return [i for c in self.children for i in c.step_ids()]

    def shape(self) -> list[Any]:
        return [*super().shape(), [c.shape() for c in self.children]]


@dataclass
class ParallelNode(Node):
    """Children run concurrently on the same input; the output is ``{child_id: child_output}``."""

    children: list[Node]
    _output: type[BaseModel] | None = field(default=None, repr=False)

    @property
    def output_model(self) -> type[BaseModel] | None:
        if self._output is None and all(c.output_model for c in self.children):
            fields: dict[str, Any] = {c.id: (c.output_model, ...) for c in self.children}
            self._output = create_model(f"Parallel_{'_'.join(c.id for c in self.children)}", **fields)
        return self._output

    def step_ids(self) -> list[str]:
        return [i for c in self.children for i in c.step_ids()]

    def shape(self) -> list[Any]:
        return [*super().shape(), [c.shape() for c in self.children]]


@dataclass
class BranchNode(Node):
    """Every child whose condition holds runs (concurrently); the output is keyed by child id."""

    branches: list[tuple[Condition, Node]]
    _output: type[BaseModel] | None = field(default=None, repr=False)

    @property
    def output_model(self) -> type[BaseModel] | None:
        if self._output is None and all(n.output_model for _, n in self.branches):
            fields: dict[str, Any] = {n.id: (Optional[n.output_model], None) for _, n in self.branches}  # noqa: UP045
            self._output = create_model(f"Branch_{'_'.join(n.id for _, n in self.branches)}", **fields)
        return self._output

    def step_ids(self) -> list[str]:
        return [i for _, n in self.branches for i in n.step_ids()]

    def shape(self) -> list[Any]:
        return [*super().shape(), [n.shape() for _, n in self.branches]]


@dataclass
class LoopNode(Node):
    """Runs ``body`` repeatedly, each iteration's output feeding the next, up to ``max_iterations``."""

    body: Node
    condition: Condition
    until: bool
    max_iterations: int

    @property
    def input_model(self) -> type[BaseModel] | None:
        return self.body.input_model

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.body.output_model

    def step_ids(self) -> list[str]:
        return self.body.step_ids()

    def shape(self) -> list[Any]:
        return [*super().shape(), self.body.shape()]


@dataclass
class ForeachNode(Node):
    """Runs ``body`` once per item of the incoming list, at most ``concurrency`` at a time."""

    body: Node
    concurrency: int
    items: Callable[[Any], Any] | None = None

    def step_ids(self) -> list[str]:
        return self.body.step_ids()

    def shape(self) -> list[Any]:
        return [*super().shape(), self.body.shape()]


@dataclass
class MapNode(Node):
    """Reshapes data between steps. ``fn`` must be pure: it is re-evaluated, not recorded."""

    fn: Callable[..., Any]
    output: type[BaseModel] | None = None

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.output

    def shape(self) -> list[Any]:
        return [*super().shape(), schema_shape(self.output)]


@dataclass
class SleepNode(Node):
    """Passes its input through after ``seconds`` or at ``until``; the wake time is recorded, so it survives a restart."""

    seconds: float | None = None
    until: datetime | Callable[[Any], datetime] | None = None


@dataclass
class WaitForEventNode(Node):
    """Waits for ``engine.send_event(run_id, event, data)``; outputs ``data`` validated by ``schema``."""

    event: str = ""
    schema: type[BaseModel] | None = None
    timeout: float | None = None

    @property
    def output_model(self) -> type[BaseModel] | None:
        return self.schema

    def shape(self) -> list[Any]:
        return [*super().shape(), self.event, schema_shape(self.schema)]


@dataclass(frozen=True)
class WorkflowOptions:
    retry: RetryPolicy | None = None
    suspend_ttl: float | None = None
    approvers: tuple[str, ...] | None = None
    chat_agent: Any = None
    #: Default timeout of its steps (seconds; a step's own ``timeout`` wins), else THREADFLOW_STEP_TIMEOUT.
    step_timeout: float | None = None
    #: How many times the process running one of its runs may die before the run fails (THREADFLOW_MAX_RECOVERIES).
    max_recoveries: int | None = None
    #: A short name for people ("Deploy an app"): Slack's assistant offers the workflow under it.
    title: str | None = None
