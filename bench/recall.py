"""4. Recall over a thread store of 100,000 messages: FTS5 (BM25) and vectors (numpy).

Messages are synthetic: words drawn from a Zipf-distributed vocabulary (a few very common words, a long
tail of rare ones), 8-40 words each, spread over 200 threads of one resource (a Slack channel), inserted
in bulk (one transaction of multi-row INSERTs; the FTS5 index is filled by its trigger). Queries are
either 3 keywords from the middle of the vocabulary or a 15-word prompt written like a message (the
engine searches with the agent's prompt, so common words are in it).

Measured: ``MemoryStore.search_text`` (resource scope: all 100k messages; thread scope: one thread of
~500), ``ThreadMemory.recall`` (search + neighbouring messages, what an agent call does), the same with a
vector embedder (a deterministic 384-dimension feature-hashing embedder, so no model is downloaded), and a
brute-force numpy scan of all 100k vectors as a reference.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np

from .common import Clock, Report, Row, latency_fields, scratch_dir, sqlite_url

NAME = "recall"
BENCH = "4. recall"
RESOURCE = "T1:C0GENERAL"
THREADS = 200
DIM = 384


def sizes(quick: bool) -> dict[str, int]:
    return {"messages": 10_000, "queries": 15} if quick else {"messages": 100_000, "queries": 100}


class HashEmbedder:
    """Feature hashing of words into ``dim`` signed buckets, L2-normalised: similar text, similar vector."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.name = f"bench-hash-{dim}"

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().split():
            h = zlib.crc32(word.encode())
            v[h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.vector(t).tolist() for t in texts]


class Corpus:
    def __init__(self, seed: int = 7, vocabulary: int = 20_000) -> None:
        rng = np.random.default_rng(seed)
        syllables = ["ka", "lo", "mi", "ran", "te", "su", "vo", "ni", "pe", "dar", "qu", "zen", "ba", "ori", "lux",
                     "ta", "me", "sho", "ri", "ven"]
        real = ("deploy database invoice customer approval release budget report server outage migration "
                "staging production review ticket latency backup schedule contract design meeting").split()
        words: list[str] = list(real)
        seen = set(words)
        while len(words) < vocabulary:
            w = "".join(rng.choice(syllables, size=int(rng.integers(2, 5))))
            if w not in seen:
                seen.add(w)
                words.append(w)
        rng.shuffle(words)
        self.words = np.array(words)
        ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
        self.p = (1.0 / ranks ** 1.07) / np.sum(1.0 / ranks ** 1.07)
        self.rng = rng

    def messages(self, n: int) -> list[str]:
        lengths = self.rng.integers(8, 41, size=n)
        drawn = self.rng.choice(len(self.words), size=int(lengths.sum()), p=self.p)
        out, at = [], 0
        for length in lengths:
            out.append(" ".join(self.words[drawn[at:at + length]]))
            at += length
        return out

    def keywords(self) -> str:
        # middle of the vocabulary: words that occur in tens to hundreds of messages
        idx = self.rng.integers(200, 3000, size=3)
        return " ".join(self.words[idx])

    def prompt(self) -> str:
        return " ".join(self.rng.choice(self.words, size=15, p=self.p))


async def _fill(db: Any, corpus: Corpus, n: int, embedder: HashEmbedder) -> tuple[float, float]:
    from sqlalchemy import insert

    from storage.tables import message_vectors, messages, threads

    now = time.time()
    with Clock() as text_clock:
        async def fill_text(conn: Any) -> None:
            await conn.execute(insert(threads), [
                {"id": f"T1:C0GENERAL:{t}", "resource_id": RESOURCE, "title": None, "metadata": None,
                 "created_at": now, "updated_at": now} for t in range(THREADS)])
            chunk = 5000
            for start in range(0, n, chunk):
                texts = corpus.messages(min(n, start + chunk) - start)
                rows = [{"id": i + 1, "thread_id": f"T1:C0GENERAL:{i % THREADS}", "resource_id": RESOURCE,
                         "role": "user" if i % 3 else "assistant", "kind": "message", "author": f"U{i % 17}",
                         "content": texts[i - start], "created_at": now - (n - i)}
                        for i in range(start, min(n, start + chunk))]
                await conn.execute(insert(messages), rows)

        await db.run_in_transaction(fill_text)
    with Clock() as vector_clock:
        async def fill_vectors(conn: Any) -> None:
            from sqlalchemy import select

            result = await conn.execute(select(messages.c.id, messages.c.thread_id, messages.c.content))
            batch: list[dict[str, Any]] = []
            for mid, thread_id, content in result:
                batch.append({"message_id": mid, "thread_id": thread_id, "resource_id": RESOURCE,
                              "model": embedder.name, "vector": embedder.vector(content).tobytes()})
                if len(batch) >= 5000:
                    await conn.execute(insert(message_vectors), batch)
                    batch = []
            if batch:
                await conn.execute(insert(message_vectors), batch)

        await db.run_in_transaction(fill_vectors)
    return text_clock.seconds, vector_clock.seconds


async def _time_queries(queries: list[str], fn: Any) -> tuple[list[float], int]:
    latencies: list[float] = []
    hits = 0
    for q in queries:
        t0 = time.perf_counter()
        found = await fn(q)
        latencies.append(time.perf_counter() - t0)
        hits += len(found)
    return latencies, hits


async def run(report: Report, quick: bool) -> None:
    from storage import Database
    from workflows.memory import Memory, Recall

    size = sizes(quick)
    n = size["messages"]
    corpus = Corpus()
    embedder = HashEmbedder()
    with scratch_dir("recall") as directory:
        db = Database(sqlite_url(directory / "memory.db"))
        await db.open()
        try:
            text_s, vector_s = await _fill(db, corpus, n, embedder)
            report.add(Row(bench=BENCH, system="threadflow", setup="bulk insert messages (+FTS5 trigger)", n=n,
                           throughput=n / text_s, unit="msgs/s", total_s=text_s,
                           note=f"one transaction; {vector_s:.1f} s more for {DIM}-d vectors"))
            keyword_qs = [corpus.keywords() for _ in range(size["queries"])]
            prompt_qs = [corpus.prompt() for _ in range(size["queries"])]
            plain = Memory(db, recall=Recall(top_k=3, window=1, scope="resource"), summarize_after_tokens=None)
            vec = Memory(db, recall=Recall(top_k=3, window=1, scope="resource"), summarize_after_tokens=None,
                         embedder=embedder)
            thread = "T1:C0GENERAL:7"
            cases = [
                ("FTS5 search_text, resource scope", "keywords", keyword_qs,
                 lambda q: plain.store.search_text(q, resource_id=RESOURCE, limit=10)),
                ("FTS5 search_text, resource scope", "15-word prompt", prompt_qs,
                 lambda q: plain.store.search_text(q, resource_id=RESOURCE, limit=10)),
                ("FTS5 search_text, one thread", "15-word prompt", prompt_qs,
                 lambda q: plain.store.search_text(q, thread_id=thread, limit=10)),
                ("ThreadMemory.recall (FTS + neighbours)", "15-word prompt", prompt_qs,
                 lambda q: plain.thread(thread, RESOURCE).recall(q)),
                ("ThreadMemory.recall (FTS + vectors + neighbours)", "15-word prompt", prompt_qs,
                 lambda q: vec.thread(thread, RESOURCE).recall(q)),
            ]
            # warm the page cache and SQLAlchemy's statement cache
            for _, _, qs, fn in cases:
                for q in qs[:3]:
                    await fn(q)
            results: dict[str, Row] = {}
            for system, query_kind, qs, fn in cases:
                try:
                    latencies, hits = await _time_queries(qs, fn)
                    results[system + query_kind] = report.add(Row(
                        bench=BENCH, system=system, setup=f"{n:,} messages, {query_kind} queries", n=len(qs),
                        throughput=len(qs) / sum(latencies), unit="queries/s", **latency_fields(latencies),
                        note=f"{hits / len(qs):.1f} results/query"
                        + ("; vectors: newest 2,000 of the scope (Recall.vector_candidates default)" if "vectors" in system else "")))
                except Exception as exc:
                    report.failed(BENCH, system, exc)

            # reference: numpy over every vector, held in memory
            from sqlalchemy import select

            from storage.tables import message_vectors

            async def load(conn: Any) -> list[bytes]:
                return [r[0] for r in await conn.execute(select(message_vectors.c.vector))]

            blobs = await db.read(load)
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), DIM)
            latencies = []
            for q in prompt_qs:
                t0 = time.perf_counter()
                qv = embedder.vector(q)
                sims = matrix @ qv
                top = np.argpartition(-sims, 10)[:10]
                top[np.argsort(-sims[top])]
                latencies.append(time.perf_counter() - t0)
            report.add(Row(bench=BENCH, system="numpy brute force (in memory)", setup=f"{len(blobs):,} x {DIM}-d vectors",
                           n=len(prompt_qs), throughput=len(prompt_qs) / sum(latencies), unit="queries/s",
                           **latency_fields(latencies), note="reference: cosine over every vector, top 10"))
            worst = max((r.p95 for r in results.values() if r.p95 is not None), default=None)
            report.target(BENCH, f"recall p95 < 20 ms over {n:,} messages (slowest threadflow case)", worst, 20,
                          higher_is_better=False, unit="ms")
        finally:
            await db.close()
