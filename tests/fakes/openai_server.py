"""A fake OpenAI-compatible API over real HTTP, for tests that exercise our client end to end.

Why real HTTP rather than patching the SDK: the retries, timeouts, headers and JSON shapes under test
are exactly what a patched client would skip. Tests script it:

    fake.reply_tool_calls(("get_weather", {"city": "Oslo"}))   # next chat completion calls a tool
    fake.reply_text("It is sunny.")                            # the one after answers
    fake.reply_error(429, retry_after=0)                       # or fails, with Retry-After
    fake.handler = lambda request: Reply.text("...")           # or answer computed from the request
    fake.chat_requests[-1]["messages"]                         # what the client sent

``FakeOpenAI(profile="vllm")`` behaves like that server family (see :mod:`tests.fakes.server_families`:
what it refuses, with which status and words, how it wraps JSON and cuts streams), and answers every
request nobody scripted like a small model would: the tool the prompt names, else a valid instance of
the schema it was asked for (read from ``response_format`` or from the instructions), else text.
``tools=False`` makes it a server started without tool calling. Requests with ``stream: true`` get
server-sent events, scripted replies included, cut the family's way (``openai`` without a profile).

A streamed reply can also go wrong after its headers, as real servers do (``Reply.text(...).broken(kind, n)``):
``stall`` (the first chunk comes ``n`` seconds late: a queued request), ``drop`` (the connection closes after ``n``
chunks: a worker dies) or ``eof`` (the body ends cleanly after ``n`` chunks, without the finish or ``[DONE]``: a
proxy closing the stream).

Embeddings are deterministic bag-of-words vectors (hashed words, optional synonyms) so similarity
search can be tested without a model.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import itertools
import json
import math
import re
import socket
import struct
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from workflows.offline_model import fill_schema

from .server_families import FAMILY, Family, json_mode, schema_from_request, stream_chunks

#: What tests put in OPENAI_API_KEY; shaped like a real key so scrubbing it from errors is tested too.
DUMMY_KEY = "sk-test-not-a-real-key-0000"

_STOP = {
    "a",
    "an",
    "and",
    "the",
    "is",
    "are",
    "of",
    "to",
    "in",
    "on",
    "my",
    "i",
    "do",
    "what",
    "it",
    "you",
    "for",
}


@dataclass
class Reply:
    """One scripted HTTP response (``delay`` seconds late)."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    #: For a streamed request: these ``chat.completion.chunk`` bodies, exactly (else ``body`` is cut up).
    chunks: list[dict[str, Any]] | None = None
    #: For a streamed request: what goes wrong after the headers, ``(kind, n)`` (see the module's docstring).
    fault: tuple[str, float] | None = None

    def broken(self, kind: str, n: float) -> Reply:
        """This reply, streamed with a fault after its headers: ``stall`` seconds, ``drop`` or ``eof`` after n chunks."""
        if kind not in ("stall", "drop", "eof"):
            raise ValueError(f"unknown stream fault {kind!r}")
        return dataclasses.replace(self, fault=(kind, n))

    @classmethod
    def stream(cls, *deltas: dict[str, Any], usage: tuple[int, int] | None = (10, 5)) -> Reply:
        """A stream of exactly these ``delta`` objects, then the finish (``tool_calls`` if a delta has some, else
        ``stop``) and ``[DONE]``, for odd-chunking tests."""
        made = [{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "",
                 "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        finish = "tool_calls" if any(d.get("tool_calls") for d in deltas) else "stop"
        made.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "",
                     "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if usage is not None:
            made.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
                         "model": "", "choices": [],
                         "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                   "total_tokens": sum(usage)}})
        return cls(chunks=made)

    @classmethod
    def text(cls, text: str, *, usage: tuple[int, int] = (10, 5)) -> Reply:
        return cls(body=_completion({"role": "assistant", "content": text}, "stop", usage))

    @classmethod
    def json(cls, data: Any) -> Reply:
        return cls.text(json.dumps(data))

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict[str, Any] | str], usage: tuple[int, int] = (10, 5)) -> Reply:
        made = [
            {
                "id": f"call_{next(_call_ids)}",
                "type": "function",
                "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
            }
            for name, args in calls
        ]
        return cls(
            body=_completion({"role": "assistant", "content": None, "tool_calls": made}, "tool_calls", usage)
        )

    @classmethod
    def error(
        cls, status: int, message: str = "scripted failure", *, retry_after: float | None = None
    ) -> Reply:
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        body = {
            "error": {
                "message": message,
                "type": "server_error" if status >= 500 else "invalid_request_error",
            }
        }
        return cls(status=status, body=body, headers=headers)


_call_ids = itertools.count(1)
Handler = Callable[[dict[str, Any]], "Reply | Awaitable[Reply]"]


def _completion(message: dict[str, Any], finish: str, usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "",  # filled with the requested model
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def bag_of_words(text: str, dim: int = 256, synonyms: dict[str, str] | None = None) -> list[float]:
    """A unit vector counting hashed words: texts sharing words (or synonyms) are similar."""
    vector = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        word = (synonyms or {}).get(word, word)
        if word not in _STOP:
            vector[zlib.crc32(word.encode()) % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class FakeOpenAI:
    """``POST /v1/chat/completions`` and ``POST /v1/embeddings`` on 127.0.0.1, on a free port."""

    def __init__(
        self,
        *,
        embedding_dim: int = 256,
        synonyms: dict[str, str] | None = None,
        profile: str | None = None,
        tools: bool = True,
    ) -> None:
        self.family: Family | None = FAMILY[profile] if profile is not None else None
        self.tools_enabled = tools
        self.embedding_dim = embedding_dim
        self.synonyms = dict(synonyms or {})
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.chat_replies: deque[Reply] = deque()
        self.embedding_replies: deque[Reply] = deque()
        self.handler: Handler | None = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [body for path, body, _ in self.requests if path.endswith("/chat/completions")]

    @property
    def embedding_requests(self) -> list[dict[str, Any]]:
        return [body for path, body, _ in self.requests if path.endswith("/embeddings")]

    # -- scripting ----------------------------------------------------------------------------------

    def reply(self, *replies: Reply) -> None:
        self.chat_replies.extend(replies)

    def reply_text(self, text: str) -> None:
        self.reply(Reply.text(text))

    def reply_json(self, data: Any) -> None:
        self.reply(Reply.json(data))

    def reply_tool_calls(self, *calls: tuple[str, dict[str, Any] | str]) -> None:
        self.reply(Reply.tool_calls(*calls))

    def reply_error(
        self, status: int, message: str = "scripted failure", *, retry_after: float | None = None
    ) -> None:
        self.reply(Reply.error(status, message, retry_after=retry_after))

    def reply_slow(self, delay: float, then: Reply | None = None) -> None:
        reply = then or Reply.text("slow reply")
        self.reply(Reply(status=reply.status, body=reply.body, headers=reply.headers, delay=delay))

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers -----------------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _json_response(Reply.error(401, "No API key provided."))
        return dict(body)

    @property
    def profile(self) -> str | None:
        return self.family.name if self.family is not None else None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        if isinstance(body, web.Response):
            return body
        refused = self.family.refuse(body, self.tools_enabled) if self.family is not None else None
        if refused is not None:
            status, error = refused
            return web.json_response(error, status=status)
        if self.chat_replies:
            reply = self.chat_replies.popleft()
        elif self.handler is not None:
            made = self.handler(body)
            reply = await made if inspect.isawaitable(made) else made
        elif self.family is not None:
            reply = self.answer(body)
        else:
            reply = Reply.error(
                500, "FakeOpenAI has no scripted reply: queue one (fake.reply_text(...)) or set fake.handler."
            )
        if reply.status == 200 and isinstance(reply.body, dict) and reply.body.get("object") == "chat.completion":
            reply = dataclasses.replace(reply, body={**reply.body, "model": body.get("model", "")})
        if body.get("stream") and reply.status == 200:
            return await self._stream(request, body, reply)
        return await self._respond(reply)

    def answer(self, body: dict[str, Any]) -> Reply:
        """What a small, obliging model would say to ``body`` (the same whatever the family)."""
        messages = body.get("messages", [])
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        prompt = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
        tool_results = [m for m in messages[last_user + 1 :] if m.get("role") == "tool"]
        if body.get("tools") and not tool_results:
            named = [t["function"] for t in body["tools"] if t["function"]["name"] in prompt]
            if named:
                return Reply.tool_calls(*[(f["name"], fill_schema(f.get("parameters") or {}, hint=prompt))
                                          for f in named])
        schema, _ = schema_from_request(body)
        if schema is not None:
            data = json.dumps(fill_schema(schema, hint=prompt))
            habit = self.family.json_habit if self.family is not None and not json_mode(body) else str
            return Reply.text(habit(data))
        if tool_results:
            return Reply.text("Tool results: " + "; ".join(str(m.get("content")) for m in tool_results))
        return Reply.text(f"You asked: {' '.join(prompt.split())[:200]}")

    async def _stream(self, request: web.Request, body: dict[str, Any], reply: Reply) -> web.StreamResponse:
        """Server-sent events: the reply's chunks, or its completion cut up the family's way."""
        family = self.family or FAMILY["openai"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = reply.chunks
        if chunks is None:
            assert isinstance(reply.body, dict), "a streamed reply needs a completion body or chunks"
            chunks = stream_chunks(family, reply.body, include_usage)
        if reply.delay:
            await self._wait(reply.delay)
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", **reply.headers})
        await response.prepare(request)
        kind, n = reply.fault or ("", len(chunks))
        if kind == "stall":
            await self._wait(n)
            n = len(chunks)
        for chunk in chunks[:int(n)]:
            await response.write(f"data: {json.dumps({**chunk, 'model': body.get('model', '')})}\n\n".encode())
        if kind == "drop":
            await asyncio.sleep(0.05)  # the chunks go out first
            assert request.transport is not None
            request.transport.close()
            return response
        if kind != "eof":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        if isinstance(body, web.Response):
            return body
        if self.embedding_replies:
            return await self._respond(self.embedding_replies.popleft())
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(texts):
            vector = bag_of_words(str(text), self.embedding_dim, self.synonyms)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(str(t).split()) for t in texts)
        return await self._respond(
            Reply(
                body={
                    "object": "list",
                    "data": data,
                    "model": body.get("model", ""),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        )

    async def _respond(self, reply: Reply) -> web.Response:
        if reply.delay:
            await self._wait(reply.delay)
        return _json_response(reply)

    async def _wait(self, delay: float) -> None:
        try:  # a slow reply ends early when the server closes, so tests never wait it out
            await asyncio.wait_for(self._closing.wait(), delay)
        except TimeoutError:
            pass


class SleepRecorder:
    """Stands in for ``asyncio.sleep`` in retry tests: records the delays, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def _json_response(reply: Reply) -> web.Response:
    return web.json_response(reply.body, status=reply.status, headers=reply.headers)


__all__ = ["DUMMY_KEY", "FAMILY", "FakeOpenAI", "Reply", "SleepRecorder", "bag_of_words"]
