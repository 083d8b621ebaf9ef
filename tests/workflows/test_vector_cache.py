"""Recall keeps each scope's newest vectors in memory and reads only what was written since."""

from __future__ import annotations

import numpy as np

from storage import Database
from workflows.memory import Memory, Recall

WORDS = ("deploy", "postgres", "budget", "weather", "lunch", "invoice")


class WordEmbedder:
    """One dimension per known word: a message is similar to a query that shares its words."""

    name = "words"

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [[float(w in t.lower()) for w in WORDS] for t in texts]


async def matched(memory: Memory, query: str) -> list[str]:
    found = await memory.thread("T1", "U1").recall(query)
    return [r.message.content for r in found if r.matched]


async def test_a_message_written_after_the_first_recall_is_found_by_similarity(memory_db: Database) -> None:
    memory = Memory(memory_db, recall=Recall(top_k=1, window=0), embedder=WordEmbedder(), summarize_after_tokens=None)
    thread = memory.thread("T1", "U1")
    await thread.add("user", "what about lunch")
    assert await matched(memory, "lunch?") == ["what about lunch"]

    [before] = memory.vectors._scopes.values()
    new_id = await thread.add("user", "the invoice is due")
    # A query full-text search cannot match ("xinvoicex" is no word of it) but the vector can.
    assert await matched(memory, "xinvoicex") == ["the invoice is due"]
    [after] = memory.vectors._scopes.values()
    assert after.ids[0] == new_id and after.ids[1:] == before.ids
    assert after.loaded_at == before.loaded_at  # extended with the new row, not read again whole


async def test_the_cache_keeps_only_the_newest_candidates(memory_db: Database) -> None:
    memory = Memory(memory_db, recall=Recall(top_k=1, window=0, vector_candidates=2), embedder=WordEmbedder(),
                    summarize_after_tokens=None)
    thread = memory.thread("T1", "U1")
    first = await thread.add("user", "deploy the postgres thing")
    await matched(memory, "deploy")
    second = await thread.add("user", "budget for lunch")
    third = await thread.add("user", "weather today")
    await matched(memory, "weather")
    [scope] = memory.vectors._scopes.values()
    assert scope.ids == [third, second]  # newest first, the oldest dropped past vector_candidates
    assert scope.matrix.shape == (2, len(WORDS))
    assert first not in scope.ids


async def test_new_vectors_for_old_messages_reload_the_scope(memory_db: Database) -> None:
    embedder = WordEmbedder()
    memory = Memory(memory_db, recall=Recall(top_k=1, window=0), embedder=embedder, summarize_after_tokens=None)
    thread = memory.thread("T1", "U1")
    old = await thread.add("user", "notes")
    await thread.add("user", "unrelated")
    assert await matched(memory, "postgres") == []  # no message is about postgres yet
    # Re-embed the old message as if it were about postgres (a backfill with another embedding).
    [row] = await memory.store.get_messages([old])
    vector = np.asarray([float(w == "postgres") for w in WORDS], dtype=np.float32).tobytes()
    await memory.store.add_vectors([(row, vector)], embedder.name)
    assert await matched(memory, "postgres") == ["notes"]
