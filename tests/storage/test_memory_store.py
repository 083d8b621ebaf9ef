"""MemoryStore on SQLite and PostgreSQL (``db_url`` from tests/conftest.py; PostgreSQL when
``THREADFLOW_TEST_POSTGRES_URL`` is set, skipped with that reason otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Database
from storage.memory_store import (
    COMMON_TERM_MIN_DOCS,
    MAX_SEARCH_TERMS,
    MemoryStore,
    NewAgentContext,
    NewMessage,
    NewVector,
    fts5_query,
    rarest_terms,
    tsquery_text,
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[MemoryStore]:
    db = Database(db_url)
    await db.open()
    yield MemoryStore(db)
    await db.close()


def msg(
    thread: str, content: str, role: str = "user", author: str | None = None, resource: str = "R1"
) -> NewMessage:
    return NewMessage(thread_id=thread, resource_id=resource, role=role, author=author, content=content)  # type: ignore[arg-type]


async def test_threads_are_created_once_and_listed_by_resource(store: MemoryStore) -> None:
    first = await store.ensure_thread("T1", "R1", title="Deploys", metadata={"channel": "C1"})
    again = await store.ensure_thread("T1", "R1", title="ignored")
    await store.ensure_thread("T2", "R1")
    await store.ensure_thread("T3", "R2")
    assert again.title == "Deploys" and again.metadata == {"channel": "C1"}
    assert again.created_at == first.created_at
    assert {t.id for t in await store.list_threads("R1")} == {"T1", "T2"}
    assert await store.get_thread("missing") is None


async def test_add_messages_returns_ids_in_order_and_last_messages_is_chronological(
    store: MemoryStore,
) -> None:
    await store.ensure_thread("T1", "R1")
    ids = await store.add_messages([msg("T1", f"message {i}") for i in range(6)])
    assert ids == sorted(ids) and len(set(ids)) == 6
    last = await store.last_messages("T1", 3)
    assert [m.content for m in last] == ["message 3", "message 4", "message 5"]
    assert [m.id for m in last] == ids[3:]
    assert await store.add_messages([]) == []


async def test_messages_range_returns_neighbours_of_each_hit(store: MemoryStore) -> None:
    ids = await store.add_messages([msg("T1", f"m{i}") for i in range(10)])
    got = await store.messages_range("T1", [ids[2], ids[7]], window=1)
    assert [m.content for m in got] == ["m1", "m2", "m3", "m6", "m7", "m8"]
    edge = await store.messages_range("T1", [ids[0]], window=2)
    assert [m.content for m in edge] == ["m0", "m1", "m2"]
    other = await store.add_messages([msg("T2", f"o{i}") for i in range(3)])
    around = await store.messages_around([other[1], ids[7], 10**9, ids[2]], window=1)  # 10**9: no such id
    assert [(t, [m.content for m in rows]) for t, rows in around] == [
        ("T2", ["o0", "o1", "o2"]),
        ("T1", ["m1", "m2", "m3", "m6", "m7", "m8"]),
    ]
    assert await store.messages_around([], window=1) == []


async def test_search_text_ranks_matches_and_respects_scope(store: MemoryStore) -> None:
    await store.add_messages(
        [
            msg("T1", "The staging database is on db-staging-01, port 5433."),
            msg("T1", "Lunch is at noon."),
            msg(
                "T1", "Deploy the database migration to staging tonight; the staging database needs a backup."
            ),
            msg("T2", "Production database is db-prod-01.", resource="R1"),
            msg("T9", "staging database of another customer", resource="R2"),
        ]
    )
    in_thread = await store.search_text("staging database?", thread_id="T1")
    assert [h.message.content for h in in_thread][0].startswith("Deploy the database migration")
    assert all(h.message.thread_id == "T1" for h in in_thread)
    assert "Lunch is at noon." not in [h.message.content for h in in_thread]
    assert in_thread[0].score >= in_thread[-1].score
    by_resource = await store.search_text("database", resource_id="R1")
    assert {h.message.thread_id for h in by_resource} == {"T1", "T2"}
    assert await store.search_text("???", thread_id="T1") == []


async def test_search_text_excludes_summaries(store: MemoryStore) -> None:
    ids = await store.add_messages([msg("T1", "kubernetes cluster upgrade planned")])
    await store.add_summary("T1", "R1", "kubernetes summary", through_id=ids[0])
    hits = await store.search_text("kubernetes", thread_id="T1")
    assert [h.message.kind for h in hits] == ["message"]


@pytest.mark.parametrize(
    "text",
    [
        '"unbalanced',
        "a AND OR NOT",
        "NEAR(x y)",
        "col:value",
        "*",
        "(((",
        "-minus ^caret",
        "über café",
        "x'; DROP--",
    ],
)
async def test_search_text_never_raises_on_punctuation(store: MemoryStore, text: str) -> None:
    await store.add_messages([msg("T1", "über café value minus caret x")])
    await store.search_text(text, thread_id="T1")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_query_builders_only_emit_quoted_words(text: str) -> None:
    for part in filter(None, fts5_query(text).split(" OR ")):
        assert part.startswith('"') and part.endswith('"') and '"' not in part[1:-1]
    assert all(w.replace("_", "").isalnum() for w in filter(None, tsquery_text(text).split(" | ")))


#: Words of every filler message: each is in more than COMMON_TERM_MIN_DOCS messages, so "common".
COMMON = "please can you check the deploy status for our team today thanks".split()
#: Words no message contains: as many as the search keeps, so keeping them would crowd out the rare word.
ABSENT = ["zorblat", "quexil", "vintrop", "malkoor", "drezzik", "plonkus"]


async def _old_message_under_common_ones(store: MemoryStore) -> int:
    """One old message with a rare word, then many newer ones made only of common words."""
    assert len(ABSENT) >= MAX_SEARCH_TERMS
    (old,) = await store.add_messages([msg("T1", "The flumoxicating gateway crashed twice last night.")])
    fillers = [msg("T1" if i % 2 else "T2", " ".join(COMMON[i % 3 :] + COMMON[: i % 3])) for i in range(300)]
    assert 300 > COMMON_TERM_MIN_DOCS
    await store.add_messages(fillers)
    return old


async def _analyze(store: MemoryStore) -> None:
    """PostgreSQL picks words from ANALYZE statistics once they exist (SQLite counts every time)."""
    if not store.db.is_sqlite:
        await store.db.write(lambda conn: conn.exec_driver_sql("ANALYZE messages"))


async def test_a_rare_word_in_a_long_prompt_of_common_words_finds_the_old_message(store: MemoryStore) -> None:
    old = await _old_message_under_common_ones(store)
    # common words first, then words no message has, then the rare word in another inflection:
    # "flumoxicated" and the stored "flumoxicating" share one stem ("flumox"), which only the index's own
    # tokenizer knows; neither a raw vocabulary lookup nor a prefix of the query word finds it.
    prompt = " ".join(COMMON) + ", " + " ".join(ABSENT) + " - what happened to the flumoxicated gateway?"
    for analyzed in (False, True):
        if analyzed:
            await _analyze(store)
        for scope in ({"thread_id": "T1"}, {"resource_id": "R1"}):
            hits = await store.search_text(prompt, limit=10, **scope)
            # the common words were left out: only the message with the rare word matches
            assert [h.message.id for h in hits] == [old], (analyzed, scope)


async def test_a_prompt_of_only_common_words_still_searches_its_rarest(store: MemoryStore) -> None:
    await _old_message_under_common_ones(store)
    for analyzed in (False, True):
        if analyzed:
            await _analyze(store)
        hits = await store.search_text("can you check the deploy status?", thread_id="T1", limit=5)
        assert len(hits) == 5 and all(h.message.thread_id == "T1" for h in hits)
        assert await store.search_text(" ".join(ABSENT), thread_id="T1") == []


def test_rarest_terms_keeps_the_rarest_words_that_occur() -> None:
    words = ["the", "zorblat", "gateway", "flumox", "deploy", "a", "b"]
    counts = [900, 0, 40, 1, 40, 5, 5]
    assert rarest_terms(words, counts, 100) == ["flumox", "a", "b", "gateway", "deploy"]
    assert rarest_terms(words, counts, 100, limit=2) == ["flumox", "a"]  # ties keep the text's order
    assert rarest_terms(words, counts, 0) == []  # nothing rare: the caller falls back
    assert rarest_terms(["x"], [0], float("inf")) == []  # a word no message has is never searched


async def test_summaries_record_what_they_cover(store: MemoryStore) -> None:
    ids = await store.add_messages([msg("T1", "x" * 10) for _ in range(4)])
    assert await store.latest_summary("T1") is None
    await store.add_summary("T1", "R1", "first two", through_id=ids[1])
    summary = await store.latest_summary("T1")
    assert summary is not None and summary.through_id == ids[1] and summary.message.content == "first two"
    assert [m.id for m in await store.last_messages("T1", 10, after_id=ids[1])] == ids[2:]
    assert [m.id for m in await store.messages_between("T1", ids[0], ids[3])] == ids[1:3]
    assert await store.content_length_after("T1", ids[1]) == 20


async def test_vectors_are_stored_with_their_messages(store: MemoryStore) -> None:
    new = [msg("T1", "alpha"), msg("T1", "beta"), msg("T2", "gamma")]
    ids = await store.save_turn(
        new,
        vectors=[NewVector(index=0, vector=b"\x01" * 8), NewVector(index=2, vector=b"\x02" * 8)],
        vector_model="m",
    )
    by_thread = await store.vector_candidates(model="m", thread_id="T1")
    assert [(v.message_id, v.vector) for v in by_thread] == [(ids[0], b"\x01" * 8)]
    by_resource = await store.vector_candidates(model="m", resource_id="R1")
    assert {v.message_id for v in by_resource} == {ids[0], ids[2]}
    assert await store.vector_candidates(model="other", resource_id="R1") == []
    (beta,) = await store.get_messages([ids[1]])
    await store.add_vectors([(beta, b"\x03" * 8)], "m")
    await store.add_vectors([(beta, b"\x04" * 8)], "m")  # replaces, does not duplicate
    assert [
        v.vector for v in await store.vector_candidates(model="m", thread_id="T1") if v.message_id == beta.id
    ] == [b"\x04" * 8]


async def test_vector_rows_are_the_newest_of_the_scope_up_to_the_cap(store: MemoryStore) -> None:
    new = [msg("T1", f"t1 {i}") for i in range(5)] + [msg("T2", "t2"), msg("T3", "other user", resource="R2")]
    ids = await store.save_turn(
        new, vectors=[NewVector(index=i, vector=bytes([i]) * 8) for i in range(len(new))], vector_model="m"
    )
    assert await store.vector_rows(model="m", thread_id="T1", limit=2) == [
        (ids[4], b"\x04" * 8),
        (ids[3], b"\x03" * 8),
    ]
    assert [mid for mid, _ in await store.vector_rows(model="m", thread_id="T1", limit=None)] == ids[4::-1]
    assert [mid for mid, _ in await store.vector_rows(model="m", resource_id="R1", limit=3)] == [
        ids[5],
        ids[4],
        ids[3],
    ]
    assert await store.vector_rows(model="other", resource_id="R1") == []
    assert [v.message_id for v in await store.vector_candidates(model="m", resource_id="R1", limit=2)] == [
        ids[5],
        ids[4],
    ]


async def test_working_memory_upserts(store: MemoryStore) -> None:
    assert await store.get_working_memory("resource", "U1") is None
    await store.set_working_memory("resource", "U1", "name: Ada")
    await store.set_working_memory("resource", "U1", "name: Ada Lovelace")
    await store.set_working_memory("thread", "U1", "other scope")
    row = await store.get_working_memory("resource", "U1")
    assert row is not None and row.content == "name: Ada Lovelace"


async def test_text_holding_nul_is_kept_with_a_replacement_character(store: MemoryStore) -> None:
    # PostgreSQL's TEXT cannot hold NUL (the write would fail with a driver error); both databases keep U+FFFD.
    await store.ensure_thread("t1", "R1")
    await store.update_thread("t1", title="PK\x00\x03 archive")
    await store.add_messages([msg("t1", "PK\x00\x03")])
    await store.set_working_memory("thread", "t1", "- magic: PK\x00")
    assert await store.replace_working_memory("thread", "t1", "- zip\x00", expected="- magic: PK\x00") is None

    assert [m.content for m in await store.last_messages("t1", 5)] == ["PK\ufffd\x03"]
    assert (await store.get_thread("t1")).title == "PK\ufffd\x03 archive"  # type: ignore[union-attr]
    assert (await store.get_working_memory("thread", "t1")).content == "- zip\ufffd"  # type: ignore[union-attr]


async def test_agent_contexts_are_recorded_in_call_order(store: MemoryStore) -> None:
    for path, agent in [("review/draft", "writer"), ("review/critique#1", "critic"), ("other", "writer")]:
        await store.record_agent_context(
            NewAgentContext(
                run_id="run1",
                path=path,
                agent=agent,
                context={"messages": [{"role": "user", "content": path}]},
                answer={"text": "ok"},
                usage={"total_tokens": 3},
            )
        )
    await store.record_agent_context(NewAgentContext(run_id="run2", agent="x", context={}))
    records = await store.agent_contexts("run1")
    assert [r.agent for r in records] == ["writer", "critic", "writer"]
    assert records[0].context["messages"][0]["content"] == "review/draft"
    assert records[1].answer == {"text": "ok"} and records[1].usage == {"total_tokens": 3}
    assert [r.path for r in await store.agent_contexts("run1", path="review/draft")] == ["review/draft"]
