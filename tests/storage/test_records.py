"""Records the engine builds without validation must be the same objects pydantic would build."""

from __future__ import annotations

from storage.records import StepResultRecord, step_result


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
