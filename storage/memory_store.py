"""Memory storage: threads, messages, recall indexes, working memory and agent context records.

Why a store of its own: agents, the engine and the Slack adapter all read and write conversation memory,
and SQL lives only in ``storage/``. Every public method opens its own transaction (``db.write`` or
``db.read``); a private ``_x(conn)`` does the work, so :meth:`MemoryStore.save_turn` can write an agent's
messages, their vectors and its context record in one commit.

SQLite and PostgreSQL differ only in full-text search (FTS5 + bm25 vs ``to_tsvector`` + ``ts_rank``) and
in the insert-if-absent / upsert constructs, chosen by ``db.is_sqlite``.

Text is kept as it came, but for NUL (``\x00``): PostgreSQL's TEXT cannot hold it, so it becomes U+FFFD (the
replacement character) on the way in, on both databases alike (:func:`storable`).

The schema has no column for "which messages a summary covers", so a ``kind='summary'`` row keeps the id
of the last message it covers in ``tool_call_id`` (as text); only this module reads or writes that.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Select,
    String,
    and_,
    bindparam,
    column,
    func,
    insert,
    literal_column,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from .database import Database, insert_ignore, knowing_retries
from .prepared import prepared
from .tables import agent_contexts, message_vectors, messages, threads, working_memory

Role = Literal["system", "user", "assistant", "tool"]

#: FTS queries consider at most this many distinct words of the text: long pastes stay cheap to search.
MAX_QUERY_TOKENS = 32
#: ... and search only the rarest few of them (see :meth:`MemoryStore.search_text`).
MAX_SEARCH_TERMS = 6
#: A word in more than this share of messages is "common": searched only when the text has no rarer word.
COMMON_TERM_SHARE = 0.02
#: ... and in more than this many messages: small stores search every word (up to ``MAX_SEARCH_TERMS``).
COMMON_TERM_MIN_DOCS = 100
#: When every word is common, the rarest this many are searched (on SQLite their messages are counted
#: up to ``COMMON_TERM_RANK_SHARE`` of all, so "deploy" beats "the" without counting all of "the").
MAX_COMMON_SEARCH_TERMS = 2
COMMON_TERM_RANK_SHARE = 0.2
#: Recall compares a query with at most this many of the newest vectors of its scope, all read from the
#: database on every query (see ``workflows.memory.Recall.vector_candidates``).
DEFAULT_VECTOR_CANDIDATES = 2000
_WORD = re.compile(r"\w+", re.UNICODE)


# -- rows ---------------------------------------------------------------------------------------------


class ThreadRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    resource_id: str | None
    title: str | None
    metadata: dict[str, Any] | None
    created_at: float
    updated_at: float


class NewMessage(BaseModel):
    """A message to append; ``created_at`` defaults to now."""

    thread_id: str
    resource_id: str | None = None
    role: Role
    kind: Literal["message", "summary"] = "message"
    author: str | None = None
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    run_id: str | None = None
    path: str | None = None
    created_at: float | None = None


class MessageRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    thread_id: str
    resource_id: str | None
    role: str
    kind: str
    author: str | None
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    run_id: str | None = None
    path: str | None = None
    created_at: float


class Summary(BaseModel):
    """The latest summary of a thread and the id of the last message it covers."""

    model_config = ConfigDict(frozen=True)

    message: MessageRow
    through_id: int


class TextHit(BaseModel):
    """A full-text match; higher ``score`` is better on both databases."""

    model_config = ConfigDict(frozen=True)

    message: MessageRow
    score: float


class StoredVector(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: int
    thread_id: str
    model: str
    vector: bytes


class WorkingMemoryRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    scope: str
    key: str
    content: str
    updated_at: float


class NewAgentContext(BaseModel):
    run_id: str | None = None
    path: str | None = None
    agent: str
    thread_id: str | None = None
    context: dict[str, Any]
    answer: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


class AgentContextRow(NewAgentContext):
    model_config = ConfigDict(frozen=True)

    id: int
    created_at: float


class NewVector(BaseModel):
    """A vector for a message not yet inserted: ``index`` points into the batch being saved."""

    index: int = Field(ge=0)
    vector: bytes


# -- queries ------------------------------------------------------------------------------------------


def fts5_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: an OR of quoted words, so punctuation never raises.

    FTS5 gives meaning to ``"*:^()-`` and the words AND/OR/NOT/NEAR; quoting each word (the regex keeps
    only word characters, so no quote can appear inside) makes every one a plain term.
    """
    return _fts5_match(_query_words(text))


def tsquery_text(text: str) -> str:
    """The PostgreSQL counterpart of :func:`fts5_query`: ``word | word`` for ``to_tsquery``."""
    return " | ".join(_query_words(text))


def rarest_terms(
    words: Sequence[str], counts: Sequence[float], common_above: float, *, limit: int = MAX_SEARCH_TERMS
) -> list[str]:
    """Up to ``limit`` of ``words`` counted in ``0 < count <= common_above`` messages, rarest first.

    A word that no message contains is left out: it cannot match, and it would take the place of one
    that can. Ties keep the order of the text.
    """
    ranked = sorted((count, i) for i, count in enumerate(counts) if 0 < count <= common_above)
    return [words[i] for _, i in ranked[:limit]]


def _fts5_match(words: Iterable[str]) -> str:
    return " OR ".join(f'"{word}"' for word in words)


def _query_words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        word = word.strip("_")
        if word:
            seen.setdefault(word, None)
        if len(seen) >= MAX_QUERY_TOKENS:
            break
    return list(seen)


@lru_cache(maxsize=MAX_QUERY_TOKENS)
def _fts5_counts_statement(n: int) -> TextClause:
    """``cap, count(w0), ..., count(wn-1)``: messages matching each word, counted up to ``cap``.

    ``cap`` is one more than ``max(:min_docs, :share * messages)`` (the message count estimated by the
    largest id, an O(log n) lookup), so a count below ``cap`` is exact and one at ``cap`` means "more".
    FTS5 itself tokenizes each quoted word, so the count sees exactly the terms the search will
    (porter stems, unicode61 case and diacritics folding, ``db_01`` as the phrase "db 01"), and it reads
    at most ``cap`` entries of a word's posting list however common the word is.
    """
    counts = ", ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM messages_fts WHERE messages_fts MATCH :w{i} "
        "LIMIT (SELECT cap FROM n)))"
        for i in range(n)
    )
    return text(
        "WITH n(cap) AS (SELECT CAST(max(:min_docs, coalesce(max(id), 0) * :share) AS INTEGER) + 1 "
        f"FROM messages) SELECT (SELECT cap FROM n), {counts}"
    )


#: Per word of the query, in order: ``lexemes`` (0: only stop words), ``share`` (the share of messages
#: containing its rarest lexeme per the statistics ANALYZE keeps on the full-text index, or NULL when a
#: lexeme is not among the ``most_common_elems``, i.e. rare, or there are no statistics yet) and, only
#: when ``share`` is NULL, ``counted``: messages matching the word, counted up to ``cap`` through the GIN
#: index (cheap for a rare word; a listed common word is never counted). Counting is skipped (NULL) when
#: it cannot change the choice: at most ``:max_terms`` words and none listed as common. ``total``
#: estimates the number of messages (the largest id), ``cap`` is one more than the "common" threshold.
_PG_TERM_COUNTS = text(
    """
WITH n AS (
    SELECT coalesce(max(id), 0) AS total,
           CAST(GREATEST(CAST(:min_docs AS float8), coalesce(max(id), 0) * CAST(:share AS float8)) AS INTEGER)
           + 1 AS cap
    FROM messages
),
stats AS (
    SELECT CAST(CAST(most_common_elems AS text) AS text[]) AS elems, most_common_elem_freqs AS freqs
    FROM pg_stats
    WHERE schemaname = current_schema() AND tablename = 'ix_messages_fts' AND attname = 'to_tsvector'
      AND most_common_elems IS NOT NULL
    LIMIT 1
),
w AS (
    SELECT word, ord, tsvector_to_array(to_tsvector('english', word)) AS lexemes
    FROM unnest(CAST(:words AS text[])) WITH ORDINALITY AS u(word, ord)
),
listed AS (
    SELECT w.*,
           (SELECT CASE WHEN count(*) > 0 AND bool_and(f IS NOT NULL) THEN min(f) END
            FROM (SELECT stats.freqs[array_position(stats.elems, lexeme)] AS f
                  FROM stats, unnest(w.lexemes) AS lexeme) AS x) AS share
    FROM w
),
choice AS (
    SELECT listed.*,
           count(*) FILTER (WHERE cardinality(lexemes) > 0) OVER () > :max_terms
           OR coalesce(bool_or(share * n.total >= n.cap) OVER (), false) AS must_count
    FROM listed, n
)
SELECT (SELECT total FROM n) AS total, (SELECT cap FROM n) AS cap,
       cardinality(lexemes) AS lexemes, share,
       CASE WHEN must_count AND cardinality(lexemes) > 0 AND share IS NULL THEN
           (SELECT count(*) FROM (
               SELECT 1 FROM messages
               WHERE to_tsvector('english', content) @@ phraseto_tsquery('english', choice.word)
               LIMIT (SELECT cap FROM n)) AS c)
       END AS counted
FROM choice
ORDER BY ord
"""
).bindparams(bindparam("words", type_=ARRAY(String)))


#: Recall's reads, built once (prepared: on SQLite they run on the sqlite3 cursor). The neighbours of a
#: message: up to ``b_n`` conversation messages of its thread up to it (newest first), and after it.
_CONVERSATION = (messages.c.thread_id == bindparam("b_thread")) & (messages.c.kind == "message")
_MESSAGES_UP_TO = prepared(
    select(messages).where(_CONVERSATION, messages.c.id <= bindparam("b_id"))
    .order_by(messages.c.id.desc()).limit(bindparam("b_n"))
)
_MESSAGES_AFTER = prepared(
    select(messages).where(_CONVERSATION, messages.c.id > bindparam("b_id"))
    .order_by(messages.c.id).limit(bindparam("b_n"))
)
_THREADS_OF_MESSAGES = prepared(
    select(messages.c.id, messages.c.thread_id).where(messages.c.id.in_(bindparam("ids", expanding=True)))
)


def _fts5_search(scope: Any) -> Any:
    """Messages matching ``:b_match`` (an FTS5 query) in a scope, best BM25 first, ``:b_limit`` of them."""
    fts = table("messages_fts", column("rowid"))
    rank = func.bm25(literal_column("messages_fts"))
    return prepared(
        select(messages, rank.label("rank"))
        .select_from(messages.join(fts, fts.c.rowid == messages.c.id))
        .where(literal_column("messages_fts").op("MATCH")(bindparam("b_match", type_=String)), scope,
               messages.c.kind == "message")
        .order_by(rank, messages.c.id.desc())
        .limit(bindparam("b_limit"))
    )


_FTS5_IN_THREAD = _fts5_search(messages.c.thread_id == bindparam("b_scope"))
_FTS5_IN_RESOURCE = _fts5_search(messages.c.resource_id == bindparam("b_scope"))


class MemoryStore:
    """Core queries for memory; the only code that knows how memory is laid out in SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: Bumped when vectors of existing messages change here (in-memory vector caches reload).
        self.vector_generation = 0

    # -- threads ------------------------------------------------------------------------------------

    async def ensure_thread(
        self,
        thread_id: str,
        resource_id: str | None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadRow:
        """Create the thread if it does not exist (insert-if-absent) and return it as stored."""

        async def fn(conn: AsyncConnection) -> ThreadRow:
            return await self._ensure_thread(conn, thread_id, resource_id, title, metadata)

        return await self.db.write(fn)

    async def _ensure_thread(
        self,
        conn: AsyncConnection,
        thread_id: str,
        resource_id: str | None,
        title: str | None,
        metadata: dict[str, Any] | None,
    ) -> ThreadRow:
        now = time.time()
        values = {
            "id": thread_id,
            "resource_id": resource_id,
            "title": title,
            "metadata": metadata,
            "created_at": now,
            "updated_at": now,
        }
        dialect_insert = sqlite_insert if self.db.is_sqlite else pg_insert
        await conn.execute(
            dialect_insert(threads).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
        row = (await conn.execute(select(threads).where(threads.c.id == thread_id))).mappings().one()
        return ThreadRow.model_validate(dict(row))

    async def update_thread(
        self, thread_id: str, *, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ThreadRow | None:
        """Set a thread's title and merge keys into its metadata (what is not given stays); None: no thread."""

        async def fn(conn: AsyncConnection) -> ThreadRow | None:
            query = select(threads).where(threads.c.id == thread_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                return None
            values: dict[str, Any] = {"updated_at": time.time()}
            if title is not None:
                values["title"] = storable(title[:500])
            if metadata is not None:
                values["metadata"] = {**(row["metadata"] or {}), **metadata}
            await conn.execute(update(threads).where(threads.c.id == thread_id).values(**values))
            return ThreadRow.model_validate(dict(row) | values)

        return await self.db.write(fn)

    async def get_thread(self, thread_id: str) -> ThreadRow | None:
        async def fn(conn: AsyncConnection) -> ThreadRow | None:
            row = (await conn.execute(select(threads).where(threads.c.id == thread_id))).mappings().first()
            return None if row is None else ThreadRow.model_validate(dict(row))

        return await self.db.read(fn)

    async def list_threads(self, resource_id: str) -> list[ThreadRow]:
        """The resource's threads, most recently active first."""

        async def fn(conn: AsyncConnection) -> list[ThreadRow]:
            query = (
                select(threads)
                .where(threads.c.resource_id == resource_id)
                .order_by(threads.c.updated_at.desc(), threads.c.id)
            )
            return [ThreadRow.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()]

        return await self.db.read(fn)

    # -- messages -----------------------------------------------------------------------------------

    async def add_messages(self, new: Sequence[NewMessage]) -> list[int]:
        """Append messages in one statement and one commit; returns their ids in the given order."""
        return await self.save_turn(new)

    async def save_turn(
        self,
        new: Sequence[NewMessage],
        *,
        vectors: Sequence[NewVector] = (),
        vector_model: str | None = None,
        agent_context: NewAgentContext | None = None,
    ) -> list[int]:
        """Messages, their vectors and the agent's context record, committed together or not at all."""
        ids, _ = await self.save_answer(
            new, vectors=vectors, vector_model=vector_model, agent_context=agent_context
        )
        return ids

    async def save_answer(
        self,
        new: Sequence[NewMessage],
        *,
        vectors: Sequence[NewVector] = (),
        vector_model: str | None = None,
        agent_context: NewAgentContext | None = None,
    ) -> tuple[list[int], int | None]:
        """Like :meth:`save_turn`, also returning the id of the agent context record (what feedback rates).

        Safe to run again after a commit whose answer was lost (a dropped connection): the retry finds the rows this
        write made (by their exact contents and the ``created_at`` it chose once) and returns their ids, so each
        message is stored once."""
        if vectors and vector_model is None:
            raise ValueError("save_turn(vectors=...) needs vector_model, the embedder's name.")
        now = time.time()
        rows = _message_values(new, now)
        context = _context_values(agent_context, now) if agent_context is not None else None

        async def op(conn: AsyncConnection, retried: bool) -> tuple[list[int], int | None]:
            if retried:
                earlier = await _saved_answer(conn, rows, context)
                if earlier is not None:
                    return earlier
            ids = await self._insert_messages(conn, rows, now)
            if vectors:
                assert vector_model is not None
                await self._add_vectors(
                    conn, [(ids[v.index], new[v.index], v.vector) for v in vectors], vector_model
                )
            context_id = None
            if context is not None:
                context_id = await _insert_agent_context(conn, context)
            return ids, context_id

        return await self.db.write(knowing_retries(op))

    async def _insert_messages(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]], now: float) -> list[int]:
        if not rows:
            return []
        result = await conn.execute(
            insert(messages).returning(messages.c.id, sort_by_parameter_order=True), rows
        )
        ids = [int(r[0]) for r in result]
        touched = {row["thread_id"] for row in rows}
        await conn.execute(update(threads).where(threads.c.id.in_(touched)).values(updated_at=now))
        return ids

    async def last_messages(self, thread_id: str, n: int, *, after_id: int = 0) -> list[MessageRow]:
        """The last ``n`` conversation messages (not summaries) newer than ``after_id``, oldest first."""

        async def fn(conn: AsyncConnection) -> list[MessageRow]:
            query = (
                select(messages)
                .where(
                    messages.c.thread_id == thread_id, messages.c.kind == "message", messages.c.id > after_id
                )
                .order_by(messages.c.id.desc())
                .limit(n)
            )
            return _message_rows(reversed((await conn.execute(query)).mappings().all()))

        return await self.db.read(fn)

    async def messages_between(self, thread_id: str, after_id: int, before_id: int) -> list[MessageRow]:
        """Conversation messages with ``after_id < id < before_id``, oldest first (what a summary covers)."""

        async def fn(conn: AsyncConnection) -> list[MessageRow]:
            query = (
                select(messages)
                .where(
                    messages.c.thread_id == thread_id,
                    messages.c.kind == "message",
                    messages.c.id > after_id,
                    messages.c.id < before_id,
                )
                .order_by(messages.c.id)
            )
            return _message_rows((await conn.execute(query)).mappings())

        return await self.db.read(fn)

    async def content_length_after(self, thread_id: str, after_id: int) -> int:
        """Characters of conversation after ``after_id``: decides when to summarise without loading it."""

        async def fn(conn: AsyncConnection) -> int:
            query = select(func.coalesce(func.sum(func.length(messages.c.content)), 0)).where(
                messages.c.thread_id == thread_id, messages.c.kind == "message", messages.c.id > after_id
            )
            return int((await conn.execute(query)).scalar_one())

        return await self.db.read(fn)

    async def messages_range(
        self, thread_id: str, around_ids: Sequence[int], window: int
    ) -> list[MessageRow]:
        """Each of ``around_ids`` with up to ``window`` conversation messages either side, oldest first."""

        async def fn(conn: AsyncConnection) -> list[MessageRow]:
            return await self._messages_range(conn, thread_id, around_ids, window)

        return await self.db.read(fn)

    async def messages_around(self, ids: Sequence[int], window: int) -> list[tuple[str, list[MessageRow]]]:
        """:meth:`messages_range` for messages of any threads, in one read: per thread (in the order
        its first message appears in ``ids``), its messages among ``ids`` and their neighbours, oldest
        first. Ids of messages that no longer exist are skipped."""
        if not ids:
            return []

        async def fn(conn: AsyncConnection) -> list[tuple[str, list[MessageRow]]]:
            rows = (await conn.execute(_THREADS_OF_MESSAGES, {"ids": list(ids)})).mappings()
            thread_of = {int(r["id"]): r["thread_id"] for r in rows}
            by_thread: dict[str, list[int]] = {}
            for mid in ids:
                if mid in thread_of:
                    by_thread.setdefault(thread_of[mid], []).append(mid)
            return [
                (tid, await self._messages_range(conn, tid, around, window))
                for tid, around in by_thread.items()
            ]

        return await self.db.read(fn)

    async def _messages_range(
        self, conn: AsyncConnection, thread_id: str, around_ids: Sequence[int], window: int
    ) -> list[MessageRow]:
        found: dict[int, MessageRow] = {}
        for mid in sorted(set(around_ids)):
            for query, n in ((_MESSAGES_UP_TO, window + 1), (_MESSAGES_AFTER, window)):
                for row in _message_rows((await conn.execute(query, {"b_thread": thread_id, "b_id": mid, "b_n": n})).mappings()):
                    found[row.id] = row
        return [found[k] for k in sorted(found)]

    async def add_summary(
        self,
        thread_id: str,
        resource_id: str | None,
        content: str,
        through_id: int,
        *,
        author: str | None = None,
    ) -> int:
        """Store a ``kind='summary'`` message covering the thread's messages up to ``through_id``."""
        new = NewMessage(
            thread_id=thread_id,
            resource_id=resource_id,
            role="system",
            kind="summary",
            author=author,
            content=content,
            tool_call_id=str(through_id),
        )
        return (await self.add_messages([new]))[0]

    async def latest_summary(self, thread_id: str) -> Summary | None:
        async def fn(conn: AsyncConnection) -> Summary | None:
            query = (
                select(messages)
                .where(messages.c.thread_id == thread_id, messages.c.kind == "summary")
                .order_by(messages.c.id.desc())
                .limit(1)
            )
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                return None
            message = MessageRow.model_validate(dict(row))
            return Summary(message=message, through_id=int(message.tool_call_id or 0))

        return await self.db.read(fn)

    # -- recall -------------------------------------------------------------------------------------

    async def search_text(
        self,
        query: str,
        *,
        thread_id: str | None = None,
        resource_id: str | None = None,
        limit: int = 10,
    ) -> list[TextHit]:
        """Full-text search over conversation messages, best first; any user text is a valid query.

        A prompt is mostly common words, and an OR of common words matches (and ranks) most of the store.
        So only the rarest words are searched: of the first ``MAX_QUERY_TOKENS`` distinct words, the up to
        ``MAX_SEARCH_TERMS`` rarest that some message contains, leaving out common words (in more than
        ``COMMON_TERM_SHARE`` of the messages and more than ``COMMON_TERM_MIN_DOCS``) whenever a rarer
        word is there. A text of only common words searches its ``MAX_COMMON_SEARCH_TERMS`` rarest. What
        remains is ranked exactly as before (BM25 on SQLite, ``ts_rank`` on PostgreSQL). See
        :meth:`_fts5_terms` and :meth:`_pg_terms` for how each database counts words.
        """
        if thread_id is None and resource_id is None:
            raise ValueError("search_text needs thread_id or resource_id: memory is never searched globally.")
        words = _query_words(query)
        if not words:
            return []
        scope = (
            messages.c.thread_id == thread_id
            if thread_id is not None
            else messages.c.resource_id == resource_id
        )
        where = and_(scope, messages.c.kind == "message")

        async def fn(conn: AsyncConnection) -> list[TextHit]:
            if self.db.is_sqlite:
                terms = await self._fts5_terms(conn, words)
                if not terms:
                    return []
                search = _FTS5_IN_THREAD if thread_id is not None else _FTS5_IN_RESOURCE
                scope_id = thread_id if thread_id is not None else resource_id
                params = {"b_match": _fts5_match(terms), "b_scope": scope_id, "b_limit": limit}
                rows = (await conn.execute(search, params)).mappings()
                return [_text_hit(row, -1.0) for row in rows]  # bm25: lower is better
            terms = await self._pg_terms(conn, words)
            if not terms:
                return []
            vector = func.to_tsvector(literal_column("'english'"), messages.c.content)
            tsq = func.to_tsquery(literal_column("'english'"), " | ".join(terms))
            rank = func.ts_rank(vector, tsq)
            stmt = (
                select(messages, rank.label("rank"))
                .where(vector.op("@@")(tsq), where)
                .order_by(rank.desc(), messages.c.id.desc())
                .limit(limit)
            )
            return [_text_hit(row, 1.0) for row in (await conn.execute(stmt)).mappings()]

        return await self.db.read(fn)

    async def _fts5_terms(self, conn: AsyncConnection, words: list[str]) -> list[str]:
        """The words to search on SQLite, from per-word message counts that FTS5 makes itself.

        Why not the ``fts5vocab`` table: its terms are stemmed and diacritics-folded, so a query word
        would need a Python copy of FTS5's porter/unicode61 tokenizer to be looked up ("deployments" is
        stored as "deploy", "café" as "cafe"), and its ``doc`` column is computed by reading the term's
        whole posting list (2 ms for a word in 70 % of 100,000 messages). Counting ``MATCH '"word"'``
        rows with a LIMIT lets FTS5 tokenize the word and stops after ``cap`` rows: about 1 ms for 15
        words on 100,000 messages, whatever the words.
        """
        params: dict[str, Any] = {f"w{i}": f'"{w}"' for i, w in enumerate(words)}
        row = (
            await conn.execute(
                _fts5_counts_statement(len(words)),
                params | {"min_docs": COMMON_TERM_MIN_DOCS, "share": COMMON_TERM_SHARE},
            )
        ).one()
        cap, counts = int(row[0]), [int(c) for c in row[1:]]
        terms = rarest_terms(words, counts, cap - 1)
        if terms:
            return terms
        present = [w for w, count in zip(words, counts, strict=True) if count > 0]
        if not present:
            return []
        # Every word is common: count further (up to COMMON_TERM_RANK_SHARE) to keep the least common.
        params = {f"w{i}": f'"{w}"' for i, w in enumerate(present)}
        row = (
            await conn.execute(
                _fts5_counts_statement(len(present)),
                params | {"min_docs": COMMON_TERM_MIN_DOCS, "share": COMMON_TERM_RANK_SHARE},
            )
        ).one()
        return rarest_terms(present, [int(c) for c in row[1:]], math.inf, limit=MAX_COMMON_SEARCH_TERMS)

    async def _pg_terms(self, conn: AsyncConnection, words: list[str]) -> list[str]:
        """The words to search on PostgreSQL, rarest first, from one statement (``_PG_TERM_COUNTS``).

        PostgreSQL stems each word itself (``to_tsvector('english', word)``; a stop word gives no lexeme
        and is left out). A word whose lexemes are all among the index's ``most_common_elems`` (ANALYZE
        statistics: one catalog read) takes that share; any other word is rare, so counting its messages
        through the GIN index is cheap, and the count drops words no message contains. Before the first
        ANALYZE no word is listed, so all are counted (up to ``cap``) when there are more than
        ``MAX_SEARCH_TERMS`` to choose from.
        """
        rows = (
            await conn.execute(
                _PG_TERM_COUNTS,
                {
                    "words": words,
                    "min_docs": COMMON_TERM_MIN_DOCS,
                    "share": COMMON_TERM_SHARE,
                    "max_terms": MAX_SEARCH_TERMS,
                },
            )
        ).all()
        if not rows:
            return []
        cap = int(rows[0].cap)

        def messages_with(r: Any) -> float:
            if not r.lexemes:
                return 0.0  # stop words only
            if r.share is not None:
                return float(r.share) * float(r.total)
            return 1.0 if r.counted is None else float(r.counted)  # None: not counted, all are searched

        counts = [messages_with(r) for r in rows]
        return rarest_terms(words, counts, cap - 1) or rarest_terms(
            words, counts, math.inf, limit=MAX_COMMON_SEARCH_TERMS
        )

    async def forget_step_messages(self, thread_id: str, run_id: str, path: str) -> int:
        """Delete the messages (and their vectors) a run's step wrote to a thread: an attempt of it that did not
        finish, before the step runs again (its new attempt writes its own). How many were deleted."""

        async def fn(conn: AsyncConnection) -> list[int]:
            ids = [int(r[0]) for r in await conn.execute(select(messages.c.id).where(
                messages.c.thread_id == thread_id, messages.c.run_id == run_id, messages.c.path == path))]
            if ids:
                await conn.execute(message_vectors.delete().where(message_vectors.c.message_id.in_(ids)))
                await conn.execute(messages.delete().where(messages.c.id.in_(ids)))
            return ids

        deleted = await self.db.write(fn)
        if deleted:
            self.vector_generation += 1  # cached vectors of this process drop them at once
        return len(deleted)

    async def add_vectors(self, vectors: Sequence[tuple[MessageRow, bytes]], model: str) -> None:
        """Store embeddings of existing messages (replacing older ones for the same message)."""

        async def fn(conn: AsyncConnection) -> None:
            await self._add_vectors(conn, [(m.id, m, v) for m, v in vectors], model)

        await self.db.write(fn)
        self.vector_generation += 1

    async def _add_vectors(
        self,
        conn: AsyncConnection,
        vectors: Sequence[tuple[int, NewMessage | MessageRow, bytes]],
        model: str,
    ) -> None:
        if not vectors:
            return
        await conn.execute(
            message_vectors.delete().where(message_vectors.c.message_id.in_([mid for mid, _, _ in vectors]))
        )
        await conn.execute(
            insert(message_vectors),
            [
                {
                    "message_id": mid,
                    "thread_id": m.thread_id,
                    "resource_id": m.resource_id,
                    "model": model,
                    "vector": vec,
                }
                for mid, m, vec in vectors
            ],
        )

    async def vector_candidates(
        self,
        *,
        model: str,
        thread_id: str | None = None,
        resource_id: str | None = None,
        limit: int | None = DEFAULT_VECTOR_CANDIDATES,
    ) -> list[StoredVector]:
        """The newest ``limit`` (None: all) vectors of a thread or resource made by ``model``, newest first.

        Recall uses :meth:`vector_rows`, the same rows without a model per row.
        """
        query = self._vector_query(
            (message_vectors,), model=model, thread_id=thread_id, resource_id=resource_id, limit=limit
        )

        async def fn(conn: AsyncConnection) -> list[StoredVector]:
            return [StoredVector.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()]

        return await self.db.read(fn)

    async def vector_rows(
        self,
        *,
        model: str,
        thread_id: str | None = None,
        resource_id: str | None = None,
        limit: int | None = DEFAULT_VECTOR_CANDIDATES,
        after_id: int | None = None,
    ) -> list[tuple[int, bytes]]:
        """``(message_id, vector)`` of the newest ``limit`` (None: all) vectors of the scope, newest first.

        Plain tuples because recall reads thousands of them: validating a model per row cost more than
        the similarity itself (numpy's, in ``workflows.memory``). ``after_id``: only messages newer than it.
        """
        query = self._vector_query(
            (message_vectors.c.message_id, message_vectors.c.vector),
            model=model,
            thread_id=thread_id,
            resource_id=resource_id,
            limit=limit,
        )
        if after_id is not None:
            query = query.where(message_vectors.c.message_id > after_id)

        async def fn(conn: AsyncConnection) -> list[tuple[int, bytes]]:
            return [(int(mid), bytes(vector)) for mid, vector in await conn.execute(query)]

        return await self.db.read(fn)

    def _vector_query(
        self,
        columns: Sequence[Any],
        *,
        model: str,
        thread_id: str | None,
        resource_id: str | None,
        limit: int | None,
    ) -> Select[Any]:
        if thread_id is None and resource_id is None:
            raise ValueError("vector_candidates needs thread_id or resource_id.")
        if thread_id is not None:
            # message_vectors has no thread index: walk the thread's messages (ix_messages_thread) newest
            # first and look each vector up by its key, rather than scanning every vector.
            query = (
                select(*columns)
                .select_from(message_vectors.join(messages, messages.c.id == message_vectors.c.message_id))
                .where(
                    messages.c.thread_id == thread_id,
                    message_vectors.c.thread_id == thread_id,
                    message_vectors.c.model == model,
                )
                .order_by(messages.c.id.desc())
            )
        else:
            query = (
                select(*columns)
                .where(message_vectors.c.resource_id == resource_id, message_vectors.c.model == model)
                .order_by(message_vectors.c.message_id.desc())
            )
        return query if limit is None else query.limit(limit)

    async def get_messages(self, ids: Sequence[int]) -> list[MessageRow]:
        async def fn(conn: AsyncConnection) -> list[MessageRow]:
            query = select(messages).where(messages.c.id.in_(list(ids))).order_by(messages.c.id)
            return _message_rows((await conn.execute(query)).mappings())

        return await self.db.read(fn)

    # -- working memory -----------------------------------------------------------------------------

    async def get_working_memory(self, scope: str, key: str) -> WorkingMemoryRow | None:
        async def fn(conn: AsyncConnection) -> WorkingMemoryRow | None:
            query = select(working_memory).where(working_memory.c.scope == scope, working_memory.c.key == key)
            row = (await conn.execute(query)).mappings().first()
            return None if row is None else WorkingMemoryRow.model_validate(dict(row))

        return await self.db.read(fn)

    async def set_working_memory(self, scope: str, key: str, content: str) -> None:
        """Replace the working memory of ``(scope, key)`` (an upsert: last writer wins)."""

        async def fn(conn: AsyncConnection) -> None:
            values = {"scope": scope, "key": key, "content": storable(content), "updated_at": time.time()}
            dialect_insert = sqlite_insert if self.db.is_sqlite else pg_insert
            stmt = dialect_insert(working_memory).values(**values)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["scope", "key"],
                    set_={"content": stmt.excluded.content, "updated_at": stmt.excluded.updated_at},
                )
            )

        await self.db.write(fn)

    async def replace_working_memory(self, scope: str, key: str, content: str, *, expected: str | None) -> str | None:
        """Replace the working memory of ``(scope, key)`` only if it still is ``expected`` (None: none written yet), as
        a compare-and-set; returns None if it was replaced, else the text it has now (another writer's)."""
        now = time.time()
        content = storable(content)
        expected = storable(expected) if expected is not None else None

        async def op(conn: AsyncConnection, retried: bool) -> str | None:
            if expected is None:
                done = (await conn.execute(insert_ignore(self.db, working_memory).values(
                    scope=scope, key=key, content=content, updated_at=now))).rowcount
            else:
                done = (await conn.execute(
                    update(working_memory)
                    .where(working_memory.c.scope == scope, working_memory.c.key == key,
                           working_memory.c.content == expected)
                    .values(content=content, updated_at=now)
                )).rowcount
            if done == 1:
                return None
            current = (await conn.execute(select(working_memory.c.content, working_memory.c.updated_at).where(
                working_memory.c.scope == scope, working_memory.c.key == key))).first()
            if current is None:
                return ""
            if retried and current[0] == content and current[1] == now:
                return None  # this very write, committed by an attempt whose answer was lost (a dropped connection)
            return str(current[0])

        return await self.db.write(knowing_retries(op))

    # -- agent contexts -----------------------------------------------------------------------------

    async def record_agent_context(self, record: NewAgentContext) -> int:
        """The record's id; recorded once even if its commit's answer was lost and the write runs again."""
        values = _context_values(record, time.time())

        async def op(conn: AsyncConnection, retried: bool) -> int:
            if retried:
                earlier = await _recorded_context(conn, values)
                if earlier is not None:
                    return earlier
            return await _insert_agent_context(conn, values)

        return await self.db.write(knowing_retries(op))

    async def get_agent_context(self, context_id: int) -> AgentContextRow | None:
        async def fn(conn: AsyncConnection) -> AgentContextRow | None:
            query = select(agent_contexts).where(agent_contexts.c.id == context_id)
            row = (await conn.execute(query)).mappings().first()
            return AgentContextRow.model_validate(dict(row)) if row else None

        return await self.db.read(fn)

    async def latest_agent_context(self, run_id: str, path: str) -> AgentContextRow | None:
        """The newest agent call recorded at exactly ``path`` of the run (the attempt whose answer counts)."""

        async def fn(conn: AsyncConnection) -> AgentContextRow | None:
            query = (
                select(agent_contexts)
                .where(agent_contexts.c.run_id == run_id, agent_contexts.c.path == path)
                .order_by(agent_contexts.c.id.desc())
                .limit(1)
            )
            row = (await conn.execute(query)).mappings().first()
            return AgentContextRow.model_validate(dict(row)) if row else None

        return await self.db.read(fn)

    async def record_feedback(self, context_id: int, entry: dict[str, Any]) -> AgentContextRow | None:
        """Add a person's rating to the agent call it rates (its record's ``answer["feedback"]`` list).

        ``entry`` carries at least ``user``; a person's new rating replaces their earlier one (they changed
        their mind), others' stay. Read and write happen in one transaction (the row locked on PostgreSQL), so
        two clicks at once both land. Returns the updated record, or None when there is no such call.
        """

        async def fn(conn: AsyncConnection) -> AgentContextRow | None:
            query = select(agent_contexts).where(agent_contexts.c.id == context_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                return None
            answer = dict(row["answer"] or {})
            feedback = [f for f in answer.get("feedback") or [] if f.get("user") != entry.get("user")]
            answer["feedback"] = [*feedback, entry]
            await conn.execute(
                update(agent_contexts).where(agent_contexts.c.id == context_id).values(answer=answer)
            )
            return AgentContextRow.model_validate(dict(row) | {"answer": answer})

        return await self.db.write(fn)

    async def agent_contexts(self, run_id: str, *, path: str | None = None) -> list[AgentContextRow]:
        """What each agent call of a run was given and answered, in call order."""

        async def fn(conn: AsyncConnection) -> list[AgentContextRow]:
            query = select(agent_contexts).where(agent_contexts.c.run_id == run_id)
            if path is not None:
                query = query.where(
                    or_(
                        agent_contexts.c.path == path,
                        agent_contexts.c.path.startswith(f"{path}/", autoescape=True),
                    )
                )
            query = query.order_by(agent_contexts.c.id)
            return [AgentContextRow.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()]

        return await self.db.read(fn)


def storable(text: str) -> str:
    """``text`` as both databases keep it: NUL, which PostgreSQL's TEXT cannot hold (the whole write would fail),
    becomes U+FFFD; SQLite keeps the same, so a thread reads alike on either."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _message_values(new: Sequence[NewMessage], now: float) -> list[dict[str, Any]]:
    """The rows of new messages, ``created_at`` chosen once (``now`` unless given): what a retry looks for."""
    return [m.model_dump() | {"content": storable(m.content), "created_at": m.created_at if m.created_at is not None else now}
            for m in new]


def _context_values(record: NewAgentContext, now: float) -> dict[str, Any]:
    return record.model_dump() | {"created_at": now}


async def _insert_agent_context(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(insert(agent_contexts).values(**values).returning(agent_contexts.c.id))
    return int(result.scalar_one())


async def _recorded_context(conn: AsyncConnection, values: dict[str, Any]) -> int | None:
    """The id of the agent context record ``values`` describe (same call, same ``created_at``), if it is stored."""
    found = (await conn.execute(select(agent_contexts.c.id).where(
        agent_contexts.c.run_id == values["run_id"], agent_contexts.c.path == values["path"],
        agent_contexts.c.agent == values["agent"], agent_contexts.c.thread_id == values["thread_id"],
        agent_contexts.c.created_at == values["created_at"],
    ).order_by(agent_contexts.c.id).limit(1))).scalar_one_or_none()
    return None if found is None else int(found)


async def _saved_answer(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], context: dict[str, Any] | None
) -> tuple[list[int], int | None] | None:
    """The ids an earlier attempt of the same :meth:`MemoryStore.save_answer` committed (a retry after a commit whose
    answer was lost), found by what it wrote; None if it committed nothing (its rows are one transaction)."""
    if not rows and context is None:
        return None
    ids: list[int] = []
    for row in rows:
        query = select(messages.c.id).where(
            messages.c.thread_id == row["thread_id"], messages.c.role == row["role"], messages.c.kind == row["kind"],
            messages.c.created_at == row["created_at"], messages.c.content == row["content"],
        )
        if ids:  # (two alike messages in one turn are two rows)
            query = query.where(messages.c.id.not_in(ids))
        found = (await conn.execute(query.order_by(messages.c.id).limit(1))).scalar_one_or_none()
        if found is None:
            return None
        ids.append(int(found))
    context_id = None
    if context is not None:
        context_id = await _recorded_context(conn, context)
        if context_id is None:
            return None
    return ids, context_id


def _text_hit(row: Any, sign: float) -> TextHit:
    data = dict(row)
    return TextHit(score=sign * float(data.pop("rank")), message=MessageRow.model_validate(data))


def _message_rows(rows: Iterable[RowMapping]) -> list[MessageRow]:
    return [MessageRow.model_validate(dict(row)) for row in rows]
