"""Rows as pydantic models: what the run repository hands to the engine and the bot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["pending", "running", "waiting", "suspended", "success", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"success", "failed", "canceled"})
SETTLED_STATUSES: frozenset[str] = TERMINAL_STATUSES | {"suspended"}


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    workflow_id: str
    status: RunStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    thread_id: str | None = None
    resource_id: str | None = None
    started_by: str | None = None
    rerun_of: str | None = None
    rerun_from: str | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
    ready_at: float | None = None
    waiting_for: str | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    #: The explicit version of the workflow the run started on, and the fingerprint of that definition
    #: (None for runs started before versions were recorded: any definition of the id may continue them).
    workflow_version: str | None = None
    workflow_fingerprint: str | None = None
    #: When a ``run.stranded`` event said no live process has the run's version (None again once one has).
    stranded_at: float | None = None
    #: Times the run was taken over from a process that died holding it, since it last made progress.
    recoveries: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ServedVersion(BaseModel):
    """A workflow version one live process executes (``served_versions``; refreshed with its heartbeat)."""

    model_config = ConfigDict(frozen=True)

    owner: str
    workflow_id: str
    version: str | None = None
    fingerprint: str
    expires_at: float


class VersionCount(BaseModel):
    """How many unfinished runs one version of a workflow has (``threadflow workflows``)."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    version: str | None = None
    fingerprint: str | None = None
    open_runs: int


class ClaimCandidate(NamedTuple):
    """A run ready to be claimed; ``recoveries`` counts the takeover this claim would be (see RunStore.claim)."""

    id: str
    workflow_id: str
    recoveries: int


class StepResultRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    path: str
    step_id: str
    kind: str = "step"
    output: Any = None
    attempts: int = 1
    started_at: float | None = None
    finished_at: float


def step_result(
    *, run_id: str, path: str, step_id: str, kind: str, output: Any, attempts: int, started_at: float | None,
    finished_at: float,
) -> StepResultRecord:
    """A StepResultRecord from values the engine made itself (every field given, each of its type).

    What ``model_construct`` does, without its per-field look-up of defaults and aliases: one is built for
    every step, and that look-up was most of its cost (2.5 us against 1 us). A test checks the record equals
    a validated one, so a pydantic release that changes how a model keeps its state is caught.
    """
    values = {"run_id": run_id, "path": path, "step_id": step_id, "kind": kind, "output": output,
              "attempts": attempts, "started_at": started_at, "finished_at": finished_at}
    return _assembled(StepResultRecord, values, set(values))


class SuspensionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    path: str
    step_id: str
    kind: Literal["suspend", "event"] = "suspend"
    event_name: str | None = None
    payload: Any = None
    status: Literal["open", "resolved"] = "open"
    created_at: float
    expires_at: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    resume_data: Any = None


class EventRecord(BaseModel):
    """A persisted event; ``id`` is its offset for replay."""

    model_config = ConfigDict(frozen=True)

    id: int
    run_id: str
    type: str
    path: str | None = None
    data: dict[str, Any] | None = None
    at: float


@dataclass(slots=True, kw_only=True)
class NewEvent:
    """An event to commit together with the state change it describes (``at``: when it happened, if earlier).

    A slotted dataclass, not a pydantic model: two or three are built for every step, always by our own code
    with values of the right types, so validating them only cost time (about 3 us each).
    """

    type: str
    path: str | None = None
    data: dict[str, Any] | None = None
    at: float | None = None


class SignalRecord(BaseModel):
    id: int
    run_id: str
    name: str
    data: Any = None
    created_at: float
    consumed_path: str | None = None


M = TypeVar("M", bound=BaseModel)


def _assembled(model: type[M], values: dict[str, Any], fields_set: set[str], private: dict[str, Any] | None = None) -> M:
    """A ``model`` holding ``values`` as they are, the state pydantic keeps for a record built without validation
    (as ``model_construct`` leaves it, without its per-field look-ups). The records below are all built this way."""
    record = model.__new__(model)
    setattr_ = object.__setattr__  # the models are frozen: their own __setattr__ refuses
    setattr_(record, "__dict__", values)
    setattr_(record, "__pydantic_fields_set__", fields_set)
    setattr_(record, "__pydantic_extra__", None)
    setattr_(record, "__pydantic_private__", private)
    return record


def row_reader(model: type[M]) -> Callable[[Mapping[Any, Any]], M]:
    """A function that makes a ``model`` record of a row of its own table, without validating the row again.

    For the run repository's reads of the engine's tables: each column is the model's field of the same name
    and type (the schema says so: NOT NULL where the field allows no None, FLOAT columns come back as floats,
    JSON columns parsed), and every row was written by the engine. Validation cost ~2 us a record, this ~1 us;
    a burst of 1,800 resumes reads about 7,000 records (each run and its suspension for its resume, the run
    and its progress again in a claim). Columns the model lacks are dropped, as ``model_validate`` does; a
    field the row lacks raises KeyError. A test holds the records equal to validated ones (value, repr, dump,
    fields set), so a pydantic release that changes how a model keeps its state is caught.
    """
    names = tuple(model.model_fields)
    fields = frozenset(names)

    def read(row: Mapping[Any, Any]) -> M:
        values = dict(row)
        if values.keys() != fields:
            values = {name: values[name] for name in names}
        return _assembled(model, values, set(names))

    return read


def updated(record: M, values: Mapping[str, Any]) -> M:
    """``record.model_copy(update=values)`` without its way through ``copy.copy``: the same copy (fields, fields set),
    for the engine's own records and values of their fields' types (not validated, as model_copy does not validate
    either). A settle and a resume each make one, for every run. A model with extra fields allowed or private state
    goes through model_copy (it sorts those out)."""
    if record.model_config.get("extra") == "allow" or record.__pydantic_private__:
        return record.model_copy(update=values)
    private: dict[str, Any] | None = None if record.__pydantic_private__ is None else {}  # (empty: see above)
    return _assembled(type(record), {**record.__dict__, **values}, record.__pydantic_fields_set__ | values.keys(), private)


run_record = row_reader(RunRecord)
suspension_record = row_reader(SuspensionRecord)
step_result_record = row_reader(StepResultRecord)
signal_record = row_reader(SignalRecord)


class RunProgress(BaseModel):
    """Everything the walk needs to continue a run: finished steps, suspensions, buffered events."""

    results: dict[str, StepResultRecord]
    suspensions: dict[str, SuspensionRecord]
    signals: list[SignalRecord]
