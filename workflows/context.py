"""What a step function sees: its input, the run it belongs to, memory, and ``suspend()``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .step import Step, parse_model

if TYPE_CHECKING:
    from .executor import RunExecution

In = TypeVar("In")


def run_thread_id(thread_id: str | None, run_id: str) -> str:
    """The memory thread a run's agents write to: its own (a Slack thread's), else one of the run's alone."""
    return thread_id if thread_id is not None else f"run:{run_id}"


@dataclass
class Halt(BaseException):
    """Control flow, not an error: this part of the run cannot go on now.

    Raised by ``ctx.suspend()`` and by sleep/wait nodes; parallel branches' halts are merged. It derives
    from BaseException so a step's ``except Exception`` cannot swallow it.
    """

    suspended: list[str] = field(default_factory=list)
    wake_at: float | None = None
    events: list[str] = field(default_factory=list)

    def merge(self, other: Halt) -> Halt:
        wake = [t for t in (self.wake_at, other.wake_at) if t is not None]
        return Halt(self.suspended + other.suspended, min(wake) if wake else None, self.events + other.events)

    def __str__(self) -> str:
        return f"halt(suspended={self.suspended}, wake_at={self.wake_at}, events={self.events})"


class StepContext(Generic[In]):
    """Passed to every step function as ``ctx``."""

    #: Set on an attempt abandoned after ignoring its cancel (see ``step_call``): it may no longer ask a person.
    abandoned = False

    def __init__(
        self,
        *,
        execution: RunExecution,
        step: Step[Any, Any],
        path: str,
        input: In,
        attempt: int,
        resume_data: Any = None,
        suspend_payload: Any = None,
    ) -> None:
        self._execution = execution
        self.step = step
        self.path = path
        self.input = input
        self.attempt = attempt
        self.resume_data = resume_data
        self.suspend_payload = suspend_payload

    @property
    def run_id(self) -> str:
        return self._execution.run.id

    @property
    def workflow_id(self) -> str:
        return self._execution.run.workflow_id

    @property
    def thread_id(self) -> str | None:
        return self._execution.run.thread_id

    @property
    def resource_id(self) -> str | None:
        return self._execution.run.resource_id

    @property
    def started_by(self) -> str | None:
        return self._execution.run.started_by

    @property
    def workflow_input(self) -> Any:
        return self._execution.run.input

    @property
    def engine(self) -> Any:
        return self._execution.engine

    @property
    def memory(self) -> Any:
        """The run's memory thread (bound to ``thread_id``/``resource_id``), or None without one."""
        return self._execution.engine.thread_memory(
            self.thread_id, self.resource_id, run_id=self.run_id, path=self.path
        )

    @property
    def is_resumed(self) -> bool:
        return self.resume_data is not None

    def step_output(self, step_id: str) -> Any:
        """The recorded output of an earlier step of this run (JSON form), or None if it has not run.

        Inside a nested workflow (a foreach's item, a loop's iteration) it is that item's step first, then one of the
        workflows around it; never another item's. Of a step that ran several times (a loop), the latest.
        """
        return self._execution.output_of(step_id, self.path)

    async def suspend(self, payload: BaseModel | dict[str, Any] | None = None, *, ttl: float | None = None) -> Any:
        """Wait for a person: return the resume data once resumed, or halt the run until then.

        Call it where the step needs input; on resume the step runs again from the top and this call returns
        the validated resume data (an instance of the step's ``resume`` model).
        """
        if self.resume_data is not None:
            return self.resume_data
        if self.abandoned:  # its run went on without it (a StepTimeout, a retry): no card for an attempt now gone
            raise asyncio.CancelledError(f"step {self.path!r}: this attempt was abandoned; it cannot suspend the run")
        data = parse_model(self.step.suspend, payload or {}, f"suspend payload of step {self.step.id!r}")
        json_payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        await self._execution.open_suspension(self.step, self.path, json_payload, ttl)
        raise Halt(suspended=[self.path])
