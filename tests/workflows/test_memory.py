"""Thread memory: history, recall (full text and vectors), working memory, context budgets, summaries."""

from __future__ import annotations

import asyncio
from typing import Any

from storage import Database
from storage.memory_store import DEFAULT_VECTOR_CANDIDATES
from tests.fakes import FakeOpenAI, Reply
from workflows.agent import Agent
from workflows.memory import Memory, Recall, WorkingMemory, extractive_summary
from workflows.models import OfflineModel, OpenAIChatModel, OpenAIEmbedder

FILLER = [
    "Lunch menu today is soup.",
    "The weekly sync moved to Thursday.",
    "Reminder: submit expense reports.",
    "The office printer is fixed.",
    "Coffee machine is empty again.",
    "New hires start on Monday.",
]


async def fill(thread, *, first: str, count: int = 6) -> list[int]:  # type: ignore[no-untyped-def]
    ids = [await thread.add("user", first, author="alice")]
    for text in FILLER[:count]:
        ids.append(await thread.add("user", text, author="bob"))
    return ids


async def test_history_returns_the_last_messages_in_order(memory: Memory) -> None:
    thread = memory.thread("T1", "U1")
    for i in range(6):
        await thread.add("user" if i % 2 == 0 else "assistant", f"message {i}")
    assert [m.content for m in await thread.history()] == ["message 2", "message 3", "message 4", "message 5"]
    assert [m.content for m in await thread.history(2)] == ["message 4", "message 5"]
    assert (await memory.store.get_thread("T1")) is not None


async def test_recall_finds_an_old_message_beyond_the_window_with_neighbours(memory: Memory) -> None:
    thread = memory.thread("T1", "U1")
    ids = await fill(thread, first="Our kubernetes cluster runs version 1.29 on three nodes.")
    context = await thread.build_context("which kubernetes version do we run?")
    assert [m.id for m in context.messages] == ids[-4:]
    matched = [r for r in context.recalled if r.matched]
    assert [r.message.id for r in matched] == [ids[0]]
    assert matched[0].score is not None
    neighbours = [r.message.id for r in context.recalled if not r.matched]
    assert neighbours == [ids[1]]  # window=1: the message after it (nothing before it)


async def test_recall_skips_what_is_already_in_the_window(memory: Memory) -> None:
    thread = memory.thread("T1", "U1")
    await fill(thread, first="nothing relevant here")
    await thread.add("user", "the kubernetes upgrade is tomorrow")
    context = await thread.build_context("kubernetes?")
    assert context.recalled == []


async def test_recall_scope_resource_searches_the_users_other_threads(memory_db: Database) -> None:
    by_resource = Memory(memory_db, last_messages=2, summarize_after_tokens=None)
    await by_resource.thread("T-old", "U1").add("user", "My favourite editor is helix.")
    await by_resource.thread("T-other-user", "U2").add("user", "I use the helix editor too.")
    recalled = await by_resource.thread("T-new", "U1").recall("which editor do I like? helix?")
    assert [(r.message.thread_id, r.matched) for r in recalled] == [("T-old", True)]
    by_thread = Memory(memory_db, recall=Recall(scope="thread"), summarize_after_tokens=None)
    assert await by_thread.thread("T-new", "U1").recall("helix") == []


async def test_recall_with_embeddings_finds_what_words_do_not(
    memory_db: Database, fake_openai: FakeOpenAI, openai_embedder: OpenAIEmbedder
) -> None:
    fake_openai.synonyms.update({"automobile": "car", "vehicle": "car", "colour": "color"})
    memory = Memory(memory_db, last_messages=3, embedder=openai_embedder, summarize_after_tokens=None)
    thread = memory.thread("T1", "U1")
    ids = await fill(thread, first="My car has a red color.")
    query = "automobile colour?"
    assert await memory.store.search_text(query, thread_id="T1") == []  # no shared word
    recalled = await thread.recall(query, exclude_ids=ids[-3:])
    assert [r.message.id for r in recalled if r.matched] == [ids[0]]
    # every stored message got a vector, embedded through the real HTTP API
    assert len(await memory.store.vector_candidates(model="embed-test", thread_id="T1")) == len(ids)


async def test_recall_finds_a_rare_word_in_a_long_prompt_of_common_words(memory: Memory) -> None:
    thread = memory.thread("T1", "U1")
    common = "please can you check the deploy status for our team today thanks"
    (old,) = await thread.save([thread.new_message("user", "The flumoxicating gateway crashed twice.")])
    # enough newer messages that their words are common (COMMON_TERM_MIN_DOCS), in one commit
    await thread.save([thread.new_message("user", f"{common} {i % 7}") for i in range(150)])
    prompt = f"{common}: did the flumoxicated gateway crash again? {common.upper()}"
    context = await thread.build_context(prompt)
    assert [r.message.id for r in context.recalled if r.matched] == [old]


async def test_vector_recall_compares_with_the_newest_vector_candidates(
    memory_db: Database, fake_openai: FakeOpenAI, openai_embedder: OpenAIEmbedder
) -> None:
    fake_openai.synonyms.update({"automobile": "car", "colour": "color"})
    memory = Memory(memory_db, last_messages=3, embedder=openai_embedder, summarize_after_tokens=None)
    ids = await fill(memory.thread("T1", "U1"), first="My car has a red color.")
    query, recent = "automobile colour?", ids[-3:]
    found = await memory.thread("T1", "U1").recall(query, exclude_ids=recent)
    assert [r.message.id for r in found if r.matched] == [ids[0]]
    assert Recall().vector_candidates == DEFAULT_VECTOR_CANDIDATES
    capped = Memory(memory_db, recall=Recall(vector_candidates=len(ids) - 1), embedder=openai_embedder)
    assert await capped.thread("T1", "U1").recall(query, exclude_ids=recent) == []  # oldest vector not read
    unbounded = Memory(memory_db, recall=Recall(vector_candidates=None), embedder=openai_embedder)
    found = await unbounded.thread("T1", "U1").recall(query, exclude_ids=recent)
    assert [r.message.id for r in found if r.matched] == [ids[0]]


async def test_working_memory_scopes(memory_db: Database) -> None:
    per_user = Memory(memory_db, working_memory=WorkingMemory(scope="resource"))
    first, second = per_user.thread("T1", "U1"), per_user.thread("T2", "U1")
    assert await first.working_memory() is None
    context = await first.build_context("hi")
    assert context.working_memory == per_user.working_memory.template  # type: ignore[union-attr]
    await first.set_working_memory("- Name: Ada")
    assert await second.working_memory() == "- Name: Ada"  # same user, other thread
    per_thread = Memory(memory_db, working_memory=WorkingMemory(scope="thread"))
    assert await per_thread.thread("T2", "U1").working_memory() is None
    assert [t.name for t in per_user.tools()] == ["update_working_memory"]
    assert Memory(memory_db).tools() == []


async def test_context_is_trimmed_to_the_token_budget(memory_db: Database) -> None:
    memory = Memory(memory_db, last_messages=10, token_budget=120, summarize_after_tokens=None)
    thread = memory.thread("T1", "U1")
    for i in range(10):
        await thread.add("user", f"message {i} " + "word " * 30)  # ~40 tokens each
    context = await thread.build_context("short prompt")
    assert [m.content.split()[1] for m in context.messages] == ["8", "9"]  # newest kept
    assert context.trimmed == 8
    assert context.token_estimate <= 120


async def test_summarises_old_messages_once_past_the_threshold(memory_db: Database) -> None:
    memory = Memory(memory_db, last_messages=3, summarize_after_tokens=60)
    thread = memory.thread("T1", "U1")
    ids = [
        await thread.add("user", f"Fact {i}: the value is {i * 7}. More detail follows here.")
        for i in range(8)
    ]
    assert (await thread.maybe_summarize(OfflineModel())).total_tokens == 0
    summary = await memory.store.latest_summary("T1")
    assert summary is not None and summary.through_id == ids[4]
    assert "Fact 0: the value is 0." in summary.message.content
    assert "Fact 5" not in summary.message.content  # still in the recent window
    context = await thread.build_context("what is fact 1?")
    assert context.summary == summary.message.content
    assert [m.id for m in context.messages] == ids[5:]
    assert ids[1] in [r.message.id for r in context.recalled if r.matched]  # originals stay for recall
    # nothing new outside the window: no second summary
    await thread.maybe_summarize(OfflineModel())
    assert (await memory.store.latest_summary("T1")).message.id == summary.message.id  # type: ignore[union-attr]
    # a rolling summary keeps the earlier lines
    for i in range(8, 12):
        await thread.add("user", f"Fact {i}: the value is {i * 7}. More detail follows here.")
    await thread.maybe_summarize(OfflineModel())
    rolled = await memory.store.latest_summary("T1")
    assert rolled is not None and "Fact 0:" in rolled.message.content and "Fact 8:" in rolled.message.content


async def test_summaries_use_a_real_model_when_there_is_one(
    memory_db: Database, fake_openai: FakeOpenAI, openai_model: OpenAIChatModel
) -> None:
    memory = Memory(memory_db, last_messages=1, summarize_after_tokens=10)
    thread = memory.thread("T1", "U1")
    for text in ["We chose PostgreSQL 16.", "Backups run nightly at 02:00.", "Next: load testing."]:
        await thread.add("user", text, author="alice")
    fake_openai.reply_text("Chose PostgreSQL 16; nightly backups at 02:00.")
    usage = await thread.maybe_summarize(openai_model)
    assert usage.total_tokens == 15
    (sent,) = fake_openai.chat_requests
    assert "[alice] We chose PostgreSQL 16." in sent["messages"][1]["content"]
    summary = await memory.store.latest_summary("T1")
    assert summary is not None and summary.message.content.startswith("Chose PostgreSQL 16")


def test_extractive_summary_is_bounded_and_keeps_the_newest() -> None:
    from storage.memory_store import MessageRow

    rows = [
        MessageRow(
            id=i,
            thread_id="T",
            resource_id=None,
            role="user",
            kind="message",
            author="a",
            content=f"Sentence {i}. Second sentence.",
            created_at=0.0,
        )
        for i in range(100)
    ]
    text = extractive_summary(None, rows, max_chars=400)
    assert len(text) <= 400 and "Sentence 99." in text and "Second sentence" not in text
    assert extractive_summary(None, rows[:2]) == extractive_summary(None, rows[:2])


async def test_two_agents_updating_working_memory_at_once_both_keep_their_notes(
    memory_db: Database, fake_openai: FakeOpenAI, openai_model: OpenAIChatModel
) -> None:
    # Each agent rewrites the whole text from the copy it was shown. The second to write finds the text changed
    # since it read it: its update is refused with the text as it is now, and it merges its note into that.
    memory = Memory(memory_db, working_memory=WorkingMemory(scope="resource"), summarize_after_tokens=None)
    shown_to_both = asyncio.Event()
    asked: list[str] = []

    async def model(body: dict[str, Any]) -> Reply:
        messages = body["messages"]
        note = "- Prefers Go" if any("Go" in str(m.get("content")) for m in messages if m["role"] == "user") else \
            "- Budget is 100 dollars"
        if messages[-1]["role"] == "tool":
            told = str(messages[-1]["content"])
            if "It now reads:\n" not in told:
                return Reply.text("noted")
            current = told.split("It now reads:\n", 1)[1].split("\nMerge what you learned", 1)[0]
            return Reply.tool_calls(("update_working_memory", {"content": current.rstrip("\n") + "\n" + note + "\n"}))
        shown = next(m["content"] for m in messages if m["role"] == "system" and "working memory" in m["content"])
        current = shown.split(":\n", 1)[1]
        asked.append(note)
        if len(asked) == 2:
            shown_to_both.set()
        await asyncio.wait_for(shown_to_both.wait(), 5)  # both have read the same text before either writes
        return Reply.tool_calls(("update_working_memory", {"content": current.rstrip("\n") + "\n" + note + "\n"}))

    fake_openai.handler = model
    planner = Agent("planner", "Plan.", model=openai_model, memory=memory)
    coder = Agent("coder", "Code.", model=openai_model, memory=memory)
    await asyncio.gather(
        planner.generate("I prefer Go for services.", thread="slack:T1:C1:1.0", resource="slack:T1:C1"),
        coder.generate("Our budget is 100 dollars.", thread="slack:T1:C1:1.0", resource="slack:T1:C1"),
    )

    final = await memory.thread("slack:T1:C1:1.0", "slack:T1:C1").working_memory()
    assert final is not None and "- Prefers Go" in final and "- Budget is 100 dollars" in final, final


async def test_a_turn_whose_text_holds_a_nul_character_is_kept_on_either_database(
    db: Database, fake_openai: FakeOpenAI, openai_model: OpenAIChatModel
) -> None:
    # A prompt built from a file a step read (a NUL byte in it), and a model that quotes it back. PostgreSQL's TEXT
    # cannot hold NUL: the NUL becomes U+FFFD, on SQLite too, rather than the whole answer being lost.
    memory = Memory(db, summarize_after_tokens=None)
    fake_openai.reply_text("The file starts with 'PK\x00\x03', a zip archive.")
    agent = Agent("a", "inspect files", model=openai_model, memory=memory)

    result = await agent.generate("What is this file? It starts with PK\x00\x03\x04.", thread="t1")

    assert result.text == "The file starts with 'PK\x00\x03', a zip archive."
    assert [m.content for m in await memory.thread("t1").history()] == [
        "What is this file? It starts with PK\ufffd\x03\x04.", "The file starts with 'PK\ufffd\x03', a zip archive."]
