"""A workflow whose chat agent has a tool that answers at length, loaded through THREADFLOW_WORKFLOWS: its task
card's output is longer than Slack takes in one field (256 characters)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from workflows import Agent, Workflow, step, tool


class Day(BaseModel):
    day: str = Field(description="The day, e.g. Monday.")


#: What the almanac says: far more than the 256 characters of a task card's output.
ALMANAC = "Sunrise 06:12, sunset 19:48. " * 25


@tool
async def get_almanac(args: Day) -> str:
    """Everything the almanac says about a day."""
    return ALMANAC


almanac_desk = Agent("almanac-desk", "You answer questions about the almanac.", tools=[get_almanac])


class Nothing(BaseModel):
    pass


@step(id="noop", input=Nothing, output=Nothing)
async def noop(ctx: object) -> Nothing:
    return Nothing()


almanac = Workflow(id="almanac", input=Nothing, chat_agent=almanac_desk).then(noop).commit()
