"""Random JSON as resume data for the ``approval`` workflow: the resume either succeeds once, or raises
InvalidInput and leaves no trace (the run still suspended, its suspension open, not one event more).

tests/workflows/test_engine_suspend.py checks one hand-picked invalid value; here hypothesis picks them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import EngineFactory
from workflows import Engine, InvalidInput, RunHandle
from workflows.examples.approval import approval

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
approved_values = st.one_of(
    st.sampled_from([True, False, "yes", "no", "true", 0, 1]),  # what pydantic accepts as a bool
    st.sampled_from(["maybe", 2, 1.5, None, [], {}]),
    json_values,
)
text_or_anything = st.one_of(st.text(max_size=12), st.none(), json_values)
extras = {"by": text_or_anything, "reason": text_or_anything, "extra": json_values}
# Objects shaped like a decision (its fields, with any values), objects missing it, and anything at all.
decision_like = st.fixed_dictionaries({"approved": approved_values}, optional=extras)
resume_data = st.one_of(
    decision_like,
    decision_like,
    st.fixed_dictionaries({}, optional={"approved": approved_values, **extras}),
    json_values,
)


async def snapshot(e: Engine, run_id: str) -> tuple[Any, ...]:
    details = await e.details(run_id)
    return (
        details.run.status,
        [(ev.id, ev.type) for ev in details.events],
        [(s.path, s.status, s.resolved_by, s.resolved_at) for s in details.suspensions],
        [s.path for s in details.steps],
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=resume_data, by=st.none() | st.text(min_size=1, max_size=10))
@example(data={"approved": True}, by="U1")
@example(data={"approved": "maybe"}, by="U1")
@example(data=None, by=None)
@example(data=[{"approved": True}], by="U1")
async def test_random_resume_data_either_resumes_once_or_changes_nothing(
    engine: EngineFactory, data: Any, by: str | None
) -> None:
    e = engine(approval)
    try:
        await check_one_resume(e, data, by)
    finally:
        await e.close()  # one engine per example, not forty open at once


async def check_one_resume(e: Engine, data: Any, by: str | None) -> None:
    run_id = (await (await e.start("approval", {"request": "ship it"})).result(timeout=5)).run_id
    before = await snapshot(e, run_id)
    assert before[0] == "suspended"

    try:
        handle = await e.resume(run_id, step="approve", data=data, by=by)
    except InvalidInput as exc:
        if by is not None and any(ord(ch) < 32 for ch in by):
            assert exc.where == "by"  # who decided must be a plain name (PostgreSQL cannot store a NUL)
        else:
            assert "resume data for step 'approve'" in str(exc)
        assert await snapshot(e, run_id) == before  # nothing recorded, nothing changed
        return

    assert isinstance(handle, RunHandle)
    result = await handle.result(timeout=5)
    assert result.status in ("success", "failed")  # approved, or rejected cleanly
    if result.status == "failed":
        assert result.error_path == "approve" and "Rejected by" in (result.error or "")
    details = await e.details(run_id)
    resumed = [ev for ev in details.events if ev.type == "run.resumed"]
    assert len(resumed) == 1 and resumed[0].data["by"] == by
    assert [(s.status, s.resolved_by) for s in details.suspensions] == [("resolved", by)]
