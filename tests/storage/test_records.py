"""Records the engine builds without validation must be the same objects pydantic would build."""

from __future__ import annotations

from typing import Any

from storage.records import (
    RunRecord,
    SignalRecord,
    StepResultRecord,
    SuspensionRecord,
    run_record,
    signal_record,
    step_result,
    step_result_record,
    suspension_record,
    updated,
)
from storage.tables import runs, signals, step_results, suspensions


def test_a_step_result_built_by_the_engine_equals_a_validated_one() -> None:
    values = {"run_id": "r1", "path": "a/b", "step_id": "b", "kind": "step", "output": {"x": [1, 2]}, "attempts": 2,
              "started_at": 1.0, "finished_at": 2.5}
    built, validated = step_result(**values), StepResultRecord.model_validate(values)
    assert built == validated
    assert built.model_dump() == validated.model_dump() == values
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_copy(update={"attempts": 3}).attempts == 3
    assert repr(built) == repr(validated)


def test_rows_of_the_engines_tables_read_without_validation_equal_validated_records() -> None:
    # Each table's columns are its record's fields, in order: a row read back is a full record.
    for table, model in ((runs, RunRecord), (suspensions, SuspensionRecord), (step_results, StepResultRecord),
                         (signals, SignalRecord)):
        assert [c.name for c in table.columns] == list(model.model_fields), table.name
    rows: list[tuple[Any, dict[str, Any]]] = [
        (run_record, {"id": "r1", "workflow_id": "wf", "status": "suspended", "input": {"n": [1]}, "output": None,
                      "error": {"type": "X", "message": "m"}, "thread_id": "t", "resource_id": None, "started_by": "u",
                      "rerun_of": None, "rerun_from": None, "owner": None, "lease_expires_at": None, "ready_at": 2.0,
                      "waiting_for": "ev", "created_at": 1.0, "updated_at": 2.5, "finished_at": None,
                      "workflow_version": "2", "workflow_fingerprint": "f" * 64, "stranded_at": None, "recoveries": 1}),
        (suspension_record, {"run_id": "r1", "path": "a/approve", "step_id": "approve", "kind": "suspend",
                             "event_name": None, "payload": {"q": "?"}, "status": "resolved", "created_at": 1.0,
                             "expires_at": 9.0, "resolved_by": "alice", "resolved_at": 2.0, "resume_data": {"ok": True}}),
        (step_result_record, {"run_id": "r1", "path": "a", "step_id": "a", "kind": "step", "output": [1, "x"],
                              "attempts": 2, "started_at": None, "finished_at": 2.0}),
        (signal_record, {"id": 7, "run_id": "r1", "name": "ev", "data": None, "created_at": 1.0, "consumed_path": "w"}),
    ]
    for read, row in rows:
        built = read(row)
        validated = type(built).model_validate(row)
        assert built == validated
        assert built.model_dump() == validated.model_dump() == row
        assert built.model_dump_json() == validated.model_dump_json()
        assert built.model_fields_set == validated.model_fields_set
        assert repr(built) == repr(validated)
        # A row with a column the record lacks (a join, a newer schema) reads as model_validate reads it.
        assert read({**row, "extra": 1}) == validated
        assert built.model_copy(update={"created_at": 3.0}).created_at == 3.0


def test_an_updated_record_equals_pydantics_copy_with_the_update() -> None:
    run = run_record({name: None for name in RunRecord.model_fields} | {
        "id": "r1", "workflow_id": "wf", "status": "running", "input": {"n": 1}, "created_at": 1.0, "updated_at": 1.0,
        "recoveries": 0})
    suspension = SuspensionRecord.model_validate({"run_id": "r1", "path": "a", "step_id": "a", "created_at": 1.0})
    for record, values in ((run, {"status": "success", "output": {"x": [1]}, "owner": None, "finished_at": 2.0}),
                           (suspension, {"status": "resolved", "resolved_by": "u", "resume_data": {"ok": True}})):
        mine, theirs = updated(record, values), record.model_copy(update=values)
        assert mine == theirs and repr(mine) == repr(theirs)
        assert mine.model_fields_set == theirs.model_fields_set
        assert mine.model_dump() == theirs.model_dump() and record.model_dump() != mine.model_dump()
