"""The OpenAI client we share between chat and embeddings: one per event loop, and our retries.

Retries live here, not in the SDK (``max_retries=0``), so their policy is ours: jittered exponential
backoff, ``Retry-After`` respected, and a clear :class:`ModelError` at the end that never contains the
API key. A server's refusal of a capability (see :mod:`workflows.model_capabilities`) is recognised from
its words before the retry decision, so a llama.cpp refusal sent as HTTP 500 is not retried as an outage.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError, ModelError
from .model_capabilities import PROFILE_NAMES, Refusal, classify_refusal
from .step import RetryPolicy

if TYPE_CHECKING:
    import openai



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

    async def _with_retries(
        self,
        what: str,
        call: Callable[[openai.AsyncOpenAI], Awaitable[Any]],
        request: dict[str, Any] | None = None,
    ) -> Any:
        """``call`` with retries; with the ``request`` it sends, a refusal of part of it raises :class:`Refused`.

        The errors raised say what the server said, scrubbed of the key, and are not chained to the SDK's error for
        an answer: it keeps the server's answer as it came (a proxy may repeat the key it refused), and a step's
        traceback is stored with its failure and shown in the run inspector. (Timeouts and connection errors are.)"""
        import openai
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            cause: Exception | None = None  # (a status error is not chained: its text is the server's answer)
            try:
                return await call(self.client())
            except openai.APIStatusError as exc:
                text = self._scrub(error_text(exc)).rstrip(". ")
                problem = f"HTTP {exc.status_code}: {text}"
                refusal = classify_refusal(exc.status_code, text, request) if request is not None else None
                if refusal is not None:
                    raise Refused(refusal, f"{what} failed: {problem}.") from None
                if exc.status_code not in _RETRY_STATUSES and exc.status_code < 500:
                    hint = _status_hint(exc.status_code, self.base_url)
                    raise ModelError(f"{what} failed: {problem}. {hint}") from None
                retry_after = _retry_after(exc.response.headers)
            except openai.APITimeoutError as exc:
                problem, cause = f"timed out after {self.timeout:g}s", exc
            except openai.APIConnectionError as exc:
                problem, cause = f"could not connect to {self.base_url or 'api.openai.com'}", exc
            except EmptyStream as exc:
                problem = str(exc)
            except openai.APIError as exc:  # an error event in a stream, before its first chunk (nothing shown)
                if not _outage_event(exc):
                    raise ModelError(f"{what} failed: {self._scrub(str(exc))}") from None
                problem = f"the server reported an outage: {self._scrub(error_text(exc)).rstrip('. ')}"
            except openai.OpenAIError as exc:
                raise ModelError(f"{what} failed: {self._scrub(str(exc))}") from None
            if attempt == attempts:
                raise ModelError(
                    f"{what} failed after {attempts} attempt(s): {problem}. Try again later, raise "
                    "THREADFLOW_MODEL_MAX_ATTEMPTS or THREADFLOW_MODEL_TIMEOUT, or check OPENAI_BASE_URL."
                ) from cause
            delay = self.retry.delay(attempt) if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
            await self._sleep(delay)
        raise AssertionError("RetryPolicy guarantees at least one attempt")

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEY_PATTERN.sub("sk-***", text)


class EmptyStream(Exception):
    """A streamed answer's body ended before its first chunk (a proxy or a worker shutting down closed it): nothing
    was shown, so it is retried like a dropped connection (internal: :meth:`_OpenAIClient._with_retries` says so)."""


class Refused(ModelError):
    """The server refused a capability the request used (internal: the chat model falls back)."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


def error_text(exc: Any) -> str:
    """What the server said, whatever shape its error body has.

    OpenAI and Ollama send ``{"error": {"message": ...}}``, vLLM ``{"object": "error", "message": ...}``,
    LM Studio ``{"error": "..."}`` (a string), FastAPI-based servers ``{"detail": [...]}``.
    """
    body = getattr(exc, "body", None)
    if isinstance(body, str) and body.strip():
        return body.strip()
    if isinstance(body, dict):
        said = body.get("message") or body.get("error") or body.get("detail")
        if isinstance(said, str) and said:
            return said
        return json.dumps(said if said is not None else body, ensure_ascii=False)
    return str(getattr(exc, "message", "") or exc)


def _outage_event(exc: Any) -> bool:
    """Whether an error event sent in a stream (after the 200 headers) is an outage to retry: proxies and servers
    (OpenRouter, vLLM) send ``{"error": {"type": "server_error", "code": 503, ...}}`` for what would be a 5xx or 429."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return False
    code = body.get("code")
    status = int(code) if isinstance(code, int | str) and str(code).isdigit() else 0
    return body.get("type") == "server_error" or status >= 500 or status in _RETRY_STATUSES


def _status_hint(status: int, base_url: str | None = None) -> str:
    if status in (401, 403):
        return "Check OPENAI_API_KEY (and that the key may use this model)."
    if status == 404:
        return "Check the model name (THREADFLOW_MODEL or the agent's model=) and OPENAI_BASE_URL."
    hint = "The request was rejected; it will not succeed by retrying."
    if base_url:
        hint += (
            f" If the server at {base_url} does not support part of the request, set THREADFLOW_MODEL_PROFILE "
            f"({', '.join(PROFILE_NAMES)}; see the README)."
        )
    return hint


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

