"""``greet-user``: the smallest workflow, one typed step."""

from __future__ import annotations

from pydantic import BaseModel, Field

from workflows import StepContext, Workflow, step


class Name(BaseModel):
    name: str = Field(description="Who to greet.")


class Greeting(BaseModel):
    greeting: str


@step(id="greet", input=Name, output=Greeting)
async def greet(ctx: StepContext[Name]) -> Greeting:
    """Say hello."""
    return Greeting(greeting=f"Hello, {ctx.input.name}!")


greet_user = Workflow(id="greet-user", input=Name, output=Greeting, description="Greets someone by name.", title="Greet someone").then(greet).commit()
