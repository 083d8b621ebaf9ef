"""The Slack-facing reliability tests run against the real bot and the Slack emulator of tests/bot/conftest.py.

Its fixtures are re-exported here, so they (and its autouse environment cleaning and log capture) apply to
this directory only.
"""

from tests.bot.conftest import bot, clean_environment, emu, logs, start_bot

__all__ = ["bot", "clean_environment", "emu", "logs", "start_bot"]
