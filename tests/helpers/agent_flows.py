"""Workflows with agents that call tools, loaded through THREADFLOW_WORKFLOWS in the streaming tests.

The offline model calls every tool whose name the prompt mentions, then answers quoting the tools' results,
so a prompt naming ``get_weather`` makes one tool call and a prompt naming both tools makes two (a plan).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from workflows import Agent, Workflow, agent_step, tool


class City(BaseModel):
    city: str = Field(description="The city, e.g. Oslo.")


#: Seconds a weather tool takes: long enough for a task card to be seen in progress before it completes.
TOOL_SECONDS = 0.3


@tool
async def get_weather(args: City) -> str:
    """The weather in a city right now."""
    await asyncio.sleep(TOOL_SECONDS)
    return f"Sunny and 21 degrees in {args.city}."


@tool
async def get_forecast(args: City) -> str:
    """Tomorrow's weather in a city."""
    await asyncio.sleep(TOOL_SECONDS)
    return f"Rain tomorrow in {args.city}."


@tool
async def broken_radar(args: City) -> str:
    """A radar that is down."""
    raise RuntimeError(f"the radar over {args.city} is down")


forecaster = Agent("forecaster", "You answer questions about the weather. Use the tools.",
                   tools=[get_weather, get_forecast, broken_radar])
weather_desk = Agent("weather-desk", "You answer questions about the weather.", tools=[get_weather])


class Question(BaseModel):
    question: str = Field("What is the weather in Oslo? Use get_weather.", description="What to ask.")


weather = (
    Workflow(id="weather", input=Question, title="Ask about the weather", chat_agent=weather_desk,
             description="A forecaster agent with weather tools.")
    .then(agent_step(forecaster, id="forecast", input=Question, prompt="{question}"))
    .commit()
)
