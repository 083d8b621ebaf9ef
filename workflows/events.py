"""Typed run events. They are committed with the state change they describe; watchers replay them by offset."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from storage.records import EventRecord

EventType = Literal[
    "run.started",
    "run.resumed",
    "run.recovered",
    "run.released",
    "run.suspended",
    "run.waiting",
    "run.failed",
    "run.finished",
    "run.canceled",
    "run.stranded",
    "step.started",
    "step.succeeded",
    "step.failed",
    "step.retrying",
    "step.suspended",
    "event.received",
]

#: After one of these, a run never changes again.
FINAL_EVENT_TYPES = frozenset({"run.finished", "run.canceled"})


class EventData(BaseModel):
    """What an event carries, typed per event type (``WorkflowEvent.payload``). Unknown keys are kept, so an
    adapter built for today's events reads tomorrow's without failing."""

    model_config = ConfigDict(frozen=True, extra="allow")

    step_id: str | None = None


class RunStarted(EventData):
    workflow_id: str | None = None
    input: Any = None
    started_by: str | None = None
    thread_id: str | None = None
    rerun_of: str | None = None
    rerun_from: str | None = None


class RunResumed(EventData):
    by: str | None = None
    data: Any = None
    expired: bool = False

    @property
    def approved(self) -> bool | None:
        """The decision, when the resume data was an approval (``{"approved": ...}``)."""
        if isinstance(self.data, dict) and "approved" in self.data:
            return bool(self.data["approved"])
        return None

    @property
    def reason(self) -> str | None:
        reason = self.data.get("reason") if isinstance(self.data, dict) else None
        return str(reason) if reason else None


class RunFinished(EventData):
    status: str = "success"
    output: Any = None
    error: dict[str, Any] | None = None

    @property
    def error_message(self) -> str | None:
        return str(self.error.get("message")) if self.error and self.error.get("message") else None

    @property
    def error_path(self) -> str | None:
        return str(self.error.get("path")) if self.error and self.error.get("path") else None


class RunCanceled(EventData):
    by: str | None = None
    #: The run that took this one's place: a stranded run moved onto the current version (``threadflow rerun``).
    moved_to: str | None = None


class StepStarted(EventData):
    attempt: int = 1


class StepRetrying(EventData):
    attempt: int = 1
    error: str | None = None
    delay: float | None = None


class StepSucceeded(EventData):
    output: Any = None
    attempts: int = 1
    duration: float | None = None


class StepFailed(EventData):
    attempts: int = 1
    error: str | None = None


class StepSuspended(EventData):
    """A step waits: for a person (``payload``, maybe ``expires_at``) or for an event (``event``)."""

    payload: Any = None
    event: str | None = None
    expires_at: float | None = None

    @property
    def is_approval(self) -> bool:
        return self.event is None


class EventReceived(EventData):
    event: str | None = None


class RunStranded(EventData):
    """No running process has the run's workflow version (``message`` says what the operator can do)."""

    workflow_id: str | None = None
    version: str | None = None
    fingerprint: str | None = None
    registered: list[dict[str, Any]] = []
    message: str | None = None


#: The typed payload of each event type; other types read as plain :class:`EventData`.
PAYLOADS: dict[str, type[EventData]] = {
    "run.started": RunStarted,
    "run.resumed": RunResumed,
    "run.finished": RunFinished,
    "run.canceled": RunCanceled,
    "step.started": StepStarted,
    "step.retrying": StepRetrying,
    "step.succeeded": StepSucceeded,
    "step.failed": StepFailed,
    "step.suspended": StepSuspended,
    "event.received": EventReceived,
    "run.stranded": RunStranded,
}


class WorkflowEvent(BaseModel):
    """One thing that happened to a run. ``id`` orders all events and is the offset to replay from."""

    model_config = ConfigDict(frozen=True)

    id: int
    run_id: str
    type: EventType
    path: str | None = None
    data: dict[str, Any] = {}
    at: float

    @property
    def step_id(self) -> str | None:
        return self.data.get("step_id") if self.data else None

    @cached_property
    def payload(self) -> EventData:
        """``data`` as the typed model of this event's type (see :data:`PAYLOADS`)."""
        return PAYLOADS.get(self.type, EventData).model_validate(self.data or {})

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    @classmethod
    def from_record(cls, record: EventRecord) -> WorkflowEvent:
        return cls(id=record.id, run_id=record.run_id, type=record.type, path=record.path,
                   data=record.data or {}, at=record.at)
