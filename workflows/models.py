"""Language models and embedders behind one small protocol, plus the offline model.

Why our own protocol instead of passing the OpenAI client around: agents, memory summaries and tests
all need "messages in, text or tool calls out", and the offline model (no network, deterministic) must
be a drop-in so every example runs without a key. Retries live here, not in the SDK (``max_retries=0``),
so their policy is ours: jittered exponential backoff, ``Retry-After`` respected, and a clear
:class:`ModelError` at the end that never contains the API key.

Token counts that we estimate ourselves (offline usage, memory budgets) use ``len(text) / 4``: close
enough for English prose to budget context, and free.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .errors import DefinitionError, ModelError
from .step import RetryPolicy

if TYPE_CHECKING:
    import openai

#: An OpenAI function-tool declaration: ``{"type": "function", "function": {name, description, parameters}}``.
ToolSpec: TypeAlias = dict[str, Any]
Message: TypeAlias = dict[str, Any]

DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"


def estimate_tokens(text: str) -> int:
    """A rough token count (characters / 4), used for budgets and offline usage; never for billing."""
    return (len(text) + 3) // 4


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class ModelResponse(BaseModel):
    text: str | None = None
    tool_calls: list[ToolCall] = []
    usage: Usage = Usage()
    model: str


@runtime_checkable
class Model(Protocol):
    """What an agent needs from a language model."""

    name: str

    async def complete(
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> ModelResponse: ...


@runtime_checkable
class Embedder(Protocol):
    name: str

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


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
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> ModelResponse:
        return await self.fn(messages, tools, output_schema)


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
            timeout=float(pick("model_timeout", "THREADFLOW_MODEL_TIMEOUT") or 60.0),
            max_attempts=int(pick("model_max_attempts", "THREADFLOW_MODEL_MAX_ATTEMPTS") or 4),
        )


def resolve_model(spec: str | Model | None = None, settings: object | None = None) -> Model:
    """``"openai:<name>"``, ``"offline"`` or a :class:`Model`; ``None`` means ``THREADFLOW_MODEL``, else
    ``openai:gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else the offline model."""
    if spec is not None and not isinstance(spec, str):
        return spec
    cfg = ModelConfig.load(settings)
    spec = spec or cfg.model or (DEFAULT_OPENAI_MODEL if cfg.openai_api_key else "offline")
    if spec == "offline":
        return OfflineModel()
    provider, _, name = spec.partition(":")
    if provider == "openai" and name:
        return OpenAIChatModel(name, **_openai_options(cfg, spec))
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


# -- OpenAI -------------------------------------------------------------------------------------------


#: Small defaults: a chat turn should fail within seconds, not minutes, when the API is down.
DEFAULT_MODEL_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_backoff=8.0)
#: A Retry-After longer than this is capped: a step should not sleep for minutes inside one attempt.
MAX_RETRY_AFTER = 30.0

_RETRY_STATUSES = {408, 409, 429}
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{4,}")


class _OpenAIClient:
    """One ``AsyncOpenAI`` per event loop (an HTTP pool cannot move between loops) and our retries."""

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or ""
        if not self._api_key:
            raise DefinitionError(f"OpenAI model {name!r} needs an API key: set OPENAI_API_KEY.")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.timeout = timeout
        self.retry = retry or DEFAULT_MODEL_RETRY
        self._sleep = sleep
        self._client: openai.AsyncOpenAI | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}({self.name!r}, base_url={self.base_url!r})"

    def client(self) -> openai.AsyncOpenAI:
        import openai  # imported on first use: it is the slowest import of the CLI
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _with_retries(self, what: str, call: Callable[[openai.AsyncOpenAI], Awaitable[Any]]) -> Any:
        import openai
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            failure: Exception
            try:
                return await call(self.client())
            except openai.APIStatusError as exc:
                problem = f"HTTP {exc.status_code}: {self._scrub(exc.message)}"
                if exc.status_code not in _RETRY_STATUSES and exc.status_code < 500:
                    raise ModelError(f"{what} failed: {problem}. {_status_hint(exc.status_code)}") from exc
                retry_after, failure = _retry_after(exc.response.headers), exc
            except openai.APITimeoutError as exc:
                problem, failure = f"timed out after {self.timeout:g}s", exc
            except openai.APIConnectionError as exc:
                problem, failure = f"could not connect to {self.base_url or 'api.openai.com'}", exc
            except openai.OpenAIError as exc:
                raise ModelError(f"{what} failed: {self._scrub(str(exc))}") from exc
            if attempt == attempts:
                raise ModelError(
                    f"{what} failed after {attempts} attempt(s): {problem}. Try again later, raise "
                    "THREADFLOW_MODEL_MAX_ATTEMPTS or THREADFLOW_MODEL_TIMEOUT, or check OPENAI_BASE_URL."
                ) from failure
            delay = self.retry.delay(attempt) if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
            await self._sleep(delay)
        raise AssertionError("RetryPolicy guarantees at least one attempt")

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEY_PATTERN.sub("sk-***", text)


def _status_hint(status: int) -> str:
    if status in (401, 403):
        return "Check OPENAI_API_KEY (and that the key may use this model)."
    if status == 404:
        return "Check the model name (THREADFLOW_MODEL or the agent's model=) and OPENAI_BASE_URL."
    return "The request was rejected; it will not succeed by retrying."


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return float(ms) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIChatModel(_OpenAIClient):
    """Chat completions on OpenAI or any compatible server (``OPENAI_BASE_URL``)."""

    async def complete(
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> ModelResponse:
        kwargs: dict[str, Any] = {"model": self.name, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if output_schema is not None:
            # strict=False: pydantic schemas (defaults, optional fields) rarely meet strict mode's rules;
            # the agent validates the reply itself and asks once more when it does not fit.
            schema_name = re.sub(r"[^A-Za-z0-9_-]", "_", str(output_schema.get("title") or "output"))[:64]
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": output_schema, "strict": False},
            }
        what = f"Model 'openai:{self.name}'"
        resp = await self._with_retries(what, lambda c: c.chat.completions.create(**kwargs))
        if not getattr(resp, "choices", None):
            raise ModelError(
                f"{what} returned no choices; the server at {self.base_url} may not be OpenAI-compatible."
            )
        message = resp.choices[0].message
        calls = [
            ToolCall(id=tc.id, name=tc.function.name, arguments=tc.function.arguments or "{}")
            for tc in (message.tool_calls or [])
            if getattr(tc, "function", None) is not None
        ]
        usage = Usage()
        if resp.usage is not None:
            usage = Usage(
                prompt_tokens=resp.usage.prompt_tokens or 0,
                completion_tokens=resp.usage.completion_tokens or 0,
                total_tokens=resp.usage.total_tokens or 0,
            )
        text = message.content if message.content is not None else getattr(message, "refusal", None)
        return ModelResponse(text=text, tool_calls=calls, usage=usage, model=resp.model or self.name)


class OpenAIEmbedder(_OpenAIClient):
    """Embeddings via ``POST /v1/embeddings`` (floats, in input order)."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        what = f"Embedder 'openai:{self.name}'"
        resp = await self._with_retries(
            what, lambda c: c.embeddings.create(model=self.name, input=texts, encoding_format="float")
        )
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise ModelError(f"{what} returned {len(data)} vectors for {len(texts)} texts.")
        return [list(d.embedding) for d in data]


# -- offline ------------------------------------------------------------------------------------------

_STOP = set(
    "a an and are as at be but by do does for from has have how i in is it its me my no not of on or our "
    "so that the their them then there these they this to was we were what when where which who why will "
    "with you your can could should would please tell about".split()
)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if len(w) > 2 and w not in _STOP}


def _snippet(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class OfflineModel:
    """A deterministic stand-in for a real model: no network, same answer for the same input.

    It makes example workflows run end to end: structured output is a valid instance of the schema,
    tools named in the prompt get called, and text answers quote the most relevant earlier message so
    a chat visibly uses its thread memory.
    """

    name = "offline"

    async def complete(
        self, messages: list[Message], tools: list[ToolSpec], output_schema: dict[str, Any] | None
    ) -> ModelResponse:
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        prompt = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
        since = messages[last_user + 1 :]
        tool_results = [m for m in since if m.get("role") == "tool"]
        response = ModelResponse(model=self.name)
        if tools and not tool_results:
            calls = [
                ToolCall(
                    id=f"offline_call_{i}",
                    name=spec["function"]["name"],
                    arguments=json.dumps(fill_schema(spec["function"].get("parameters") or {}, hint=prompt)),
                )
                for i, spec in enumerate(tools)
                if _mentions(prompt, spec["function"]["name"])
            ]
            if calls:
                response.tool_calls = calls
        if not response.tool_calls:
            if output_schema is not None:
                response.text = json.dumps(fill_schema(output_schema, hint=prompt))
            else:
                response.text = self._answer(
                    messages[:last_user] if last_user >= 0 else messages, prompt, tool_results
                )
        prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) for m in messages)
        completion = estimate_tokens(
            (response.text or "") + "".join(c.arguments for c in response.tool_calls)
        )
        response.usage = Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )
        return response

    def _answer(self, earlier: list[Message], prompt: str, tool_results: list[Message]) -> str:
        parts = [
            f'(offline model) I am the offline model, so this is not a real answer to "{_snippet(prompt, 120)}".'
        ]
        if tool_results:
            parts.append(
                "Tool results: " + "; ".join(_snippet(str(m.get("content") or ""), 200) for m in tool_results)
            )
        best = self.most_relevant(earlier, prompt)
        if best is not None:
            parts.append(f'Earlier in this thread: "{_snippet(best)}"')
        return " ".join(parts)

    @staticmethod
    def most_relevant(earlier: list[Message], prompt: str) -> str | None:
        """The earlier message (or recalled line) sharing most words with the prompt, latest on ties."""
        candidates: list[str] = []
        seen_system = False
        for m in earlier:
            content = str(m.get("content") or "").strip()
            if m.get("role") == "system":
                if seen_system:  # context blocks after the instructions: one candidate per line
                    candidates += [ln.strip(" -") for ln in content.splitlines()[1:] if ln.strip(" -")]
                seen_system = True
            elif m.get("role") in ("user", "assistant") and content:
                candidates.append(content)
        if not candidates:
            return None
        wanted = _words(prompt)
        scored = [(len(wanted & _words(c)), i) for i, c in enumerate(candidates)]
        return candidates[max(scored)[1]]


def _mentions(prompt: str, tool_name: str) -> bool:
    lowered = prompt.lower()
    name = tool_name.lower()
    return re.search(rf"\b{re.escape(name)}\b", lowered) is not None or name.replace("_", " ") in lowered


def fill_schema(schema: dict[str, Any], *, hint: str = "", root: dict[str, Any] | None = None) -> Any:
    """A valid instance of a JSON schema, with strings derived from ``hint`` (the prompt)."""
    return _fill(schema, root if root is not None else schema, hint, "value", 0)


def _fill(schema: dict[str, Any], root: dict[str, Any], hint: str, name: str, depth: int) -> Any:
    if "$ref" in schema:
        target = _resolve_ref(root, schema["$ref"])
        return _fill(
            {**target, **{k: v for k, v in schema.items() if k != "$ref"}}, root, hint, name, depth + 1
        )
    if "default" in schema:
        return json.loads(json.dumps(schema["default"]))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = schema[key]
            non_null = [o for o in options if o.get("type") != "null"]
            if depth > 8 and len(non_null) < len(options):
                return None  # cut recursive optional structures short
            return _fill(non_null[0] if non_null else options[0], root, hint, name, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve_ref(root, part["$ref"]) if "$ref" in part else part)
        return _fill(merged, root, hint, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {key: _fill(sub, root, hint, key, depth + 1) for key, sub in props.items()}
    if kind == "array":
        if "prefixItems" in schema:
            return [_fill(s, root, hint, name, depth + 1) for s in schema["prefixItems"]]
        count = max(int(schema.get("minItems", 0)), 1 if depth < 6 else 0)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        item = schema.get("items") or {}
        values = [_fill(item, root, hint, name, depth + 1) for _ in range(count)]
        if schema.get("uniqueItems") and count > 1 and item.get("type") in ("integer", "number"):
            values = [v + i for i, v in enumerate(values)]
        return values
    if kind == "string":
        return _fill_string(schema, hint, name)
    if kind in ("integer", "number"):
        return _fill_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#"):
        raise DefinitionError(
            f"Schema reference {ref!r} is not local; only '#/...' references are supported."
        )
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return dict(node)


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "offline@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "P1D",
    "ipv4": "127.0.0.1",
}


def _fill_string(schema: dict[str, Any], hint: str, name: str) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    words = " ".join(hint.split())
    lowered = name.lower()
    if "email" in lowered:
        value = _FORMATS["email"]
    elif lowered.endswith(("url", "uri", "link")):
        value = _FORMATS["uri"]
    elif lowered in ("name", "title", "id", "slug", "label", "key") or lowered.endswith(("_name", "_id")):
        value = " ".join(words.split()[:5]) or "offline"
    else:
        value = f"(offline) {_snippet(words, 120)}" if words else "(offline)"
    max_len = schema.get("maxLength")
    if max_len is not None:
        value = value[: int(max_len)]
    return value.ljust(int(schema.get("minLength", 0)), ".")


def _fill_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """1 when allowed, else the first value inside the bounds (and a multiple of ``multipleOf``)."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low = lo if lo is not None else xlo
    high = hi if hi is not None else xhi

    def fits(v: float) -> bool:
        return (
            (lo is None or v >= lo)
            and (hi is None or v <= hi)
            and (xlo is None or v > xlo)
            and (xhi is None or v < xhi)
        )

    candidates: list[float] = [1, 0]
    if low is not None:
        candidates += [low, low + 1]
    if high is not None:
        candidates += [high, high - 1]
    if low is not None and high is not None:
        candidates.append((low + high) / 2)
    multiple = schema.get("multipleOf")
    for raw in candidates:
        for value in (math.ceil(raw), math.floor(raw)) if integer else (raw,):
            if multiple:
                value = math.ceil(value / multiple) * multiple
            if fits(value):
                return int(value) if integer else float(value)
    raise DefinitionError(f"The offline model cannot find a number within {schema}; check the bounds.")
