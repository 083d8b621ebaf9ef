"""Conversation memory for agents: thread history, recall, working memory and rolling summaries.

Why it is built this way: agents in one Slack thread (and the workflows they run) share one memory, so
memory is rows in the run database rather than state in a process. An agent's context is assembled
from, in order of priority: its working memory (a small notes document it rewrites with the built-in
``update_working_memory`` tool), a summary of old messages, the last N messages, and messages recalled
from further back (full-text search always, vector similarity when an embedder is configured).

Token counts are estimates (characters / 4, see :func:`workflows.models.estimate_tokens`): good enough
to keep a context under a budget without a tokenizer dependency.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.database import Database
from storage.memory_store import (
    DEFAULT_VECTOR_CANDIDATES,
    MemoryStore,
    MessageRow,
    NewAgentContext,
    NewMessage,
    NewVector,
    Role,
)

from .errors import ToolFailed
from .models import Embedder, Model, OfflineModel, Usage, estimate_tokens, resolve_embedder
from .tools import Tool, ToolContext
from .vector_cache import VectorCache

log = logging.getLogger("threadflow.memory")

#: Reciprocal-rank-fusion constant: merges FTS and vector rankings without comparing their scores.
RRF_K = 60

DEFAULT_WORKING_MEMORY_TEMPLATE = """# Working memory
- Who I am talking with:
- Their preferences:
- Current goal:
- Decisions made:
- Open questions:
"""


class Recall(BaseModel):
    """How far back to look: ``top_k`` matches, each with ``window`` neighbours on either side.

    With an embedder, similarity is computed (numpy, in process) over the newest ``vector_candidates``
    vectors of the scope (default 2,000); older messages are still found by full-text search. Every
    query reads all of them from the database, 1.5 KB per 384-d float32 vector and 6 KB per 1536-d one:
    on SQLite about 2.5 ms per 1,000 384-d vectors, so the default keeps recall p95 under 20 ms over
    100,000 messages (``python -m bench --only recall``). Raise it to reach further back by meaning;
    ``None`` compares with every vector of the scope.
    """

    model_config = ConfigDict(frozen=True)

    top_k: int = Field(default=3, ge=1)
    window: int = Field(default=1, ge=0)
    scope: Literal["resource", "thread"] = "resource"
    min_similarity: float = 0.3  # vector hits below this cosine similarity are noise
    vector_candidates: int | None = Field(default=DEFAULT_VECTOR_CANDIDATES, ge=1)


DEFAULT_RECALL = Recall()


class WorkingMemory(BaseModel):
    """A notes document per resource (user) or per thread, shown to the agent on every call."""

    model_config = ConfigDict(frozen=True)

    scope: Literal["resource", "thread"] = "resource"
    template: str = DEFAULT_WORKING_MEMORY_TEMPLATE


class RecalledMessage(BaseModel):
    """A message from beyond the recent window: a search match (with its score) or its neighbour."""

    message: MessageRow
    matched: bool
    score: float | None = None


class AgentContext(BaseModel):
    """What memory contributes to one agent call, already trimmed to the token budget."""

    messages: list[MessageRow]
    recalled: list[RecalledMessage]
    working_memory: str | None = None
    summary: str | None = None
    token_estimate: int = 0
    trimmed: int = 0  # messages left out to stay under the budget


class Memory:
    """Memory configuration over a database; ``memory.thread(...)`` binds it to one conversation."""

    def __init__(
        self,
        db: Database,
        *,
        last_messages: int = 20,
        recall: Recall | None = DEFAULT_RECALL,
        working_memory: WorkingMemory | None = None,
        token_budget: int = 6000,
        summarize_after_tokens: int | None = 4000,
        embedder: Embedder | str | None = None,
    ) -> None:
        self.db = db
        self.store = MemoryStore(db)
        self.last_messages = last_messages
        self.recall = recall
        self.working_memory = working_memory
        self.token_budget = token_budget
        self.summarize_after_tokens = summarize_after_tokens
        self.embedder = resolve_embedder(embedder) if embedder is not None else None
        self.vectors = VectorCache(self.store)

    async def ensure_thread(self, thread_id: str, resource_id: str | None = None) -> None:
        """Create the thread row if missing (the engine calls this when a run starts on a thread)."""
        await self.store.ensure_thread(thread_id, resource_id)

    async def close(self) -> None:
        """Close the embedder's HTTP client; the database belongs to whoever opened it."""
        close = getattr(self.embedder, "aclose", None)
        if close is not None:
            await close()

    def thread(
        self,
        thread_id: str,
        resource_id: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
    ) -> ThreadMemory:
        return ThreadMemory(self, thread_id, resource_id, run_id=run_id, path=path)

    def tools(self) -> list[Tool]:
        """Built-in tools an agent with this memory gets (``update_working_memory`` when enabled)."""
        return [UPDATE_WORKING_MEMORY] if self.working_memory is not None else []


_UNREAD = object()


class WorkingMemoryChanged(Exception):
    """The working memory changed since this handle read it (another agent's update); ``current`` is its text now."""

    def __init__(self, current: str) -> None:
        super().__init__("the working memory changed since it was read")
        self.current = current


class ThreadMemory:
    """One conversation: its messages, recall, working memory, bound to the run step writing to it."""

    def __init__(
        self,
        memory: Memory,
        thread_id: str,
        resource_id: str | None,
        *,
        run_id: str | None = None,
        path: str | None = None,
    ) -> None:
        self.memory = memory
        self.store = memory.store
        self.thread_id = thread_id
        self.resource_id = resource_id
        self.run_id = run_id
        self.path = path
        self._ensured = False
        #: The working memory as this handle last read or wrote it (``_UNREAD``: not yet): what an update replaces.
        self._working_seen: str | None | object = _UNREAD

    def __repr__(self) -> str:
        return f"ThreadMemory(thread_id={self.thread_id!r}, resource_id={self.resource_id!r})"

    def bind(self, *, run_id: str | None = None, path: str | None = None) -> ThreadMemory:
        """The same thread, with messages attributed to another run position."""
        return ThreadMemory(self.memory, self.thread_id, self.resource_id, run_id=run_id, path=path)

    async def ensure(self) -> None:
        if not self._ensured:
            await self.store.ensure_thread(self.thread_id, self.resource_id)
            self._ensured = True

    # -- messages -----------------------------------------------------------------------------------

    def new_message(self, role: Role, content: str, author: str | None = None) -> NewMessage:
        return NewMessage(
            thread_id=self.thread_id,
            resource_id=self.resource_id,
            role=role,
            author=author,
            content=content,
            run_id=self.run_id,
            path=self.path,
        )

    async def add(self, role: Role, content: str, author: str | None = None) -> int:
        """Append one message (embedded first when an embedder is configured) and return its id."""
        return (await self.save([self.new_message(role, content, author)]))[0]

    async def save(
        self, new: Sequence[NewMessage], *, agent_context: NewAgentContext | None = None
    ) -> list[int]:
        """Append messages, their vectors and an agent context record in one commit.

        Embedding happens before the write, so an embedder failure stores nothing rather than
        messages that recall by similarity would never find.
        """
        ids, _ = await self.save_answer(new, agent_context=agent_context)
        return ids

    async def save_answer(
        self, new: Sequence[NewMessage], *, agent_context: NewAgentContext | None = None
    ) -> tuple[list[int], int | None]:
        """Like :meth:`save`, also returning the id of the agent context record (what feedback rates)."""
        await self.ensure()
        embedder = self.memory.embedder
        vectors: list[NewVector] = []
        if embedder is not None:
            texts = [(i, m.content) for i, m in enumerate(new) if m.content.strip()]
            embedded = await embedder.embed([t for _, t in texts])
            vectors = [
                NewVector(index=i, vector=_vector_bytes(v)) for (i, _), v in zip(texts, embedded, strict=True)
            ]
        return await self.store.save_answer(
            new,
            vectors=vectors,
            vector_model=embedder.name if embedder else None,
            agent_context=agent_context,
        )

    async def history(self, n: int | None = None) -> list[MessageRow]:
        """The last ``n`` (default: the memory's ``last_messages``) messages, oldest first."""
        return await self.store.last_messages(
            self.thread_id, n if n is not None else self.memory.last_messages
        )

    # -- recall -------------------------------------------------------------------------------------

    async def recall(self, query: str, *, exclude_ids: Iterable[int] = ()) -> list[RecalledMessage]:
        """Messages relevant to ``query`` that are not in ``exclude_ids``, with their neighbours."""
        cfg = self.memory.recall
        if cfg is None or not query.strip():
            return []
        exclude = set(exclude_ids)
        by_resource = cfg.scope == "resource" and self.resource_id is not None
        thread_id, resource_id = (None, self.resource_id) if by_resource else (self.thread_id, None)
        fetch = cfg.top_k * 3 + len(exclude)
        fused: dict[int, float] = defaultdict(float)
        # Full-text search and similarity are independent reads: both run at once.
        found, similar = await asyncio.gather(
            self.store.search_text(query, thread_id=thread_id, resource_id=resource_id, limit=fetch),
            self._similar(query, exclude, fetch, thread_id, resource_id),
        )
        text_hits = [h for h in found if h.message.id not in exclude]
        for rank, hit in enumerate(text_hits):
            fused[hit.message.id] += 1 / (RRF_K + rank)
        for rank, message_id in enumerate(similar):
            fused[message_id] += 1 / (RRF_K + rank)
        top = sorted(fused, key=lambda i: (-fused[i], -i))[: cfg.top_k]
        matched = set(top)
        recalled: list[RecalledMessage] = []
        # one read for the hits (a vector hit is only an id), grouped by thread, with their neighbours
        for _, thread_rows in await self.store.messages_around(top, cfg.window):
            for row in thread_rows:
                if row.id in matched:
                    recalled.append(RecalledMessage(message=row, matched=True, score=fused[row.id]))
                elif row.id not in exclude:
                    recalled.append(RecalledMessage(message=row, matched=False))
        return recalled

    async def _similar(
        self, query: str, exclude: set[int], limit: int, thread_id: str | None, resource_id: str | None
    ) -> list[int]:
        """Message ids by cosine similarity to ``query``: one matrix product over the scope's vectors.

        The scope's newest vectors come from the memory's in-process cache (``workflows.vector_cache``),
        which reads only the vectors written since the previous query.
        """
        embedder = self.memory.embedder
        cfg = self.memory.recall
        if embedder is None or cfg is None:
            return []
        import numpy as np  # on first use: a CLI command that never recalls by vector does not load numpy

        query_vector = np.asarray((await embedder.embed([query]))[0], dtype=np.float32)
        if query_vector.size == 0:
            return []
        scope = await self.memory.vectors.vectors(
            model=embedder.name, dim=query_vector.size, thread_id=thread_id, resource_id=resource_id,
            limit=cfg.vector_candidates,
        )
        if not scope.ids:
            return []
        norms = scope.norms * (np.linalg.norm(query_vector) or 1.0)
        similarity = (scope.matrix @ query_vector) / np.where(norms == 0, 1.0, norms)
        found: list[int] = []
        for i in np.argsort(-similarity, kind="stable"):
            if similarity[i] < cfg.min_similarity or len(found) >= limit:
                break
            if scope.ids[i] not in exclude:
                found.append(scope.ids[i])
        return found

    # -- working memory -----------------------------------------------------------------------------

    def _working_memory_key(self) -> tuple[str, str]:
        cfg = self.memory.working_memory
        if cfg is not None and cfg.scope == "resource" and self.resource_id is not None:
            return "resource", self.resource_id
        return "thread", self.thread_id

    async def working_memory(self) -> str | None:
        """The stored working memory text, or None if none was written yet."""
        row = await self.store.get_working_memory(*self._working_memory_key())
        self._working_seen = None if row is None else row.content
        return self._working_seen

    async def set_working_memory(self, text: str) -> None:
        """Replace the working memory. Once read through this handle (an agent's context), only if it is still what
        was read: another agent's update since raises :class:`WorkingMemoryChanged` with the text it has now,
        rather than being lost (each rewrites the whole text from the copy it saw)."""
        if self._working_seen is _UNREAD:
            await self.store.set_working_memory(*self._working_memory_key(), text)
        else:
            seen = self._working_seen if isinstance(self._working_seen, str) else None
            current = await self.store.replace_working_memory(*self._working_memory_key(), text, expected=seen)
            if current is not None:
                self._working_seen = current
                raise WorkingMemoryChanged(current)
        self._working_seen = text

    # -- context ------------------------------------------------------------------------------------

    async def build_context(self, prompt: str, *, reserve_tokens: int = 0) -> AgentContext:
        """Working memory, summary, recent and recalled messages for ``prompt``, within the budget.

        ``reserve_tokens`` is what the caller adds besides memory (instructions, tool schemas). When
        something must go, recalled messages (neighbours before matches) go first, then the oldest
        recent messages: the latest turns matter most to a reply.
        """
        mem = self.memory
        summary = await self.store.latest_summary(self.thread_id)
        through = summary.through_id if summary else 0
        history = await self.store.last_messages(self.thread_id, mem.last_messages, after_id=through)
        recalled = await self.recall(prompt, exclude_ids=[m.id for m in history])
        working = None
        if mem.working_memory is not None:
            working = await self.working_memory() or mem.working_memory.template
        summary_text = summary.message.content if summary else None
        fixed = sum(estimate_tokens(t or "") for t in (prompt, working, summary_text)) + reserve_tokens
        left = mem.token_budget - fixed
        kept_history: list[MessageRow] = []
        for message in reversed(history):
            cost = estimate_tokens(message.content)
            if cost > left:
                break
            kept_history.insert(0, message)
            left -= cost
        kept_recalled: list[RecalledMessage] = []
        for item in sorted(recalled, key=lambda r: (not r.matched, -(r.score or 0.0), r.message.id)):
            cost = estimate_tokens(item.message.content)
            if cost <= left:
                kept_recalled.append(item)
                left -= cost
        kept_recalled.sort(
            key=lambda r: (r.message.thread_id != self.thread_id, r.message.thread_id, r.message.id)
        )
        return AgentContext(
            messages=kept_history,
            recalled=kept_recalled,
            working_memory=working,
            summary=summary_text,
            token_estimate=mem.token_budget - left,
            trimmed=len(history) - len(kept_history) + len(recalled) - len(kept_recalled),
        )

    # -- summaries ----------------------------------------------------------------------------------

    async def maybe_summarize(self, model: Model | None = None) -> Usage:
        """Fold messages older than the recent window into a summary once the thread is long enough.

        Originals stay in the thread (recall still finds them); only the context shows the summary.
        """
        limit = self.memory.summarize_after_tokens
        if limit is None:
            return Usage()
        summary = await self.store.latest_summary(self.thread_id)
        through = summary.through_id if summary else 0
        chars = await self.store.content_length_after(self.thread_id, through)
        if (chars + 3) // 4 <= limit:  # the same estimate as estimate_tokens, without loading the text
            return Usage()
        window = await self.store.last_messages(self.thread_id, self.memory.last_messages, after_id=through)
        first_kept = window[0].id if window else through + 1
        old = await self.store.messages_between(self.thread_id, through, first_kept)
        if not old:
            return Usage()
        previous = summary.message.content if summary else None
        text, usage = await self._summarize(previous, old, model)
        await self.ensure()
        await self.store.add_summary(
            self.thread_id, self.resource_id, text, old[-1].id, author=model.name if model else None
        )
        return usage

    async def _summarize(
        self, previous: str | None, old: list[MessageRow], model: Model | None
    ) -> tuple[str, Usage]:
        # As many characters as the threshold has tokens: a summary costs about a quarter of what it replaces.
        max_chars = max(400, self.memory.summarize_after_tokens or 4000)
        if model is None or isinstance(model, OfflineModel):
            return extractive_summary(previous, old, max_chars=max_chars), Usage()
        transcript = "\n".join(f"[{_speaker(m)}] {m.content}" for m in old)
        messages = [
            {
                "role": "system",
                "content": "You keep a running summary of a conversation for an AI assistant. Merge the previous "
                "summary with the new messages. Keep facts, names, numbers, decisions, open questions and who said "
                f"what. Plain text, at most {max_chars // 5} words.",
            },
            {
                "role": "user",
                "content": f"Previous summary:\n{previous or '(none)'}\n\nNew messages:\n{transcript}",
            },
        ]
        response = await model.complete(messages, [], None)
        return (response.text or "").strip() or extractive_summary(
            previous, old, max_chars=max_chars
        ), response.usage


def extractive_summary(previous: str | None, old: Sequence[MessageRow], *, max_chars: int = 4000) -> str:
    """A deterministic summary: the first sentence of each message, newest kept when too long."""
    header = "Summary of earlier messages (first sentence of each):"
    lines = [ln for ln in (previous or "").splitlines() if ln.startswith("- ")]
    for m in old:
        first = re.split(r"(?<=[.!?])\s+", " ".join(m.content.split()), maxsplit=1)[0]
        lines.append(f"- {_speaker(m)}: {first[:200]}")
    while lines and len(header) + sum(len(ln) + 1 for ln in lines) > max_chars:
        lines.pop(0)
    return "\n".join([header, *lines])


def _speaker(m: MessageRow) -> str:
    return m.author or m.role


def _vector_bytes(vector: Sequence[float]) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()


# -- the built-in working memory tool -----------------------------------------------------------------


class UpdateWorkingMemoryArgs(BaseModel):
    content: str = Field(
        description="The complete new working memory, following its template. It replaces the old text, so "
        "keep everything that is still true."
    )


async def _update_working_memory(args: UpdateWorkingMemoryArgs, ctx: ToolContext) -> str:
    if ctx.thread is None:
        raise ToolFailed("there is no conversation thread to keep working memory for; answer without it.")
    try:
        await ctx.thread.set_working_memory(args.content)
    except WorkingMemoryChanged as exc:
        raise ToolFailed(
            "another agent updated the working memory since you read it, so yours was not saved. It now reads:\n"
            f"{exc.current}\nMerge what you learned into that text and call update_working_memory again."
        ) from None
    return "Working memory updated."


UPDATE_WORKING_MEMORY = Tool(
    _update_working_memory,
    name="update_working_memory",
    description="Rewrite your working memory: notes about the user and the task that you see on every call. "
    "Use it when you learn something worth remembering (names, preferences, goals, decisions).",
)
