"""``threadflow manifest`` and ``doctor`` for Slack's AI app surfaces: streamed answers and the assistant view.

Slack's API cannot say whether an app's Agents & AI Apps feature is on; the manifest asks for it and doctor
reports what the running bot saw (a workspace refusing to stream, assistant threads opened).
"""

from __future__ import annotations

from pathlib import Path

from bot.commands_server import BOT_EVENTS, BOT_SCOPES, manifest
from bot.settings import Settings
from storage import Database
from storage.slack_store import SlackStore
from tests.ops.test_doctor import doctor


def test_the_manifest_asks_for_the_assistant_view_its_scope_and_its_events() -> None:
    made = manifest(Settings(_env_file=None), "https://bot.example.com")  # type: ignore[call-arg]
    view = made["features"]["assistant_view"]
    assert view["assistant_description"] and view["suggested_prompts"] == []  # prompts are set per thread
    assert "assistant:write" in made["oauth_config"]["scopes"]["bot"] and "assistant:write" in BOT_SCOPES
    events = made["settings"]["event_subscriptions"]["bot_events"]
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= set(events)
    assert events == BOT_EVENTS
    assert made["settings"]["interactivity"]["is_enabled"]  # the feedback buttons are interactions


async def test_doctor_reports_a_workspace_that_refused_streaming_and_assistant_threads_seen(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'doctor.db'}"
    db = Database(url)
    await db.open()
    try:
        code, out, _ = await doctor(tmp_path, THREADFLOW_DATABASE_URL=url)
        assert "[ ok ] Streamed answers: no workspace refused streaming" in out
        assert "[ ok ] Assistant view: no assistant thread seen yet" in out and "Agents & AI Apps" in out
        store = SlackStore(db)
        await store.set_feature("T0TEAM", "streaming", "refused", "not_agent_app")
        await store.set_feature("T0TEAM", "assistant", "seen")
    finally:
        await db.close()
    code, out, _ = await doctor(tmp_path, THREADFLOW_DATABASE_URL=url)
    line = next(ln for ln in out.splitlines() if "Streamed answers" in ln)
    assert line.startswith("[warn]") and "T0TEAM" in line and "not_agent_app" in line and "posted whole" in line
    assert "[ ok ] Assistant view: assistant threads seen in 1 workspace(s)" in out
