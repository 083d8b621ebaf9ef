"""``threadflow doctor``'s model checks: one probe per capability the registered agents use.

Capabilities: plain chat and streaming (the Slack thread chat answers in text, streamed), structured
output (an agent step with an output model), tools (an agent with tools). Each probe is one call through
the same client the agents use, so it learns what the server refuses exactly as a run would, and the
report says what works and what will fall back (``[warn]``) or cannot work (``[FAIL]``: tools refused).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from workflows.models import OpenAIChatModel
    from workflows.workflow import CommittedWorkflow

Capability = Literal["chat", "structured", "tools", "streaming"]
Status = Literal["ok", "fail", "warn"]
PROBE_PROMPT = [{"role": "user", "content": "Reply with the single word OK."}]
_PING = {"type": "function", "function": {"name": "ping", "description": "Answers pong.",
                                          "parameters": {"type": "object", "properties": {}}}}


class _Probe(BaseModel):
    ok: bool


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: Status
    detail: str


def capabilities_used(workflows: Sequence[CommittedWorkflow]) -> list[Capability]:
    """What the registered workflows' agents need from the model server, in probing order."""
    from workflows.agent import known_agents
    from workflows.agent_step import AgentText

    used: list[Capability] = ["chat"]
    names: set[str] = set()
    structured = False
    for wf in workflows:
        for step in wf.steps():
            agent = step.metadata.get("agent")
            if agent:
                names.add(str(agent))
                structured = structured or (step.output is not None and step.output is not AgentText)
        chat_agent = getattr(wf, "chat_agent", None)
        if chat_agent is not None:
            names.add(chat_agent.name)
    if structured:
        used.append("structured")
    if any(a.name in names and (a.tools or (a.memory is not None and a.memory.tools())) for a in known_agents()):
        used.append("tools")
    used.append("streaming")  # the Slack thread chat streams its answers
    return used


async def probe(model: OpenAIChatModel, capability: Capability) -> ProbeResult:
    """One call for ``capability``; what works, what falls back, what fails."""
    from workflows.errors import ThreadflowError

    runner = _PROBES[capability]
    try:
        return await runner(model)
    except ThreadflowError as exc:
        status: Status = "fail"
        return ProbeResult(_NAMES[capability], status, str(exc))


async def _chat(model: OpenAIChatModel) -> ProbeResult:
    await model.complete(list(PROBE_PROMPT), [], None)
    return ProbeResult(_NAMES["chat"], "ok", "plain chat works.")


async def _structured(model: OpenAIChatModel) -> ProbeResult:
    from workflows.structured import extract_json, quote_reply

    response = await model.complete(
        [{"role": "user", "content": 'Answer with the JSON object {"ok": true}.'}], [], _Probe.model_json_schema()
    )
    refused = [m for m in ("json_schema", "json_object") if m in model.capabilities.refused_modes]
    found = extract_json(response.text or "")
    fits = found is not None and _fits(found)
    mode = response.output_mode or "json_schema"
    if not refused and mode == "json_schema":
        detail = "json_schema works."
    else:
        how = {"json_object": "json_object with the schema in the instructions",
               "text": "plain text with the schema in the instructions, the JSON taken from the answer",
               "json_schema": "json_schema"}[mode]
        said = f"the server refused {', '.join(refused)}; " if refused else f"profile {model.profile.name}: "
        detail = f"{said}agents will use {how}."
    if not fits:
        return ProbeResult(_NAMES["structured"], "warn", detail + " The probe's answer did not fit its schema "
                           f"({quote_reply(response.text, 120)}); agents re-ask once with the error, then fail.")
    return ProbeResult(_NAMES["structured"], "ok" if mode == "json_schema" and not refused else "warn", detail)


def _fits(text: str) -> bool:
    from pydantic import ValidationError

    try:
        _Probe.model_validate_json(text)
    except ValidationError:
        return False
    return True


async def _tools(model: OpenAIChatModel) -> ProbeResult:
    response = await model.complete([{"role": "user", "content": "Call the ping tool."}], [_PING], None)
    if response.tool_calls:
        return ProbeResult(_NAMES["tools"], "ok", "tools work (the model called the probe's tool).")
    return ProbeResult(_NAMES["tools"], "ok", "the server accepts tools (the model answered without calling "
                       "the probe's tool, which it may do).")


async def _streaming(model: OpenAIChatModel) -> ProbeResult:
    from workflows.model_types import TextDelta

    pieces = [event async for event in model.stream(list(PROBE_PROMPT), [], None) if isinstance(event, TextDelta)]
    caps = model.capabilities
    if "stream_options" in caps.refused_params or not caps.sends("stream_options", model.profile):
        return ProbeResult(_NAMES["streaming"], "warn", f"streaming works ({len(pieces)} piece(s)); the server "
                           "takes no stream_options, so the tokens of streamed answers are estimated.")
    return ProbeResult(_NAMES["streaming"], "ok", f"streaming works ({len(pieces)} piece(s), usage reported).")


_NAMES: dict[Capability, str] = {"chat": "Model", "structured": "Model structured output", "tools": "Model tools",
                                 "streaming": "Model streaming"}
_PROBES: dict[Capability, Callable[[OpenAIChatModel], Awaitable[ProbeResult]]] = {
    "chat": _chat, "structured": _structured, "tools": _tools, "streaming": _streaming}
