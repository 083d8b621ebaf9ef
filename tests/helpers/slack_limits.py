"""The bot's message calls that Slack (the emulator, see ``bot.emulator.limits``) refused for their size."""

from __future__ import annotations

from bot.emulator import SlackEmulator

MESSAGE_METHODS = ("chat.postMessage", "chat.update", "chat.postEphemeral")
LIMIT_ERRORS = ("msg_too_long", "invalid_blocks")


def limit_refusals(emu: SlackEmulator) -> list[str]:
    """Each refused call: its method, Slack's error and reasons (empty: every message was within the limits)."""
    refused = []
    for call in emu.calls():
        error = (call.response or {}).get("error")
        if call.method in MESSAGE_METHODS and error in LIMIT_ERRORS:
            reasons = (call.response or {}).get("response_metadata", {}).get("messages", [])
            refused.append(f"{call.method}: {error} {reasons}")
    return refused
