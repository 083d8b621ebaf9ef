"""The emulator's Sign in with Slack, membership and permalink methods, driven by slack_sdk over HTTP."""

from __future__ import annotations

import re

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.emulator import SlackEmulator

TOKEN = "xoxb-openid-test"


async def authorize(emu: SlackEmulator, user: str, redirect: str = "http://app.example/cb") -> str:
    """Pick ``user`` on the consent page; return the code the redirect carries."""
    params = {"response_type": "code", "scope": "openid profile", "client_id": "cid", "state": "s1",
              "nonce": "n1", "redirect_uri": redirect}
    async with aiohttp.ClientSession() as http:
        async with http.get(emu.url + "openid/connect/authorize", params=params) as resp:
            assert resp.status == 200 and "Continue as alice" in await resp.text()
        async with http.post(emu.url + "openid/connect/authorize", data={**params, "user": user},
                             allow_redirects=False) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
    assert location.startswith(redirect + "?") and "state=s1" in location
    found = re.search(r"code=([^&]+)", location)
    assert found
    return found.group(1)


async def test_a_code_becomes_a_person_once() -> None:
    async with SlackEmulator(bot_token=TOKEN) as emu:
        emu.openid.register_client("cid", "csecret")
        code = await authorize(emu, "U0BOB")
        client = AsyncWebClient(base_url=emu.api_url)
        form = {"client_id": "cid", "client_secret": "csecret", "code": code, "redirect_uri": "http://app.example/cb"}
        token = await client.api_call("openid.connect.token", data=form)
        assert token["token_type"] == "Bearer" and token["id_token"].count(".") == 2
        info = await client.openid_connect_userInfo(token=token["access_token"])
        assert info["sub"] == "U0BOB" and info["https://slack.com/team_id"] == "T0TEAM"
        with pytest.raises(SlackApiError, match="invalid_code"):
            await client.api_call("openid.connect.token", data=form)  # single use
        code = await authorize(emu, "U0ALICE")
        with pytest.raises(SlackApiError, match="bad_client_secret"):
            await client.api_call("openid.connect.token", data={**form, "code": code, "client_secret": "wrong"})
        with pytest.raises(SlackApiError, match="invalid_auth"):
            await AsyncWebClient(token=TOKEN, base_url=emu.api_url).openid_connect_userInfo()  # a bot is nobody


async def test_membership_and_permalinks() -> None:
    async with SlackEmulator(bot_token=TOKEN) as emu:
        emu.add_channel("secret", "C0SECRET")
        emu.openid.set_members("C0SECRET", ["U0ALICE"])
        bot = AsyncWebClient(token=TOKEN, base_url=emu.api_url)
        alice = await bot.users_conversations(user="U0ALICE", types="public_channel,private_channel")
        bob = await bot.users_conversations(user="U0BOB", types="public_channel,private_channel")
        assert {c["id"] for c in alice["channels"]} == {"C0GENERAL", "C0SECRET"}
        assert {c["id"] for c in bob["channels"]} == {"C0GENERAL"}
        members = await bot.conversations_members(channel="C0SECRET")
        assert set(members["members"]) == {"U0ALICE", "U0BOT"}
        posted = await bot.chat_postMessage(channel="C0GENERAL", text="root")
        link = (await bot.chat_getPermalink(channel="C0GENERAL", message_ts=posted["ts"]))["permalink"]
        assert link.startswith(emu.url + "archives/C0GENERAL/p")
        async with aiohttp.ClientSession() as http, http.get(link, allow_redirects=False) as resp:
            assert resp.headers["Location"] == f"/#thread=C0GENERAL:{posted['ts']}"
        with pytest.raises(SlackApiError, match="message_not_found"):
            await bot.chat_getPermalink(channel="C0GENERAL", message_ts="1.000001")
