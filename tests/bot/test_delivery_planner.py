"""The planner as plain functions: a run's events in, the messages Slack should show out."""

from __future__ import annotations

from typing import Any

from bot.delivery.planner import RunView, StepPresentation, plan
from storage.slack_store import SlackRun, WantedMessage
from workflows import WorkflowEvent

RUN = SlackRun(run_id="r1", team_id="T1", channel_id="C1", root_ts="100.000001", thread_id="slack:T1:C1:100.000001",
               started_by="U0ALICE", created_at=0.0)


def ev(id_: int, type_: str, path: str | None = None, **data: Any) -> WorkflowEvent:
    return WorkflowEvent(id=id_, run_id="r1", type=type_, path=path, data=data, at=float(id_))  # type: ignore[arg-type]


def describe(workflow_id: str, step_id: str, path: str = "") -> StepPresentation | None:
    return StepPresentation(post_output=True, name="planner") if step_id == "plan" else None


def by_key(wanted: list[WantedMessage]) -> dict[str, WantedMessage]:
    return {w.key: w for w in wanted}


def has_buttons(message: WantedMessage) -> bool:
    return any(b.get("type") == "actions" for b in message.content.get("blocks") or [])


EVENTS = [
    ev(1, "run.started", workflow_id="deploy", input={"request": "x"}, started_by="U0ALICE"),
    ev(2, "step.succeeded", "plan", step_id="plan", output={"text": "Use <!channel> & <b>"}),
    ev(3, "step.suspended", "approve", step_id="approve", payload={"title": "Deploy?", "cost": 300}),
    ev(4, "run.suspended", paths=["approve"]),
]


def test_a_suspended_run_wants_its_root_waiting_and_one_card_with_buttons() -> None:
    view = RunView(RUN)
    result = plan(view, EVENTS, describe)
    wanted = by_key(result.wanted)
    assert "waiting for approval" in str(wanted["root:r1"].content["blocks"])
    card = wanted["approval:r1:approve"]
    assert has_buttons(card) and card.thread_ts == RUN.root_ts and card.seq == 3
    assert [w.key for w in result.wanted if w.kind == "post"] == ["post:r1:2:output"]
    assert any("waiting for approval" in note for note in result.notes)


def test_text_that_did_not_come_from_the_bot_is_escaped() -> None:
    result = plan(RunView(RUN), EVENTS, describe)
    [post] = [w for w in result.wanted if w.kind == "post"]
    text = post.content["text"]
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp; &lt;b&gt;" in text


def test_a_decision_turns_the_card_into_who_decided_without_buttons() -> None:
    view = RunView(RUN)
    plan(view, EVENTS, describe)
    later = [ev(5, "run.resumed", "approve", step_id="approve", by="U0BOB", data={"approved": False, "reason": "<too> much"}),
             ev(6, "run.finished", status="failed", error={"message": "Rejected by U0BOB", "path": "approve"})]
    result = plan(view, later, describe)
    card = by_key(result.wanted)["approval:r1:approve"]
    assert not has_buttons(card) and "Rejected by <@U0BOB>: &lt;too&gt; much" in card.content["text"]
    assert [w.key for w in result.wanted if w.kind == "post"] == ["post:r1:6:result"]
    assert ":x: failed" in str(by_key(result.wanted)["root:r1"].content["blocks"])


def test_a_canceled_run_withdraws_its_open_card() -> None:
    view = RunView(RUN)
    plan(view, EVENTS, describe)
    result = plan(view, [ev(5, "run.canceled", by="U0BOB")], describe)
    card = by_key(result.wanted)["approval:r1:approve"]
    assert not has_buttons(card) and "canceled by <@U0BOB>" in card.content["text"]


def test_an_agent_steps_long_answer_is_posted_whole_with_a_short_notification() -> None:
    """Where the answer is not streamed, the post is what people read: a 6,000-character answer must be shown
    to its end (a markdown block holds 12,000; a section would cut it at 3,000), its ``text`` stays short."""
    answer = "".join(f"Point {i}: check the exit code of every command in the deploy script.\n" for i in range(90))
    answer += "THE END."
    events = [EVENTS[0], ev(2, "step.succeeded", "plan", step_id="plan", output={"text": answer})]
    [post] = [w for w in plan(RunView(RUN), events, describe).wanted if w.kind == "post"]
    [shown] = [b for b in post.content["blocks"] if b["type"] == "markdown"]
    assert len(answer) > 6000 and shown["text"].endswith("THE END.")
    assert len(post.content["text"]) <= 3000


def test_replaying_the_same_events_plans_the_same_messages() -> None:
    first = plan(RunView(RUN), EVENTS, describe)
    second = plan(RunView(RUN), EVENTS, describe)
    assert first.wanted == second.wanted  # the outbox keys make a replay insert nothing new


def test_events_already_planned_want_no_posts_only_the_cards() -> None:
    view = RunView(RUN)
    for e in EVENTS:
        view.apply(e)  # replayed from offset 0, already past the render offset
    result = plan(view, [], describe)
    assert {w.kind for w in result.wanted} == {"root", "approval"} and result.notes == []


def test_a_stranded_run_says_so_once_in_its_thread() -> None:
    view = RunView(RUN)
    plan(view, EVENTS, describe)
    message = "This run is on version 1 (e0eaf3f7) of deploy, which no running process has."
    result = plan(view, [ev(5, "run.stranded", workflow_id="deploy", version="1", message=message)], describe)
    [post] = [w for w in result.wanted if w.kind == "post"]
    assert post.key == "post:r1:5:stranded" and "version 1 (e0eaf3f7)" in post.content["text"]
    assert plan(view, [], describe).wanted == [w for w in result.wanted if w.kind != "post"]  # nothing new later


def test_reject_with_reason_is_offered_only_when_the_step_takes_a_reason() -> None:
    def with_reason(workflow_id: str, step_id: str, path: str) -> StepPresentation:
        return StepPresentation(post_output=False, name=step_id, accepts_reason=True)

    def buttons(result_wanted: list[WantedMessage]) -> list[str]:
        card = by_key(result_wanted)["approval:r1:approve"]
        return [e["action_id"] for b in card.content["blocks"] if b["type"] == "actions" for e in b["elements"]]

    assert buttons(plan(RunView(RUN), EVENTS, with_reason).wanted) == ["approve", "reject", "reject_with_reason"]
    assert buttons(plan(RunView(RUN), EVENTS, describe).wanted) == ["approve", "reject"]


def root_text(result_wanted: list[WantedMessage]) -> str:
    return str(by_key(result_wanted)["root:r1"].content["text"])


def test_a_run_that_wakes_from_a_sleep_or_an_event_shows_running_again() -> None:
    """Claiming a woken run writes no event: the first thing it does (a step starts, the event is taken) says so."""
    view = RunView(RUN)
    started = [ev(1, "run.started", workflow_id="nap"), ev(2, "step.succeeded", "prepare", step_id="prepare")]
    asleep = plan(view, [*started, ev(3, "run.waiting", until=60.0, events=[], suspended=[])], describe)
    assert root_text(asleep.wanted).endswith(": waiting")
    assert root_text(plan(view, [ev(4, "step.started", "work", step_id="work")], describe).wanted).endswith(": running")

    view = RunView(RUN)
    waiting = [*started, ev(3, "step.suspended", "wait-go", step_id="wait-go", event="go"),
               ev(4, "run.waiting", until=None, events=["go"], suspended=[])]
    assert root_text(plan(view, waiting, describe).wanted).endswith(": waiting")
    arrived = plan(view, [ev(5, "event.received", "wait-go", step_id="wait-go", event="go")], describe)
    assert root_text(arrived.wanted).endswith(": running")


def test_a_branch_working_beside_one_awaiting_approval_shows_running_until_the_run_halts_again() -> None:
    """As the run's record says (the woken run is ``running``), and its open approval card keeps its buttons."""
    view = RunView(RUN)
    halted = [ev(1, "run.started", workflow_id="deploy"),
              ev(2, "step.suspended", "branches/0/approve", step_id="approve", payload={"title": "Deploy?"}),
              ev(3, "run.suspended", paths=["branches/0/approve"], until=60.0)]
    assert root_text(plan(view, halted, describe).wanted).endswith(": suspended")
    working = plan(view, [ev(4, "step.started", "branches/1/build", step_id="build")], describe)
    assert root_text(working.wanted).endswith(": running")
    assert has_buttons(by_key(working.wanted)["approval:r1:branches/0/approve"])
    assert "waiting for approval" in str(by_key(working.wanted)["root:r1"].content["blocks"])
    again = [ev(5, "step.succeeded", "branches/1/build", step_id="build"),
             ev(6, "run.suspended", paths=["branches/0/approve"])]
    assert root_text(plan(view, again, describe).wanted).endswith(": suspended")
