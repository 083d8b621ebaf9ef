"""What an OpenAI-compatible server can do: profiles to start from, and what it refused, remembered.

Servers that speak the OpenAI API differ in what they accept. Some refuse ``response_format`` of type
``json_schema`` (llama.cpp builds before late 2024 answer HTTP 500 "response_format type must be one of
"text" or "json_object""), some refuse ``json_object`` (LM Studio: 400 "'response_format.type' must be
'json_schema' or 'text'"), some refuse ``tools`` unless started with a flag (vLLM: 400 ""auto" tool
choice requires --enable-auto-tool-choice and --tool-call-parser to be set"; llama.cpp: 500 "tools param
requires --jinja flag"; Ollama: 400 "MODEL does not support tools"), and some refuse optional parameters
(``parallel_tool_calls``, ``stream_options``, ``strict``, ``tool_choice`` values).

A **profile** (``THREADFLOW_MODEL_PROFILE`` or ``Agent(profile=...)``) says where to start: which
structured-output modes to try, in order, and which optional parameters never to send. On top of it,
each refusal the server gives is learned once per process for its (base URL, model): the call is retried
without the refused thing, and every later call leaves it out from the start, so a refusal costs one
extra request per process, not one per call.

A refusal is recognised by what the server says (it names the parameter, or is one of the known
answers above) whatever the HTTP status: llama.cpp refuses with 500, which must not be retried as an
outage. An error that names nothing stays an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import DefinitionError
from .model_types import OutputMode
from .observe import emit

log = logging.getLogger("threadflow.models")

#: The optional request parameters that are dropped when a server refuses them.
OPTIONAL_PARAMS = ("stream_options", "parallel_tool_calls", "tool_choice", "strict")

PROFILE_NAMES = ("openai", "ollama", "vllm", "llamacpp", "lmstudio", "generic")


@dataclass(frozen=True)
class ModelProfile:
    """What to assume about a server family before it has refused anything."""

    name: str
    #: Structured-output modes to try, in order; ``text`` (no ``response_format``) always ends the chain.
    output_modes: tuple[OutputMode, ...] = ("json_schema", "json_object", "text")
    #: Optional parameters never sent (the family ignores them silently, or refuses them unrecognisably).
    never_send: frozenset[str] = frozenset()
    #: Give the schema in the instructions in ``json_schema`` mode too (for servers that may ignore it).
    schema_in_instructions: bool = False
    #: Put the schema inside ``{"type": "json_object", "schema": ...}`` (llama.cpp turns it into a grammar).
    json_object_schema: bool = False
    #: What to change on the server when it refuses ``tools``.
    tools_hint: str = "Use a model and server with tool (function) calling enabled, or give this agent no tools."
    summary: str = ""


PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(
            "openai",
            summary="json_schema structured output, every optional parameter, stream usage reported.",
        ),
        ModelProfile(
            "vllm",
            tools_hint="Start vLLM with --enable-auto-tool-choice and a --tool-call-parser that fits the model "
            "(for example --tool-call-parser hermes).",
            summary="json_schema (guided decoding); tools need the server flags --enable-auto-tool-choice "
            "and --tool-call-parser.",
        ),
        ModelProfile(
            "ollama",
            never_send=frozenset({"parallel_tool_calls", "tool_choice", "strict"}),
            schema_in_instructions=True,
            tools_hint="Use a model whose template supports tools (`ollama show MODEL` lists 'tools' under "
            "Capabilities), or give this agent no tools.",
            summary="json_schema with the schema also in the instructions (older Ollama ignores it without "
            "an error); tool_choice, parallel_tool_calls and strict are not sent (Ollama ignores them).",
        ),
        ModelProfile(
            "llamacpp",
            json_object_schema=True,
            tools_hint="Start llama-server with --jinja (and a chat template that supports tools).",
            summary="json_schema, else json_object carrying the schema as a grammar; tools need --jinja.",
        ),
        ModelProfile(
            "lmstudio",
            output_modes=("json_schema", "text"),
            tools_hint="Load a model with tool-use support in LM Studio, or give this agent no tools.",
            summary="json_schema, else plain text (LM Studio refuses json_object).",
        ),
        ModelProfile(
            "generic",
            output_modes=("text",),
            never_send=frozenset(OPTIONAL_PARAMS),
            summary="plain chat only: the schema in the instructions and the JSON taken from the answer; "
            "no optional parameters.",
        ),
    )
}


def resolve_profile(name: str | ModelProfile | None = None) -> ModelProfile:
    """A profile by name; None means ``THREADFLOW_MODEL_PROFILE``, else ``openai`` (learning refusals)."""
    if isinstance(name, ModelProfile):
        return name
    name = (name or os.environ.get("THREADFLOW_MODEL_PROFILE") or "openai").strip().lower()
    profile = PROFILES.get(name)
    if profile is None:
        raise DefinitionError(
            f"Model profile {name!r} is not known. Use one of {', '.join(PROFILE_NAMES)} "
            "(THREADFLOW_MODEL_PROFILE or Agent(profile=...)); see the README's model server section."
        )
    return profile


# -- what one server refused ----------------------------------------------------------------------------


@dataclass
class ServerCapabilities:
    """What one (base URL, model) refused in this process."""

    key: tuple[str, str]
    refused_modes: set[OutputMode] = field(default_factory=set)
    refused_params: set[str] = field(default_factory=set)
    refused_tool_choices: set[str] = field(default_factory=set)
    stream_with_tools_refused: bool = False
    #: The structured-output mode that worked (None until one did): no more probing needed.
    confirmed_mode: OutputMode | None = None
    _lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def output_mode(self, profile: ModelProfile) -> OutputMode:
        for mode in profile.output_modes:
            if mode not in self.refused_modes:
                return mode
        return "text"

    def sends(self, param: str, profile: ModelProfile) -> bool:
        return param not in profile.never_send and param not in self.refused_params

    def probe_lock(self) -> asyncio.Lock:
        """Serialises structured calls until one mode is confirmed, so concurrent first calls probe once."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    def learn(self, refusal: Refusal, model: str) -> str:
        """Remember ``refusal``; returns the capability name that now falls back (for logs and metrics)."""
        what: str
        if refusal.kind == "response_format" and refusal.mode is not None:
            self.refused_modes.add(refusal.mode)
            what = refusal.mode
        elif refusal.kind == "tool_choice" and refusal.value is not None:
            self.refused_tool_choices.add(refusal.value)
            what = "tool_choice"
        elif refusal.kind == "stream":
            self.stream_with_tools_refused = True
            what = "stream_with_tools"
        elif refusal.param is not None:
            self.refused_params.add(refusal.param)
            what = refusal.param
        else:  # tools refusals are not remembered: the server may be restarted with the flag
            return "tools"
        log.info("model server %s (%s) refused %s; falling back: %s", self.key[0], model, what, refusal.text)
        emit("llm.fallback", model=model, capability=what)
        return what


_known: dict[tuple[str, str], ServerCapabilities] = {}


def capabilities_for(base_url: str | None, model: str) -> ServerCapabilities:
    """The process-wide record for this server and model (created empty on first use)."""
    key = ((base_url or "https://api.openai.com/v1").rstrip("/"), model)
    found = _known.get(key)
    if found is None:
        found = _known[key] = ServerCapabilities(key)
    return found


def forget_capabilities() -> None:
    """Forget every learned refusal (for tests, and after reconfiguring a server in a long-lived process)."""
    _known.clear()


# -- recognising refusals -------------------------------------------------------------------------------

RefusalKind = Literal["response_format", "param", "tool_choice", "tools", "stream"]


@dataclass(frozen=True)
class Refusal:
    kind: RefusalKind
    text: str
    mode: OutputMode | None = None
    param: str | None = None
    value: str | None = None


_TOOLS_REFUSED = re.compile(
    r"does not support tools|--enable-auto-tool-choice|tools param requires|unsupported param: tools"
    r"|support tool use|tool use is not supported|tools? (?:are|is) not supported"
    r"|(?:function|tool) calling (?:is )?not (?:supported|enabled)|does not support (?:function|tool) calling"
    # a server that names the ``tools`` field itself as unknown ("Unrecognized request argument supplied:
    # tools", pydantic's "Extra inputs are not permitted" at body.tools): not ``tool_choice``, ``tool_calls``
    r"|(?:unrecognized|unknown|unsupported|not permitted|not allowed|extra inputs?)[^.\n]{0,60}\btools\b(?![_.])"
    r"|\btools\b(?![_.])[^.\n]{0,30}(?:not permitted|not allowed|unsupported|not supported|unrecognized)",
    re.IGNORECASE,
)
_STREAM_WITH_TOOLS = re.compile(r"tools with stream|stream(?:ing)? (?:with|and) tools", re.IGNORECASE)
_RESPONSE_FORMAT = re.compile(r"response_format|response format|json_schema|json_object|structured output",
                              re.IGNORECASE)
#: Statuses that say nothing about capabilities (auth, missing model, rate limits, conflicts).
_NOT_REFUSALS = {401, 403, 404, 408, 409, 429}


def classify_refusal(status: int, text: str, request: dict[str, Any]) -> Refusal | None:
    """The capability ``request`` asked for that the server's error (``status``, ``text``) refuses, if any."""
    if status in _NOT_REFUSALS or status < 400:
        return None
    lowered = text.lower()
    if request.get("tools") and _TOOLS_REFUSED.search(text):
        return Refusal("tools", text)
    if request.get("stream") and request.get("tools") and _STREAM_WITH_TOOLS.search(text):
        return Refusal("stream", text)
    for param in OPTIONAL_PARAMS:
        if not _sent(request, param):
            continue
        if param in lowered or param.replace("_", " ") in lowered:
            if param == "tool_choice":
                choice = request["tool_choice"]
                return Refusal("tool_choice", text, value=choice if isinstance(choice, str) else "named")
            return Refusal("param", text, param=param)
    response_format = request.get("response_format")
    if response_format and _RESPONSE_FORMAT.search(text):
        return Refusal("response_format", text, mode=response_format.get("type"))
    return None


def _sent(request: dict[str, Any], param: str) -> bool:
    if param == "strict":
        schema = (request.get("response_format") or {}).get("json_schema") or {}
        return "strict" in schema or any("strict" in (t.get("function") or {}) for t in request.get("tools") or [])
    return param in request


def tools_hint(text: str, profile: ModelProfile) -> str:
    """What to change on the server, from its own words when they name the family, else the profile's."""
    lowered = text.lower()
    if "--enable-auto-tool-choice" in lowered:
        return PROFILES["vllm"].tools_hint
    if "--jinja" in lowered:
        return PROFILES["llamacpp"].tools_hint
    if "does not support tools" in lowered:
        return PROFILES["ollama"].tools_hint
    return profile.tools_hint
