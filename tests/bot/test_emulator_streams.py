"""The emulator's streamed messages and assistant methods hold the bot to Slack's documented rules.

Called through slack_sdk over HTTP, as the bot calls them: what Slack would refuse, the emulator refuses with
Slack's error code, and each method counts against its rate-limit tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.emulator import SlackEmulator
from bot.emulator.streams import STREAM_LIFETIME
from tests.bot.conftest import ALICE, CHANNEL, TOKEN

RECIPIENT = {"recipient_team_id": "T0TEAM", "recipient_user_id": ALICE}


@pytest.fixture
async def client(emu: SlackEmulator) -> AsyncIterator[AsyncWebClient]:
    yield AsyncWebClient(token=TOKEN, base_url=emu.api_url, retry_handlers=[])


async def refused(call: Any) -> str:
    with pytest.raises(SlackApiError) as info:
        await call
    return str(info.value.response["error"])


async def thread(emu: SlackEmulator) -> str:
    return emu.state.add_message(CHANNEL, text="a question", user=ALICE).ts


async def test_a_stream_is_started_before_it_is_appended_to_and_takes_nothing_after_it_stops(
        emu: SlackEmulator, client: AsyncWebClient) -> None:
    root = await thread(emu)
    md = [{"type": "markdown_text", "text": "hello"}]
    assert await refused(client.chat_appendStream(channel=CHANNEL, ts="1.000001", chunks=md)) == "message_not_found"
    assert await refused(client.chat_appendStream(channel=CHANNEL, ts=root, chunks=md)) == \
        "message_not_in_streaming_state"  # a message that is not a stream
    started = await client.chat_startStream(channel=CHANNEL, thread_ts=root, chunks=md, **RECIPIENT)
    ts = started["ts"]
    await client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=[{"type": "markdown_text", "text": " world"}])
    await client.chat_stopStream(channel=CHANNEL, ts=ts, chunks=[{"type": "markdown_text", "text": "!"}])
    assert emu.message(ts).text == "hello world!"
    assert await refused(client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=md)) == \
        "message_not_in_streaming_state"
    assert await refused(client.chat_stopStream(channel=CHANNEL, ts=ts)) == "message_not_in_streaming_state"
    assert emu.streams.of(ts).calls == ["start", "append", "stop"]


async def test_chunks_over_slacks_limits_are_refused(emu: SlackEmulator, client: AsyncWebClient) -> None:
    root = await thread(emu)
    ts = (await client.chat_startStream(channel=CHANNEL, thread_ts=root, **RECIPIENT,
                                        chunks=[{"type": "markdown_text", "text": "x"}]))["ts"]

    def task(**fields: Any) -> list[dict[str, Any]]:
        return [{"type": "task_update", "id": "t1", "title": "search", "status": "in_progress", **fields}]

    cases = [
        (task(title="t" * 257), "invalid_chunks"),
        (task(details="d" * 257), "invalid_chunks"),
        (task(output="o" * 257), "invalid_chunks"),
        (task(status="done"), "invalid_chunks"),
        ([{"type": "task_update", "title": "no id", "status": "pending"}], "invalid_chunks"),
        ([{"type": "plan_update", "title": "p" * 257}], "invalid_chunks"),
        ([{"type": "markdown_text", "text": "m" * 12_001}], "msg_too_long"),
        ([{"type": "poem", "text": "roses"}], "invalid_chunks"),
    ]
    for chunks, error in cases:
        assert await refused(client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=chunks)) == error, chunks
    await client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=task(title="t" * 256, details="d" * 256))
    assert emu.streams.of(ts).tasks["t1"]["status"] == "in_progress"


async def test_a_channel_stream_needs_its_recipient_a_dm_does_not(emu: SlackEmulator, client: AsyncWebClient) -> None:
    root = await thread(emu)
    md = [{"type": "markdown_text", "text": "hi"}]
    assert await refused(client.chat_startStream(channel=CHANNEL, thread_ts=root, chunks=md)) == \
        "missing_recipient_team_id"
    assert await refused(client.chat_startStream(channel=CHANNEL, thread_ts=root, chunks=md,
                                                 recipient_team_id="T0TEAM")) == "missing_recipient_user_id"
    assert await refused(client.chat_startStream(channel=CHANNEL, thread_ts=root, chunks=md,
                                                 task_display_mode="grid", **RECIPIENT)) == "invalid_arguments"
    dm = emu.state.im_channel(ALICE).id
    dm_root = emu.state.add_message(dm, text="hi bot", user=ALICE).ts
    assert (await client.chat_startStream(channel=dm, thread_ts=dm_root, chunks=md))["ok"]


async def test_only_the_app_that_started_a_stream_appends_and_slack_ends_streams_after_five_minutes() -> None:
    async with SlackEmulator(bot_token="xoxb-one-app") as emu:  # two apps' tokens: not the fixture's one-bot Slack
        client = AsyncWebClient(token="xoxb-one-app", base_url=emu.api_url, retry_handlers=[])
        root = await thread(emu)
        ts = (await client.chat_startStream(channel=CHANNEL, thread_ts=root, **RECIPIENT,
                                            chunks=[{"type": "markdown_text", "text": "x"}]))["ts"]
        emu.state.tokens["xoxb-another-app"] = "U0BOB"
        other = AsyncWebClient(token="xoxb-another-app", base_url=emu.api_url, retry_handlers=[])
        md = [{"type": "markdown_text", "text": "y"}]
        assert await refused(other.chat_appendStream(channel=CHANNEL, ts=ts, chunks=md)) == "message_not_owned_by_app"
        real_clock = emu.state.clock
        emu.state.clock = lambda: real_clock() + STREAM_LIFETIME + 1
        assert await refused(client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=md)) == \
            "message_not_in_streaming_state"


async def test_task_cards_render_one_by_one_or_as_a_plan(emu: SlackEmulator, client: AsyncWebClient) -> None:
    root = await thread(emu)
    for mode in ("timeline", "plan"):
        first = [{"type": "plan_update", "title": "Looking it up"}] if mode == "plan" else []
        ts = (await client.chat_startStream(channel=CHANNEL, thread_ts=root, task_display_mode=mode, **RECIPIENT,
                                            chunks=[*first, {"type": "markdown_text", "text": "Let me look. "},
                                                    {"type": "task_update", "id": "a", "title": "search",
                                                     "status": "in_progress", "details": "q=oslo"}]))["ts"]
        await client.chat_stopStream(channel=CHANNEL, ts=ts, chunks=[
            {"type": "task_update", "id": "a", "title": "search", "status": "complete", "output": "3 hits"},
            {"type": "markdown_text", "text": "Found it."}], blocks=[{"type": "divider"}],
            metadata={"event_type": "x", "event_payload": {"k": 1}})
        blocks = emu.message(ts).blocks or []
        kinds = [b["type"] for b in blocks]
        if mode == "timeline":
            assert kinds == ["markdown", "task_card", "markdown", "divider"]
            card = blocks[1]
        else:
            assert kinds == ["markdown", "plan", "markdown", "divider"]
            assert blocks[1]["title"] == "Looking it up"
            card = blocks[1]["tasks"][0]
        assert card["status"] == "complete" and card["title"] == "search"
        assert emu.streams.of(ts).task_history["a"] == ["in_progress", "complete"]
        assert emu.message(ts).metadata == {"event_type": "x", "event_payload": {"k": 1}}


async def test_stream_methods_count_against_their_rate_limit_tiers(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.enforce_rate_limits()
    root = await thread(emu)
    starts = []
    for _ in range(12):  # Tier 2: a burst of a few, then 429
        try:
            starts.append((await client.chat_startStream(channel=CHANNEL, thread_ts=root, **RECIPIENT,
                                                         chunks=[{"type": "markdown_text", "text": "x"}]))["ts"])
        except SlackApiError as exc:
            assert exc.response.status_code == 429 and exc.response.headers["Retry-After"]
    assert 0 < len(starts) < 12 and emu.rate_limited == 12 - len(starts)
    appended = 0
    for _ in range(12):  # Tier 4 takes these in its burst
        await client.chat_appendStream(channel=CHANNEL, ts=starts[0], chunks=[{"type": "markdown_text", "text": "y"}])
        appended += 1
    assert appended == 12 and emu.rate_limited == 12 - len(starts)
