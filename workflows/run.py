"""What callers get back about a run: a handle to await, its result, and its full details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from storage.records import RunRecord, StepResultRecord, SuspensionRecord

from .events import WorkflowEvent

if TYPE_CHECKING:
    from .engine import Engine


class SuspendedStep(BaseModel):
    """One open suspension: what a run waits for, and where (``path`` is the id to resume)."""

    path: str
    step_id: str
    kind: Literal["suspend", "event"] = "suspend"
    event: str | None = None
    payload: Any = None
    expires_at: float | None = None

    @classmethod
    def from_record(cls, rec: SuspensionRecord) -> SuspendedStep:
        return cls(path=rec.path, step_id=rec.step_id, kind=rec.kind, event=rec.event_name, payload=rec.payload,
                   expires_at=rec.expires_at)


class RunResult(BaseModel):
    """Where a run stands once it settled: ``success | suspended | failed | canceled`` (or ``waiting``)."""

    run_id: str
    workflow_id: str
    status: str
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    error_path: str | None = None
    suspended: list[SuspendedStep] = []

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        if not self.suspended:
            data.pop("suspended", None)
        return data


class StepInfo(BaseModel):
    path: str
    step_id: str
    kind: str
    output: Any = None
    attempts: int
    started_at: float | None = None
    finished_at: float

    @classmethod
    def from_record(cls, rec: StepResultRecord) -> StepInfo:
        return cls(**rec.model_dump(exclude={"run_id"}))


class RunDetails(BaseModel):
    """Everything recorded about a run: for ``threadflow show`` and ``/flow status``."""

    run: RunRecord
    steps: list[StepInfo]
    suspensions: list[SuspensionRecord]
    events: list[WorkflowEvent]


class RunHandle:
    """A started run. ``await handle.result()`` waits until it settles."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id

    @property
    def id(self) -> str:
        return self.run_id

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r})"

    async def result(self, timeout: float | None = None) -> RunResult:
        """Wait until the run is finished, suspended, or waiting for an event, and return where it stands."""
        return await self.engine.wait_for(self.run_id, timeout=timeout)

    async def status(self) -> str:
        return (await self.engine.get_run(self.run_id)).status

    def watch(self, after: int = 0) -> Any:
        return self.engine.watch(self.run_id, after=after)
