"""A committed workflow exported as a graph: every construct becomes nodes and edges a page can draw, and
each node's key finds the step instances a run recorded (loop iterations and foreach items included)."""

from __future__ import annotations

from pydantic import BaseModel

from workflows import StepContext, Workflow, step
from workflows.examples.deploy_app import deploy_app
from workflows.graph_export import path_key, workflow_graph


class Num(BaseModel):
    n: int


class Nums(BaseModel):
    items: list[int]


def make(step_id: str, **kw: object) -> object:
    @step(id=step_id, input=Num, output=Num, **kw)  # type: ignore[arg-type]
    async def body(ctx: StepContext[Num]) -> Num:
        return ctx.input

    return body


def test_path_keys_drop_iterations_and_items() -> None:
    assert path_key("terraform-round#2/validate") == "terraform-round/validate"
    assert path_key("review[3]/approve") == "review/approve"
    assert path_key("outer#0/inner[12]/leaf#1") == "outer/inner/leaf"
    assert path_key("plain") == "plain"


def test_a_sequence_runs_from_start_to_end() -> None:
    wf = Workflow(id="seq", input=Num, output=Num).then(make("a")).then(make("b")).commit()
    g = workflow_graph(wf)
    assert [(e.source, e.target) for e in g.edges] == [("a", "b"), ("__start__", "a"), ("b", "__end__")]
    assert g.keys() == {"a", "b"}


def test_parallel_fans_out_and_joins() -> None:
    wf = (Workflow(id="par", input=Num).then(make("first")).parallel([make("left"), make("right")])
          .map(lambda v: Num(n=1), output=Num).commit())
    g = workflow_graph(wf)
    fork = next(n for n in g.nodes if n.kind == "parallel")
    join = next(n for n in g.nodes if n.kind == "join")
    pairs = {(e.source, e.target) for e in g.edges}
    assert {("first", fork.id), (fork.id, "left"), (fork.id, "right"), ("left", join.id), ("right", join.id)} <= pairs
    assert any(e.source == join.id and e.target.startswith("map") for e in g.edges)


def test_deploy_app_has_its_loop_around_a_nested_workflow() -> None:
    g = workflow_graph(deploy_app)
    by_id = {n.id: n for n in g.nodes}
    loop = next(n for n in g.nodes if n.kind == "loop")
    nested = by_id["terraform-round"]
    assert nested.kind == "workflow" and nested.parent == loop.id and "3 iterations" in (loop.detail or "")
    assert by_id["terraform-round/validate"].parent == "terraform-round"
    assert by_id["approve-cost"].kind == "approval" and by_id["plan"].kind == "agent"
    back = [e for e in g.edges if e.back]
    assert [(e.source, e.target) for e in back] == [("terraform-round/validate", "terraform-round/terraform")]
    assert {"plan", "architecture", "terraform-round", "terraform-round/terraform", "approve-cost", "deploy"} <= g.keys()


def test_foreach_sleep_and_wait_are_nodes_with_keys() -> None:
    @step(id="each", input=Num, output=Num)
    async def each(ctx: StepContext[Num]) -> Num:
        return ctx.input

    wf = (Workflow(id="misc", input=Nums).foreach(each, concurrency=2, items=lambda v: [{"n": i} for i in v.items])
          .sleep(5, id="nap").wait_for_event("go").commit())
    g = workflow_graph(wf)
    kinds = {n.id: n.kind for n in g.nodes}
    assert kinds["each/__foreach__"] == "foreach" and kinds["nap"] == "sleep" and kinds["wait-go"] == "wait"
    assert next(n for n in g.nodes if n.id == "each").parent == "each/__foreach__"
