"""Language models and embedders behind one small protocol: which one a name means, and the settings.

Why our own protocol instead of passing the OpenAI client around: agents, memory summaries and tests
all need "messages in, text or tool calls out", and the offline model (no network, deterministic) must
be a drop-in so every example runs without a key. The pieces live in their own modules and are all
importable from here: the shapes (:mod:`workflows.model_types`), the OpenAI client
(:mod:`workflows.openai_model`), what servers refuse (:mod:`workflows.model_capabilities`), streamed
answers (:mod:`workflows.model_streaming`) and the offline model (:mod:`workflows.offline_model`).

Token counts that we estimate ourselves (offline usage, memory budgets) use ``len(text) / 4``: close
enough for English prose to budget context, and free.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from .env_settings import number_setting
from .errors import DefinitionError
from .model_capabilities import PROFILES, ModelProfile, forget_capabilities, resolve_profile
from .model_streaming import StreamAssembler, response_events, stream_or_complete
from .model_types import (
    CallOptions,
    Embedder,
    Message,
    Model,
    ModelResponse,
    OutputMode,
    ResponseDone,
    StreamEvent,
    StreamingModel,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolSpec,
    Usage,
    estimate_tokens,
)
from .offline_model import OfflineModel, fill_schema
from .openai_chat import OpenAIChatModel
from .openai_model import DEFAULT_MODEL_RETRY, MAX_RETRY_AFTER, OpenAIEmbedder

DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"

__all__ = [
    "DEFAULT_MODEL_RETRY",
    "DEFAULT_OPENAI_MODEL",
    "MAX_RETRY_AFTER",
    "PROFILES",
    "CallOptions",
    "Embedder",
    "FunctionModel",
    "Message",
    "Model",
    "ModelConfig",
    "ModelProfile",
    "ModelResponse",
    "OfflineModel",
    "OpenAIChatModel",
    "OpenAIEmbedder",
    "OutputMode",
    "ResponseDone",
    "StreamAssembler",
    "StreamEvent",
    "StreamingModel",
    "TextDelta",
    "ToolCall",
    "ToolCallDone",
    "ToolSpec",
    "Usage",
    "estimate_tokens",
    "fill_schema",
    "forget_capabilities",
    "model_max_attempts",
    "model_timeout",
    "resolve_embedder",
    "resolve_model",
    "resolve_profile",
    "stream_or_complete",
]


class FunctionModel:
    """A model whose answers come from a function: for tests and demos that script the conversation."""

    def __init__(
        self,
        fn: Callable[[list[Message], list[ToolSpec], dict[str, Any] | None], Awaitable[ModelResponse]],
        name: str = "function",
    ) -> None:
        self.fn = fn
        self.name = name

    async def complete(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> ModelResponse:
        return await self.fn(messages, tools, output_schema)

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The function's one answer as a single text delta, its tool calls, and the end."""
        async for event in response_events(await self.fn(messages, tools, output_schema)):
            yield event


# -- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Model settings from a settings object (attributes of the same names) or the environment."""

    model: str | None = None
    embedder: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    timeout: float = 60.0
    max_attempts: int = 4
    profile: str | None = None

    @classmethod
    def load(cls, settings: object | None = None) -> ModelConfig:
        def pick(attr: str, env: str) -> str | None:
            value = getattr(settings, attr, None) if settings is not None else None
            if value is not None and hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            return str(value) if value not in (None, "") else (os.environ.get(env) or None)

        return cls(
            model=pick("model", "THREADFLOW_MODEL"),
            embedder=pick("embedder", "THREADFLOW_EMBEDDER"),
            openai_api_key=pick("openai_api_key", "OPENAI_API_KEY"),
            openai_base_url=pick("openai_base_url", "OPENAI_BASE_URL"),
            timeout=model_timeout(pick("model_timeout", "THREADFLOW_MODEL_TIMEOUT")),
            max_attempts=model_max_attempts(pick("model_max_attempts", "THREADFLOW_MODEL_MAX_ATTEMPTS")),
            profile=pick("model_profile", "THREADFLOW_MODEL_PROFILE"),
        )


def model_timeout(text: str | None = None) -> float:
    """Seconds one model request may take: ``text``, else ``THREADFLOW_MODEL_TIMEOUT``, else 60.

    Checked here (not left to ``float()``) so a typo names the setting instead of failing every agent
    call with "could not convert string to float"; ``threadflow doctor`` calls this too."""
    value = number_setting("THREADFLOW_MODEL_TIMEOUT", text, float, lambda v: v > 0,  # (NaN is not > 0)
                           "a number of seconds above 0, like 60")
    return 60.0 if value is None else value


def model_max_attempts(text: str | None = None) -> int:
    """Tries of one model request: ``text``, else ``THREADFLOW_MODEL_MAX_ATTEMPTS``, else 4 (see :func:`model_timeout`)."""
    value = number_setting("THREADFLOW_MODEL_MAX_ATTEMPTS", text, int, lambda v: v >= 1,
                           "a whole number of tries, 1 or more, like 4")
    return 4 if value is None else value


def resolve_model(
    spec: str | Model | None = None, settings: object | None = None, *, profile: str | ModelProfile | None = None
) -> Model:
    """``"openai:<name>"``, ``"offline"`` or a :class:`Model`; ``None`` means ``THREADFLOW_MODEL``, else
    ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else the offline model.

    ``profile`` (else ``THREADFLOW_MODEL_PROFILE``, else ``openai``) tells an ``openai:`` model what to
    assume about the server (see :mod:`workflows.model_capabilities`); an unknown name is an error even
    for the offline model, so a typo is found before a real server is configured.
    """
    if spec is not None and not isinstance(spec, str):
        return spec
    cfg = ModelConfig.load(settings)
    chosen = resolve_profile(profile if profile is not None else cfg.profile)
    spec = spec or cfg.model or (DEFAULT_OPENAI_MODEL if cfg.openai_api_key else "offline")
    if spec == "offline":
        return OfflineModel()
    provider, _, name = spec.partition(":")
    if provider == "openai" and name:
        return OpenAIChatModel(name, profile=chosen, **_openai_options(cfg, spec))
    raise DefinitionError(
        f"Model {spec!r} is not known. Use 'openai:<model>' (for example {DEFAULT_OPENAI_MODEL!r}) "
        "or 'offline' for the deterministic model that needs no network."
    )


def resolve_embedder(spec: str | Embedder | None = None, settings: object | None = None) -> Embedder | None:
    """``"openai:<name>"`` or an :class:`Embedder`; ``None`` means ``THREADFLOW_EMBEDDER`` or no vectors."""
    if spec is not None and not isinstance(spec, str):
        return spec
    cfg = ModelConfig.load(settings)
    spec = spec or cfg.embedder
    if not spec:
        return None
    provider, _, name = spec.partition(":")
    if provider == "openai" and name:
        return OpenAIEmbedder(name, **_openai_options(cfg, spec))
    raise DefinitionError(
        f"Embedder {spec!r} is not known. Use 'openai:<model>' (for example 'openai:text-embedding-3-small'), "
        "or leave THREADFLOW_EMBEDDER unset to recall with full-text search only."
    )


def _openai_options(cfg: ModelConfig, spec: str) -> dict[str, Any]:
    if not cfg.openai_api_key:
        raise DefinitionError(
            f"{spec!r} needs an API key: set OPENAI_API_KEY, or use model='offline' to run without one."
        )
    return {
        "api_key": cfg.openai_api_key,
        "base_url": cfg.openai_base_url,
        "timeout": cfg.timeout,
        "retry": replace(DEFAULT_MODEL_RETRY, attempts=cfg.max_attempts),
    }


