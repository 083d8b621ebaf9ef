"""Typed run events. They are committed with the state change they describe; watchers replay them by offset."""

from __future__ import annotations

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

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    @classmethod
    def from_record(cls, record: EventRecord) -> WorkflowEvent:
        return cls(id=record.id, run_id=record.run_id, type=record.type, path=record.path,
                   data=record.data or {}, at=record.at)
