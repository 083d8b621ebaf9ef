"""A key the model does not have, in a workflow's input, in resume data or in event data, is an error that names the
key and lists the fields expected (before: silently dropped, and the run went on with the default input). The same
engine check answers the Python API and the CLI here, and Slack in tests/reliability/slack/test_unknown_keys_slack.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import EngineFactory
from tests.helpers.system import threadflow
from workflows import InvalidInput, StepContext, Workflow, step
from workflows.examples.approval import approval
from workflows.examples.deploy_app import deploy_app


async def test_an_unknown_input_key_is_named_with_the_expected_fields_and_starts_nothing(engine: EngineFactory) -> None:
    e = engine(deploy_app)

    with pytest.raises(InvalidInput) as err:
        await e.start("deploy-app", {"goal": "a todo app"})

    assert str(err.value) == (
        "Invalid input of workflow 'deploy-app': unknown field 'goal'; expected fields: request, cost_threshold"
    )
    assert await e.list_runs() == []


async def test_unknown_resume_data_keys_are_refused_and_the_run_stays_suspended(engine: EngineFactory) -> None:
    e = engine(approval)
    run_id = (await (await e.start("approval", {"request": "ship it"})).result(timeout=5)).run_id

    with pytest.raises(InvalidInput, match=r"resume data for step 'approve': unknown fields 'aproved', 'note'; "
                                           r"expected fields: approved, by, reason; field 'approved': Field required"):
        await e.resume(run_id, data={"aproved": True, "note": "typo"}, by="U1")

    assert (await e.get_run(run_id)).status == "suspended"
    result = await (await e.resume(run_id, data={"approved": True}, by="U1")).result(timeout=5)
    assert result.status == "success"


class Go(BaseModel):
    ready: bool


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")  # a model that says what to do with extra keys is left alone
    ready: bool


async def test_event_data_keys_are_checked_too_unless_the_model_allows_extra_keys(engine: EngineFactory) -> None:
    @step(id="after", input=Go)
    async def after(ctx: StepContext[Go]) -> dict[str, bool]:
        return {"ready": ctx.input.ready}

    e = engine(
        Workflow(id="strict-event").wait_for_event("go", Go, id="wait").then(after).commit(),
        Workflow(id="loose-event").wait_for_event("go", Loose, id="wait").commit(),
    )
    strict = (await (await e.start("strict-event")).result(timeout=5)).run_id
    with pytest.raises(InvalidInput, match="unknown field 'redy'; expected fields: ready"):
        await e.send_event(strict, "go", {"ready": True, "redy": True})

    loose = (await (await e.start("loose-event")).result(timeout=5)).run_id
    await e.send_event(loose, "go", {"ready": True, "extra": 1})
    assert (await e.handle(loose).result(timeout=5)).output == {"ready": True, "extra": 1}


async def test_a_model_without_a_by_field_is_not_handed_who_resumed(engine: EngineFactory) -> None:
    """The Slack buttons send ``by`` with every decision; it is recorded with the resume, not refused."""

    class Ok(BaseModel):
        approved: bool

    @step(id="gate", resume=Ok)
    async def gate(ctx: StepContext[object]) -> dict[str, bool]:
        decision = await ctx.suspend({})
        return {"approved": decision.approved}

    e = engine(Workflow(id="gate").then(gate).commit())
    run_id = (await (await e.start("gate")).result(timeout=5)).run_id
    result = await (await e.resume(run_id, data={"approved": True, "by": "U1"}, by="U1")).result(timeout=5)
    assert result.status == "success"
    [resumed] = [ev for ev in (await e.details(run_id)).events if ev.type == "run.resumed"]
    assert resumed.data["by"] == "U1"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return threadflow(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", *args, cwd=tmp_path,
                      env={"THREADFLOW_WORKSPACE": str(tmp_path / "workspace")})


def test_the_cli_answers_an_unknown_key_in_one_line_with_exit_2(tmp_path: Path) -> None:
    proc = cli(tmp_path, "run", "deploy-app", "--input", '{"goal": "a todo app"}')

    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: Invalid input of workflow 'deploy-app': unknown field 'goal'; expected fields: request, cost_threshold"
    ]
    assert cli(tmp_path, "runs", "--json").stdout.strip() == "[]"


@step(id="hello")
async def hello(ctx: StepContext[object]) -> dict[str, str]:
    return {"said": "hello"}


async def test_a_workflow_without_an_input_model_refuses_input_and_starts_nothing(engine: EngineFactory) -> None:
    """Declared without ``input=``, a workflow takes no input: data given to it would be dropped (or reach a
    step that does not expect it), so it is refused, naming how to declare it; no input (or ``{}``) is fine."""
    e = engine(Workflow(id="no-input").then(hello).commit())

    for given in ({"name": "Ada"}, "Ada", [1]):
        with pytest.raises(InvalidInput, match=r"Invalid input of workflow 'no-input': it takes no input \(it "
                                               r"declares no input model\)"):
            await e.start("no-input", given)
    assert await e.list_runs() == []
    for nothing in (None, {}):
        assert (await (await e.start("no-input", nothing)).result(timeout=5)).output == {"said": "hello"}


def test_the_cli_refuses_input_to_a_workflow_without_an_input_model_with_exit_2(tmp_path: Path) -> None:
    flows = {"THREADFLOW_WORKSPACE": str(tmp_path / "workspace"), "THREADFLOW_WORKFLOWS": "tests.helpers.versioned_flows:V1"}
    proc = threadflow(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", "run", "slow-after-approval", "--input",
                      '{"ticket": 7}', cwd=tmp_path, env=flows)

    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: Invalid input of workflow 'slow-after-approval': it takes no input")
    assert threadflow(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", "runs", "--json", cwd=tmp_path,
                      env=flows).stdout.strip() == "[]"
