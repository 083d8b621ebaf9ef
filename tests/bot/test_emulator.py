"""The Slack emulator must look like Slack to the real slack_sdk / bolt over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.emulator import SlackEmulator

SECRET = "s3cret-signing"
TS_RE = re.compile(r"^\d{10}\.\d{6}$")
BUTTONS = [
    {"type": "section", "block_id": "intro", "text": {"type": "mrkdwn", "text": "Approve run?"}},
    {"type": "actions", "block_id": "decide", "elements": [
        {"type": "button", "action_id": "approve", "value": "run-1", "style": "primary",
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": "reject", "value": "run-1",
         "text": {"type": "plain_text", "text": "Reject"}},
    ]},
]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    @property
    def payload(self) -> dict[str, Any]:
        if self.headers["Content-Type"] == "application/json":
            return json.loads(self.body)
        return json.loads(self.form["payload"])


@dataclass
class Receiver:
    """A tiny stand-in bot that records every signed request and answers via ``reply``."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    reply: Callable[[Received], Awaitable[web.Response]] | None = None


@pytest.fixture
async def emulator() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(signing_secret=SECRET, bot_token="xoxb-test") as emu:
        yield emu


@pytest.fixture
async def client(emulator: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=emulator.api_url)


@pytest.fixture
async def receiver(emulator: SlackEmulator) -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        got = Received(dict(request.headers), await request.read())
        rec.requests.append(got)
        return await rec.reply(got) if rec.reply else web.Response(text="")

    app = web.Application()
    app.router.add_post("/slack/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/slack/events"
    emulator.bot_url = rec.url
    yield rec
    await runner.cleanup()


def verify(got: Received, secret: str = SECRET) -> bool:
    return SignatureVerifier(secret).is_valid_request(got.body, got.headers)


# -- Web API -------------------------------------------------------------------------------

async def test_auth_test_and_auth_errors(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    res = await client.auth_test()
    assert res["ok"] and res["user_id"] == "U0BOT" and res["bot_id"] == "B0BOT" and res["team_id"] == "T0TEAM"
    with pytest.raises(SlackApiError) as bad:
        await AsyncWebClient(token="xoxb-wrong", base_url=emulator.api_url).auth_test()
    assert bad.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as none:
        await AsyncWebClient(base_url=emulator.api_url).auth_test()
    assert none.value.response["error"] == "not_authed"
    assert [c.status for c in emulator.calls("auth.test")] == [200, 200, 200]


async def test_post_history_and_errors(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    first = await client.chat_postMessage(channel="C0GENERAL", text="hello")
    second = await client.chat_postMessage(channel="C0GENERAL", text="world", blocks=BUTTONS)
    assert first["channel"] == "C0GENERAL" and TS_RE.match(first["ts"])
    assert float(second["ts"]) > float(first["ts"])
    msg = second["message"]
    assert msg["type"] == "message" and msg["bot_id"] == "B0BOT" and msg["user"] == "U0BOT"
    assert msg["blocks"] == BUTTONS and msg["ts"] == second["ts"]
    history = await client.conversations_history(channel="C0GENERAL")
    assert [m["text"] for m in history["messages"]] == ["world", "hello"]  # newest first
    page = await client.conversations_history(channel="C0GENERAL", limit=1)
    assert page["has_more"] and page["response_metadata"]["next_cursor"]
    assert [m.text for m in emulator.messages("C0GENERAL")] == ["hello", "world"]
    call = emulator.calls("chat.postMessage")[1]
    assert call.content_type == "application/json" and call.params["blocks"] == BUTTONS
    assert call.token == "xoxb-test"
    for kwargs, error in [({"channel": "C0NOPE", "text": "x"}, "channel_not_found"),
                          ({"channel": "C0GENERAL", "text": "x", "thread_ts": "1.000001"}, "thread_not_found")]:
        with pytest.raises(SlackApiError) as err:
            await client.chat_postMessage(**kwargs)
        assert err.value.response.status_code == 200 and err.value.response["error"] == error
    with pytest.warns(UserWarning, match="text"), pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0GENERAL")
    assert err.value.response["error"] == "no_text"


async def test_messages_over_slacks_limits_are_refused_as_slack_does(emulator: SlackEmulator,
                                                                      client: AsyncWebClient) -> None:
    """``msg_too_long`` for a text over 40,000 characters; ``invalid_blocks`` with the reasons for blocks over
    their limits; nothing is posted. A message at the limits is taken."""
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3000}}
    posted = await client.chat_postMessage(channel="C0GENERAL", text="y" * 40_000, blocks=[section] * 50)
    assert posted["ok"]
    too_big: list[tuple[dict[str, Any], str]] = [
        ({"text": "y" * 40_001}, "msg_too_long"),
        ({"text": "x", "blocks": [section] * 51}, "invalid_blocks"),
        ({"text": "x", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]},
         "invalid_blocks"),
        ({"text": "x", "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]},
         "invalid_blocks"),
        ({"text": "x", "blocks": [{"type": "markdown", "text": "m" * 12_001}]}, "invalid_blocks"),
        ({"text": "x", "blocks": [{"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Go"}, "action_id": "go", "value": "v" * 2001},
        ]}]}, "invalid_blocks"),
    ]
    for kwargs, error in too_big:
        with pytest.raises(SlackApiError) as err:
            await client.chat_postMessage(channel="C0GENERAL", **kwargs)
        assert err.value.response["error"] == error
        if error == "invalid_blocks":
            assert err.value.response["response_metadata"]["messages"]
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C0GENERAL", ts=posted["ts"], text="y" * 40_001)
    assert err.value.response["error"] == "msg_too_long"
    with pytest.raises(SlackApiError) as err:
        await client.chat_postEphemeral(channel="C0GENERAL", user="U0ALICE", text="x", blocks=[section] * 51)
    assert err.value.response["error"] == "invalid_blocks"
    assert len(emulator.messages("C0GENERAL")) == 1 and emulator.ephemerals() == []
    assert emulator.messages("C0GENERAL")[0].text == "y" * 40_000


async def test_threads_and_replies(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    parent = await client.chat_postMessage(channel="C0GENERAL", text="run started")
    await client.chat_postMessage(channel="C0GENERAL", text="step 1", thread_ts=parent["ts"])
    posted = await emulator.post_as_user("looks good", user="U0BOB", thread_ts=parent["ts"])
    assert posted.deliveries == []  # no bot_url: stored only
    replies = await client.conversations_replies(channel="C0GENERAL", ts=parent["ts"])
    root, *rest = replies["messages"]
    assert root["reply_count"] == 2 and root["thread_ts"] == parent["ts"]
    assert set(root["reply_users"]) == {"U0BOT", "U0BOB"} and root["latest_reply"] == posted.ts
    assert [m["text"] for m in rest] == ["step 1", "looks good"]
    assert all(m["thread_ts"] == parent["ts"] and m["parent_user_id"] == "U0BOT" for m in rest)
    assert [m.text for m in emulator.thread("C0GENERAL", parent["ts"])] == ["run started", "step 1", "looks good"]
    assert [m.text for m in emulator.messages()] == ["run started"]  # replies stay in the thread
    with pytest.raises(SlackApiError) as err:
        await client.conversations_replies(channel="C0GENERAL", ts="1.000000")
    assert err.value.response["error"] == "thread_not_found"


async def test_update_keeps_blocks_and_is_recorded(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C0GENERAL", text="pending", blocks=BUTTONS)
    updated = await client.chat_update(channel="C0GENERAL", ts=posted["ts"], text="approved")
    assert updated["ts"] == posted["ts"] and updated["text"] == "approved"
    assert updated["message"]["blocks"] == BUTTONS and updated["message"]["edited"]["user"] == "U0BOT"
    await client.chat_update(channel="C0GENERAL", ts=posted["ts"], text="done", blocks=[])
    assert emulator.message(posted["ts"]).blocks == []  # type: ignore[union-attr]
    assert [c.params["text"] for c in emulator.calls("chat.update")] == ["approved", "done"]
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C0GENERAL", ts="1.000000", text="x")
    assert err.value.response["error"] == "message_not_found"
    human = await emulator.post_as_user("mine")
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C0GENERAL", ts=human.ts, text="x")
    assert err.value.response["error"] == "cant_update_message"


async def test_form_encoded_and_query_requests(emulator: SlackEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        form = {"token": "xoxb-test", "channel": "C0GENERAL", "text": "hi", "blocks": json.dumps(BUTTONS)}
        async with session.post(emulator.api_url + "chat.postMessage", data=form) as resp:
            body = await resp.json()
        assert body["ok"] and body["message"]["blocks"] == BUTTONS
        async with session.get(emulator.api_url + "users.info", params={"user": "U0ALICE"},
                               headers={"Authorization": "Bearer xoxb-test"}) as resp:
            user = (await resp.json())["user"]
        assert user["id"] == "U0ALICE" and user["name"] == "alice" and not user["is_bot"]
        async with session.post(emulator.api_url + "nope.nothing", data={"token": "xoxb-test"}) as resp:
            assert (await resp.json()) == {"ok": False, "error": "unknown_method"}
    assert emulator.calls("chat.postMessage")[0].content_type == "application/x-www-form-urlencoded"


async def test_ephemeral_and_users(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    res = await client.chat_postEphemeral(channel="C0GENERAL", user="U0ALICE", text="only you")
    assert TS_RE.match(res["message_ts"])
    assert [e.text for e in emulator.ephemerals("U0ALICE")] == ["only you"] and emulator.ephemerals("U0BOB") == []
    assert emulator.messages() == []
    bot = await client.users_info(user="U0BOT")
    assert bot["user"]["is_bot"] and bot["user"]["profile"]["bot_id"] == "B0BOT"
    with pytest.raises(SlackApiError) as err:
        await client.users_info(user="U0NOBODY")
    assert err.value.response["error"] == "user_not_found"
    dm = await client.chat_postMessage(channel="U0BOB", text="psst")
    assert dm["channel"].startswith("D") and emulator.messages(dm["channel"])[0].text == "psst"


# -- fault injection -----------------------------------------------------------------------

async def test_rate_limit_surfaces_through_slack_sdk(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    emulator.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0GENERAL", text="x")
    assert err.value.response.status_code == 429 and err.value.response["error"] == "ratelimited"
    assert err.value.response.headers["Retry-After"] == "7"
    assert emulator.messages() == []
    ok = await client.chat_postMessage(channel="C0GENERAL", text="second try")  # fault consumed
    assert ok["ok"]


async def test_rate_limit_retry_handler_recovers(emulator: SlackEmulator) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=emulator.api_url,
                            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])
    emulator.fail_next("chat.postMessage", status=429, retry_after=0)
    res = await client.chat_postMessage(channel="C0GENERAL", text="eventually")
    assert res["ok"]
    assert [c.status for c in emulator.calls("chat.postMessage")] == [429, 200]
    assert [m.text for m in emulator.messages()] == ["eventually"]


async def test_server_errors_and_injected_api_errors(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    emulator.fail_next("chat.update", status=500)
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C0GENERAL", ts="1.0", text="x")
    assert err.value.response.status_code == 500 and err.value.response["error"] == "internal_error"
    retrying = AsyncWebClient(token="xoxb-test", base_url=emulator.api_url,
                              retry_handlers=[AsyncServerErrorRetryHandler(max_retry_count=1)])
    emulator.fail_next("*", status=503)
    assert (await retrying.auth_test())["ok"]
    emulator.fail_next("users.info", status=200, error="account_inactive", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            await client.users_info(user="U0ALICE")
        assert err.value.response["error"] == "account_inactive"
    assert (await client.users_info(user="U0ALICE"))["ok"]


# -- deliveries to the bot -----------------------------------------------------------------

async def test_slash_command_is_signed_and_ack_is_shown(emulator: SlackEmulator, receiver: Receiver) -> None:
    async def ack(got: Received) -> web.Response:
        return web.json_response({"text": "Starting approval..."})

    receiver.reply = ack
    result = await emulator.slash_command("/flow", "run approval", user="U0ALICE", channel="C0GENERAL")
    assert result.status == 200 and result.json == {"text": "Starting approval..."}
    got = receiver.requests[0]
    assert verify(got) and got.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = got.form
    assert form["command"] == "/flow" and form["text"] == "run approval" and form["team_id"] == "T0TEAM"
    assert form["user_id"] == "U0ALICE" and form["user_name"] == "alice" and form["channel_name"] == "general"
    assert form["response_url"] == result.response_url and form["trigger_id"] == result.trigger_id
    assert [e.text for e in emulator.ephemerals("U0ALICE")] == ["Starting approval..."]
    assert emulator.response_url(result.response_url_id or "").uses == 0  # the ack is free


async def test_response_url_modes_and_limit(emulator: SlackEmulator, receiver: Receiver) -> None:
    result = await emulator.slash_command("/flow", "status")
    assert result.status == 200 and result.body == "" and emulator.ephemerals() == []
    url = result.response_url or ""
    async with aiohttp.ClientSession() as session:
        async def post(body: dict[str, Any]) -> tuple[int, str]:
            async with session.post(url, json=body) as resp:
                return resp.status, await resp.text()

        assert await post({"text": "private"}) == (200, "ok")
        assert await post({"text": "public", "response_type": "in_channel"}) == (200, "ok")
        for _ in range(3):
            assert (await post({"text": "again"}))[0] == 200
        status, text = await post({"text": "one too many"})
        assert status == 404 and json.loads(text)["error"] == "used_too_many_times"
    assert [m.text for m in emulator.messages()] == ["public"]
    assert emulator.messages()[0].bot_id == "B0BOT"
    assert [e.text for e in emulator.ephemerals("U0ALICE")] == ["private", "again", "again", "again"]
    assert len(emulator.response_url(result.response_url_id or "").posts) == 5


async def test_forged_and_stale_signatures_are_rejected(emulator: SlackEmulator, receiver: Receiver) -> None:
    await emulator.slash_command("/flow", "x", forge_signature=True)
    await emulator.slash_command("/flow", "x", stale_timestamp=True)
    await emulator.slash_command("/flow", "x")
    forged, stale, good = receiver.requests
    assert not verify(forged) and not verify(stale) and verify(good)
    assert verify(forged, "forged-" + SECRET)  # forged = validly signed with the wrong secret


async def test_post_as_user_delivers_message_and_mention(emulator: SlackEmulator, receiver: Receiver) -> None:
    post = await emulator.post_as_user("hey <@U0BOT> run approval", user="U0BOB")
    assert [d.status for d in post.deliveries] == [200, 200]
    assert all(verify(r) for r in receiver.requests)
    message, mention = (r.payload for r in receiver.requests)
    for env in (message, mention):
        assert env["type"] == "event_callback" and env["team_id"] == "T0TEAM" and env["api_app_id"] == "A0APP"
        assert env["event_id"].startswith("Ev") and isinstance(env["event_time"], int)
    assert message["event_id"] != mention["event_id"]
    assert message["event"]["type"] == "message" and message["event"]["user"] == "U0BOB"
    assert message["event"]["channel_type"] == "channel" and message["event"]["ts"] == post.ts
    assert mention["event"]["type"] == "app_mention" and mention["event"]["user"] == "U0BOB"
    assert mention["event"]["channel"] == "C0GENERAL" and "bot_id" not in mention["event"]
    reply = await emulator.post_as_user("plain reply", thread_ts=post.ts)
    assert len(reply.deliveries) == 1
    event = receiver.requests[-1].payload["event"]
    assert event["thread_ts"] == post.ts and event["parent_user_id"] == "U0BOB"
    assert [m.text for m in emulator.thread("C0GENERAL", post.ts)][-1] == "plain reply"


async def test_event_retry_keeps_event_id(emulator: SlackEmulator, receiver: Receiver) -> None:
    first = await emulator.deliver_event({"type": "app_home_opened", "user": "U0ALICE", "tab": "home"})
    again = await emulator.redeliver(first.event_id or "", retry_num=1, retry_reason="http_timeout")
    original, retried = receiver.requests
    assert original.body == retried.body and again.event_id == first.event_id
    assert "X-Slack-Retry-Num" not in original.headers
    assert retried.headers["X-Slack-Retry-Num"] == "1" and retried.headers["X-Slack-Retry-Reason"] == "http_timeout"
    assert verify(retried)


async def test_bot_messages_echo_with_bot_id_when_enabled(receiver: Receiver) -> None:
    async with SlackEmulator(signing_secret=SECRET, bot_url=receiver.url, echo_bot_messages=True) as emu:
        await AsyncWebClient(token="xoxb-test", base_url=emu.api_url).chat_postMessage(
            channel="C0GENERAL", text="from the bot <@U0BOT>")
        await emu.wait_for(lambda: emu.state.deliveries)
    (echo,) = receiver.requests  # no app_mention for the bot's own text
    assert echo.payload["event"]["bot_id"] == "B0BOT" and echo.payload["event"]["type"] == "message"


async def test_click_and_replace_or_delete_original(emulator: SlackEmulator, client: AsyncWebClient,
                                                    receiver: Receiver) -> None:
    posted = await client.chat_postMessage(channel="C0GENERAL", text="Approve?", blocks=BUTTONS)
    result = await emulator.click(posted["ts"], "approve", user="U0BOB")
    got = receiver.requests[0]
    assert verify(got) and result.status == 200
    payload = got.payload
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0BOB"
    assert payload["user"]["username"] == "bob" and payload["team"]["id"] == "T0TEAM"
    assert payload["container"] == {"type": "message", "message_ts": posted["ts"], "channel_id": "C0GENERAL",
                                    "is_ephemeral": False}
    assert payload["message"]["ts"] == posted["ts"] and payload["message"]["blocks"] == BUTTONS
    (action,) = payload["actions"]
    assert action["action_id"] == "approve" and action["block_id"] == "decide" and action["value"] == "run-1"
    assert action["type"] == "button" and payload["response_url"] == result.response_url
    async with aiohttp.ClientSession() as session:
        async with session.post(result.response_url or "", json={"replace_original": True,
                                                                 "text": "Approved by bob"}) as resp:
            assert resp.status == 200
        assert emulator.messages()[0].text == "Approved by bob" and emulator.messages()[0].blocks == []
        other = await client.chat_postMessage(channel="C0GENERAL", text="Again?", blocks=BUTTONS)
        second = await emulator.click(other["message"], "reject", value="custom")
        assert receiver.requests[1].payload["actions"][0]["value"] == "custom"
        async with session.post(second.response_url or "", json={"delete_original": True}) as resp:
            assert resp.status == 200
    assert [m.text for m in emulator.messages()] == ["Approved by bob"]
    with pytest.raises(LookupError):
        await emulator.click(posted["ts"], "missing")


async def test_views_open_and_submit(emulator: SlackEmulator, client: AsyncWebClient, receiver: Receiver) -> None:
    cmd = await emulator.slash_command("/flow", "new")
    modal = {"type": "modal", "callback_id": "new_flow", "private_metadata": "ctx-1",
             "title": {"type": "plain_text", "text": "New flow"}, "submit": {"type": "plain_text", "text": "Go"},
             "blocks": [{"type": "input", "block_id": "name_block", "label": {"type": "plain_text", "text": "Name"},
                         "element": {"type": "plain_text_input", "action_id": "name"}}]}
    opened = await client.views_open(trigger_id=cmd.trigger_id or "", view=modal)
    view_id = opened["view"]["id"]
    assert opened["view"]["callback_id"] == "new_flow" and [v.id for v in emulator.views("U0ALICE")] == [view_id]
    with pytest.raises(SlackApiError) as err:  # trigger ids are single use
        await client.views_open(trigger_id=cmd.trigger_id or "", view=modal)
    assert err.value.response["error"] == "invalid_trigger_id"

    async def reject(got: Received) -> web.Response:
        return web.json_response({"response_action": "errors", "errors": {"name_block": "too short"}})

    receiver.reply = reject
    bad = await emulator.submit_view(view_id, {"name": "x"})
    assert bad.extra["errors"] == {"name_block": "too short"} and emulator.views("U0ALICE")
    payload = receiver.requests[-1].payload
    assert payload["type"] == "view_submission" and payload["view"]["private_metadata"] == "ctx-1"
    assert payload["view"]["state"]["values"] == {"name_block": {"name": {"type": "plain_text_input", "value": "x"}}}
    receiver.reply = None
    await emulator.submit_view(view_id, {"name_block": {"name": "long enough"}})
    assert emulator.views("U0ALICE") == []
    assert verify(receiver.requests[-1])


async def test_wait_for_and_subscribe(emulator: SlackEmulator, client: AsyncWebClient) -> None:
    async with emulator.subscribe() as feed:
        await client.chat_postMessage(channel="C0GENERAL", text="live")
        kinds = [(await feed.get(timeout=2)).kind for _ in range(2)]
    assert kinds == ["message.posted", "api.call"]
    async for _ in feed:  # closed subscriptions end iteration
        raise AssertionError("closed feed yielded")
    found = await emulator.wait_for(lambda: emulator.calls("chat.postMessage"), timeout=1)
    assert found[0].params["text"] == "live"
    with pytest.raises(TimeoutError):
        await emulator.wait_for(lambda: emulator.calls("chat.update"), timeout=0.05)
    assert json.dumps(emulator.snapshot())  # JSON-ready for the sandbox page


# -- end to end with a real bolt app -------------------------------------------------------

async def test_bolt_app_round_trip(emulator: SlackEmulator) -> None:
    from slack_bolt.async_app import AsyncApp

    app = AsyncApp(client=AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url),
                   signing_secret=SECRET)

    @app.command("/flow")
    async def on_flow(ack: Any, respond: Any, say: Any, command: dict[str, Any]) -> None:
        await ack("on it")
        await say(text=f"Run {command['text']}?", blocks=BUTTONS)
        await respond(text="started", response_type="ephemeral")

    @app.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text="approved")

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text="hi!", thread_ts=event["ts"])

    @app.event("message")
    async def on_message() -> None:
        return None

    runner = web.AppRunner(app.web_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    emulator.bot_url = f"http://{host}:{port}/slack/events"
    try:
        result = await emulator.slash_command("/flow", "deploy")
        assert result.status == 200
        posted = await emulator.wait_for(lambda: emulator.messages())
        # the ack and respond() race each other, exactly as they do against real Slack
        await emulator.wait_for(lambda: sorted(e.text for e in emulator.ephemerals("U0ALICE")) == ["on it", "started"])
        assert posted[0].text == "Run deploy?"
        assert (await emulator.click(posted[0].ts, "approve")).status == 200
        await emulator.wait_for(lambda: emulator.message(posted[0].ts).text == "approved")  # type: ignore[union-attr]
        mention = await emulator.post_as_user("<@U0BOT> hello")
        await emulator.wait_for(lambda: len(emulator.thread("C0GENERAL", mention.ts)) == 2)
        assert emulator.thread("C0GENERAL", mention.ts)[1].text == "hi!"
        forged = await emulator.slash_command("/flow", "x", forge_signature=True)
        assert forged.status == 401
    finally:
        await runner.cleanup()
